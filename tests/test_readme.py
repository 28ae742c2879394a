"""README.md stays true: the feature table matches the registry, the quick start is
exactly two commands, every link and make target exists, the code runs."""

import re
from pathlib import Path

from minirec.cli import feature_table_markdown

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
START, END = "<!-- features:start -->", "<!-- features:end -->"


def _section(title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\s*$(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert m, f"README.md has no '## {title}' section"
    return m.group(1)


def _code_blocks(text: str, lang: str = r"\w*") -> list[str]:
    return re.findall(rf"^```{lang}[ \t]*\n(.*?)^```", text, re.M | re.S)


def _links(text: str) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_feature_table_is_the_registry_table():
    assert README.count(START) == 1 and README.count(END) == 1, \
        f"README.md needs exactly one {START} ... {END} pair"
    current = README.split(START)[1].split(END)[0].strip()
    expected = feature_table_markdown()
    assert current == expected, (
        "README.md's feature table is stale: replace the lines between "
        f"{START} and {END} with the output of `minirec list --markdown`.\n"
        f"expected:\n{expected}\n\nfound:\n{current}")


def test_quick_start_is_exactly_make_tour_and_make_test():
    blocks = _code_blocks(_section("Quick start"))
    assert blocks, "the Quick start section has no code block"
    commands = [line.strip() for line in blocks[0].splitlines() if line.strip()]
    assert commands == ["make tour", "make test"], commands


def test_relative_links_point_to_existing_files():
    missing = []
    for target in _links(README):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#")[0]
        if path and not (ROOT / path).exists():
            missing.append(target)
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_every_tutorial_is_linked():
    linked = {t.split("#")[0] for t in _links(README)}
    notebooks = sorted(p.relative_to(ROOT).as_posix()
                       for p in (ROOT / "tutorials").glob("*.ipynb"))
    unlinked = [n for n in notebooks if n not in linked]
    assert not unlinked, f"link these tutorials from README.md (Tutorials): {unlinked}"


def test_documented_make_targets_exist():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    documented = set(re.findall(r"(?:^|`)make ([\w-]+)", README, re.M))
    assert documented, "README.md mentions no make target"
    assert documented <= targets, f"README.md documents missing targets: {documented - targets}"


def test_python_examples_run():
    blocks = _code_blocks(README, "python")
    assert blocks, "README.md has no python example"
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
