"""Write the generated pages of the documentation site into ``docs/``.

Run before ``mkdocs build`` (``make docs`` does both):

    python docs/gen_pages.py

It writes (all git-ignored through ``docs/.gitignore``; a file is rewritten
only when its content changes, so ``mkdocs serve`` does not loop):

* ``index.md`` — README.md, with links to files the site does not carry
  turned into plain text;
* ``features.md`` — the registry's feature table
  (:func:`minirec.cli.feature_table_markdown`, the same table as README.md's)
  and, for each entry, a link to its module's API page;
* ``tutorials/*.ipynb`` — copies of the committed, executed notebooks in
  ``tutorials/`` (mkdocs-jupyter renders them without executing);
* ``api/<module>.md`` — one page per public module of minirec, found by
  walking the package's files (private ``_modules`` and the ``kernels``
  subpackage are left out), so a new module gets a page without editing
  anything here.

``docs/hooks.py`` builds the site's navigation from :func:`nav`.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
PACKAGE = "minirec"
#: Subpackages with no API pages (kernels are tested against the reference
#: and documented in the module each one implements).
SKIP_PACKAGES = ("kernels",)
#: Order of the API sections after the top-level modules.
SECTION_ORDER = ("scan", "cells", "ops", "nn", "tasks")
GENERATED = ("index.md", "features.md", "api", "tutorials")


def _write(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` unless it already holds exactly that."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    path.write_text(text, encoding="utf-8")
    return True


def api_modules(package_dir: Path | None = None) -> list[str]:
    """Dotted names of the public modules and packages of minirec, sorted so that
    each package comes before its modules.

    Args:
        package_dir: the ``minirec`` source folder (default: the repository's).

    Returns:
        e.g. ``["minirec", "minirec.bptt", …, "minirec.scan", "minirec.scan.linear"]``.
    """
    package_dir = ROOT / PACKAGE if package_dir is None else Path(package_dir)
    names = []
    for path in package_dir.rglob("*.py"):
        rel = path.relative_to(package_dir.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(p.startswith("_") for p in parts) or "__pycache__" in path.parts:
            continue
        if len(parts) > 1 and parts[1] in SKIP_PACKAGES:
            continue
        names.append(".".join(parts))

    def key(name: str):
        parts = name.split(".")
        if len(parts) == 1:
            return (0, "", "")
        if len(parts) == 2 and not (package_dir / parts[1]).is_dir():
            return (1, "", parts[1])  # top-level modules: registry, gradcheck, …
        sec = parts[1]
        rank = SECTION_ORDER.index(sec) if sec in SECTION_ORDER else len(SECTION_ORDER)
        return (2 + rank, sec, ".".join(parts[2:]))

    return sorted(set(names), key=key)


def is_package(module: str, package_dir: Path | None = None) -> bool:
    """Whether ``module`` (dotted) is a package (a folder with ``__init__.py``)."""
    package_dir = ROOT / PACKAGE if package_dir is None else Path(package_dir)
    return (package_dir.parent.joinpath(*module.split(".")) / "__init__.py").exists()


def api_page(module: str, package: bool) -> str:
    """The Markdown of one API page: a title, an anchor and a mkdocstrings block.

    The anchor (``[](){#minirec.bptt}``, mkdocs-autorefs' Markdown anchor) makes
    the module itself a cross-reference target: the module's heading is not
    rendered (``show_root_heading: false``), so mkdocstrings registers none.
    """
    lines = [f"# `{module}`", "", f"[](){{#{module}}}", "", f"::: {module}"]
    if package:  # the package's docstring; its modules have their own pages
        lines += ["    options:", "      members: false"]
    return "\n".join(lines) + "\n"


def api_path(module: str) -> str:
    """Path of ``module``'s API page, relative to ``docs/``."""
    return f"api/{module}.md"


def notebooks() -> list[Path]:
    """The committed tutorial notebooks, in order."""
    return sorted((ROOT / "tutorials").glob("*.ipynb"))


def _site_has(target: str) -> bool:
    path = target.split("#")[0]
    return path.startswith("tutorials/") and path.endswith(".ipynb") and (ROOT / path).exists()


def table_code_pipes(markdown: str) -> str:
    """``\\|`` inside code spans of table rows written as ``|``.

    GitHub needs the escape even inside code (a bare ``|`` would split the
    cell); Python-Markdown does not split cells at a ``|`` inside code and
    would print the backslash.
    """
    def row(line: str) -> str:
        if not line.lstrip().startswith("|"):
            return line
        return re.sub(r"`[^`]*`", lambda m: m.group(0).replace("\\|", "|"), line)
    return "\n".join(row(line) for line in markdown.split("\n"))


#: The README's markers around the feature table.
FEATURES_START, FEATURES_END = "<!-- features:start -->", "<!-- features:end -->"


def feature_table_block(table: str) -> str:
    """The feature table for the site: :func:`table_code_pipes`, inside a
    ``<div class="minirec-features">`` that ``docs/stylesheets/extra.css`` styles
    (compact cells, a name or method never broken across lines)."""
    return f'<div class="minirec-features" markdown>\n\n{table_code_pipes(table)}\n\n</div>'


def index_page(readme: str) -> str:
    """README.md as the site's home page.

    Relative links to files the site does not carry become plain text (the
    link text), so the strict build does not warn about them; tables get
    :func:`table_code_pipes`, the feature table :func:`feature_table_block`.
    """
    def fix(m: re.Match) -> str:
        text, target = m.group(1), m.group(2)
        if re.match(r"^[a-z]+:", target) or target.startswith("#") or _site_has(target):
            return m.group(0)
        return text
    page = table_code_pipes(re.sub(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)", fix, readme))
    if page.count(FEATURES_START) == 1 and page.count(FEATURES_END) == 1:
        head, rest = page.split(FEATURES_START)
        table, tail = rest.split(FEATURES_END)
        page = head + feature_table_block(table.strip()) + tail
    return page


def features_page() -> str:
    """The feature table and where each entry's code is documented."""
    from minirec import registry
    from minirec.cli import feature_table_markdown

    lines = ["---", "hide:", "  - toc    # the table gets the width", "---", "",
             "# Features", "",
             "Every scan, cell and op in `minirec.registry`, generated from it "
             "(`minirec list --markdown` prints the same table). The first method, "
             "`recurrent`, is the definition with a hand-derived backward pass; every "
             "other method and backend is checked equal to it, forward and backward, to "
             "1e-10 relative RMS in float64 and 1e-4 in float32, and every backward "
             "passes a float64 finite-difference check (`minirec check NAME`).", "",
             "The backends column says which methods each backend runs: NumPy runs "
             "every method (`all`); a kernel backend runs the methods it has kernels "
             "for, and backends that run the same methods share a line.", "",
             feature_table_block(feature_table_markdown()), "",
             "## Where each entry is documented", ""]
    modules = set(api_modules())
    for e in registry.ENTRIES.values():
        if e.module_path in modules:
            ref = f"[`{e.module_path}`]({api_path(e.module_path)})"
        else:
            ref = f"`{e.module_path}`"
        lines.append(f"- `{e.name}`: {ref}")
    return "\n".join(lines) + "\n"


def nav(docs_dir: Path | None = None) -> list:
    """The site's navigation, from the pages present in ``docs_dir``.

    Returns:
        A list in the form of ``mkdocs.yml``'s ``nav``.
    """
    docs_dir = DOCS if docs_dir is None else Path(docs_dir)
    items: list = []
    if (docs_dir / "index.md").exists():
        items.append({"Home": "index.md"})
    if (docs_dir / "features.md").exists():
        items.append({"Features": "features.md"})
    tutorials = sorted((docs_dir / "tutorials").glob("*.ipynb"))
    if tutorials:
        items.append({"Tutorials": [f"tutorials/{p.name}" for p in tutorials]})
    api: list = []
    sections: dict[str, list] = {}
    present = {p.stem for p in (docs_dir / "api").glob("*.md")}
    for module in api_modules():
        if module not in present:
            continue
        parts = module.split(".")
        page = api_path(module)
        if len(parts) >= 2 and is_package(".".join(parts[:2])):
            title = "Overview" if len(parts) == 2 else ".".join(parts[2:])
            sections.setdefault(parts[1], []).append({title: page})
        else:
            api.append({module: page})
    api += [{name: pages} for name, pages in sections.items()]
    if api:
        items.append({"API reference": api})
    return items


def main() -> int:
    """Write every generated page; remove stale API pages and notebooks."""
    sys.path.insert(0, str(ROOT))
    written = 0
    written += _write(DOCS / "index.md", index_page((ROOT / "README.md").read_text("utf-8")))
    written += _write(DOCS / "features.md", features_page())

    modules = api_modules()
    for module in modules:
        written += _write(DOCS / api_path(module), api_page(module, is_package(module)))
    for old in (DOCS / "api").glob("*.md"):
        if old.stem not in modules:
            old.unlink()

    nbs = notebooks()
    out = DOCS / "tutorials"
    out.mkdir(exist_ok=True)
    for nb in nbs:
        dest = out / nb.name
        if not dest.exists() or dest.read_bytes() != nb.read_bytes():
            shutil.copyfile(nb, dest)
            written += 1
    for old in out.glob("*.ipynb"):
        if old.name not in {nb.name for nb in nbs}:
            old.unlink()
    print(f"docs/gen_pages.py: {len(modules)} API pages, {len(nbs)} notebooks, "
          f"{written} file(s) updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
