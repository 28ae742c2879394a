"""docs/gen_pages.py: every public module gets an API page, new ones automatically;
the home page is README without dead links; the feature page is the registry's.
(The full `mkdocs build --strict` runs in CI through `make docs`.)"""

import importlib.util
from pathlib import Path

import pytest

from minirec import registry
from minirec.cli import feature_table_markdown

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("gen_pages", ROOT / "docs" / "gen_pages.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_api_pages_cover_the_public_modules(gen):
    modules = gen.api_modules()
    for name in ("minirec", "minirec.registry", "minirec.gradcheck", "minirec.bptt",
                 "minirec.scan", "minirec.scan.linear", "minirec.scan.associative",
                 "minirec.cells.rnn"):
        assert name in modules
    assert not [m for m in modules if "._" in m or m.startswith("minirec.kernels")]
    assert modules.index("minirec.scan") < modules.index("minirec.scan.linear")
    for entry in registry.ENTRIES.values():
        assert entry.module_path in modules, entry.module_path


def test_a_new_module_gets_a_page_automatically(gen, tmp_path):
    pkg = tmp_path / "minirec"
    for rel in ("__init__.py", "_private.py", "registry.py", "scan/__init__.py",
                "scan/linear.py", "ops/__init__.py", "ops/brand_new.py",
                "kernels/__init__.py", "kernels/numba/__init__.py", "kernels/numba/k.py"):
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text('"""doc"""\n')
    assert gen.api_modules(pkg) == ["minirec", "minirec.registry", "minirec.scan",
                                    "minirec.scan.linear", "minirec.ops",
                                    "minirec.ops.brand_new"]
    assert gen.api_page("minirec.ops.brand_new", False) == (
        "# `minirec.ops.brand_new`\n\n::: minirec.ops.brand_new\n")
    assert "members: false" in gen.api_page("minirec.ops", True)


def test_home_page_keeps_tutorial_links_and_unlinks_other_files(gen):
    notebooks = gen.notebooks()
    readme = "[Makefile](Makefile) and [site](https://example.org) and [top](#top)"
    if notebooks:
        readme += f" and [nb](tutorials/{notebooks[0].name})"
    page = gen.index_page(readme)
    assert page.startswith("Makefile and [site](https://example.org) and [top](#top)")
    if notebooks:
        assert f"[nb](tutorials/{notebooks[0].name})" in page


def test_features_page_is_the_registry_table(gen):
    page = gen.features_page()
    assert feature_table_markdown() in page
    for entry in registry.ENTRIES.values():
        assert f"- `{entry.name}`: [`{entry.module_path}`](api/{entry.module_path}.md)" in page


def test_nav_lists_generated_pages(gen, tmp_path):
    (tmp_path / "api").mkdir()
    (tmp_path / "tutorials").mkdir()
    (tmp_path / "index.md").write_text("# home\n")
    (tmp_path / "tutorials" / "01_x.ipynb").write_text("{}")
    for m in ("minirec", "minirec.registry", "minirec.scan", "minirec.scan.linear"):
        (tmp_path / "api" / f"{m}.md").write_text("x\n")
    assert gen.nav(tmp_path) == [
        {"Home": "index.md"},
        {"Tutorials": ["tutorials/01_x.ipynb"]},
        {"API reference": [{"minirec": "api/minirec.md"},
                           {"minirec.registry": "api/minirec.registry.md"},
                           {"scan": [{"Overview": "api/minirec.scan.md"},
                                     {"linear": "api/minirec.scan.linear.md"}]}]},
    ]
