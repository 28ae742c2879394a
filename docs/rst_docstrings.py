"""Griffe extension: minirec's reST-flavoured docstrings as Markdown, at build time.

The docstrings are written to read well in ``help()``: Sphinx roles
(``:func:`forward```), ``text::`` before literal blocks, two-column
"``name``  description" lists and reST simple tables. Python-Markdown would
print the roles and the ``::`` as they are and run a list into one paragraph.
This extension rewrites each docstring's text (``obj.docstring.value``) before
mkdocstrings parses it; the source files are not changed:

* a role becomes a cross-reference to the object's API page when the name
  resolves to an object of the loaded package (scoped as Python would:
  the object, its parents, the module's imports, then the package), written
  as an *optional* autoref, so a name whose page has no anchor for it (a
  private module, an undocumented constant) becomes plain code rather than a
  build warning; any other name (``numpy.einsum``) becomes plain code;
* ``text::`` ends with ``:``, and the literal block after it becomes a fenced
  block (Python highlighting when it parses as Python, plain text otherwise);
* a run of "````name````  description" lines becomes a bullet list;
* a reST simple table (``====  ====`` borders) becomes a Markdown table.

``mkdocs.yml`` names this file under the Python handler's ``extensions``;
:func:`convert` is the text transformation (tested in ``tests/test_docs.py``).
"""

from __future__ import annotations

import ast
import html
import re
from collections.abc import Callable

import griffe

#: ``:role:`target``` and ``:role:`title <target>```, with Sphinx's ``~``
#: (show the last component) and ``!`` (no link) prefixes and ``py:`` domain.
ROLE = re.compile(
    r":(?:py:)?(?P<role>func|meth|class|mod|data|attr|obj|exc|const|type):"
    r"`(?P<body>[^`]+)`")
#: A reST simple table's border: runs of ``=`` separated by spaces.
TABLE_BORDER = re.compile(r"^\s*=+(?:[ \t]+=+)+\s*$")
#: A definition-list item: ````name```` (or ``**name**``) then two spaces or more.
DEF_ITEM = re.compile(r"^(?P<indent>[ \t]*)(?P<head>``[^`]+``|\*\*[^*]+\*\*)"
                      r"[ \t]{2,}(?P<text>\S.*)$")
#: A fence line of a Markdown code block already in a docstring.
FENCE = re.compile(r"^\s*(```|~~~)")

Resolver = Callable[[str], "str | None"]


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def role_title(role: str, body: str) -> tuple[str, str]:
    """The text shown and the target name of a role's body.

    ``~a.b.c`` shows ``c``; ``title <a.b>`` shows ``title``; ``func`` and
    ``meth`` get ``()`` as in Sphinx (unless given an explicit title).
    """
    body = body.strip().lstrip("!")
    m = re.match(r"^(?P<title>.+?)\s*<(?P<target>[^<>]+)>$", body)
    if m:
        return m["title"], m["target"].strip()
    target = body.lstrip("~")
    title = target.split(".")[-1] if body.startswith("~") else target.lstrip(".")
    if role in ("func", "meth") and not title.endswith(")"):
        title += "()"
    return title, target


def render_role(match: re.Match, resolve: Resolver, literal: bool = False) -> str:
    """The Markdown (raw HTML) of one role: an optional autoref or plain code.

    Args:
        match: a :data:`ROLE` match.
        resolve: name → full dotted path of a documented object, or ``None``.
        literal: the role is inside a code block: the bare title, no markup.
    """
    title, target = role_title(match["role"], match["body"])
    if literal:
        return title
    code = f"<code>{html.escape(title)}</code>"
    path = None if match["body"].strip().startswith("!") else resolve(target)
    if path is None:
        return code
    return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'


def _literal_block(lines: list[str], indent: str) -> list[str]:
    """A reST literal block's lines as a fenced block at ``indent``."""
    body = list(lines)
    while body and not body[-1].strip():
        body.pop()
    depth = min((_indent(ln) for ln in body if ln.strip()), default=0)
    text = [ln[depth:] if ln.strip() else "" for ln in body]
    try:
        ast.parse("\n".join(text))
        lang = "python"
    except SyntaxError:
        lang = "text"
    return [f"{indent}```{lang}", *(f"{indent}{ln}" if ln else "" for ln in text), f"{indent}```"]


def _table(lines: list[str]) -> list[str] | None:
    """A reST simple table (borders included) as Markdown table lines, or None."""
    borders = [i for i, ln in enumerate(lines) if TABLE_BORDER.match(ln)]
    if len(borders) != 3 or borders[0] != 0 or borders[-1] != len(lines) - 1:
        return None
    border = lines[0]
    indent = border[:_indent(border)]
    spans = [(m.start(), m.end()) for m in re.finditer(r"=+", border)]

    def cells(line: str) -> list[str]:
        out = []
        for k, (a, _) in enumerate(spans):
            b = spans[k + 1][0] if k + 1 < len(spans) else None
            out.append(line[a:b].strip().replace("|", "\\|"))
        return out

    header = [cells(ln) for ln in lines[1:borders[1]]]
    head = [" ".join(c).strip() for c in zip(*header)] if header else [""] * len(spans)
    rows = [cells(ln) for ln in lines[borders[1] + 1:borders[2]] if ln.strip()]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(spans)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    return [indent + ln for ln in md]


def convert(text: str, resolve: Resolver | None = None) -> str:
    """One docstring's reST conventions as Markdown (see the module docstring).

    Args:
        text: the docstring, dedented (as ``inspect.cleandoc`` leaves it).
        resolve: name → full dotted path for a cross-reference, or ``None``
            for plain code (default: every name is plain code).

    Returns:
        The Markdown text; Google-style sections (``Args:``, ``Returns:``) are
        left for mkdocstrings' parser.
    """
    resolve = resolve or (lambda name: None)
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    in_fence = False
    while i < len(lines):
        line = lines[i]
        if FENCE.match(line):  # an existing Markdown fence: copy it as it is
            in_fence = not in_fence
            out.append(line)
            i += 1
            continue
        if in_fence or line.lstrip().startswith(">>>"):
            out.append(ROLE.sub(lambda m: render_role(m, resolve, literal=True), line))
            i += 1
            continue

        # text:: + blank line + indented block  ->  text: + fenced block
        if line.rstrip().endswith("::"):
            base = _indent(line)
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            k = j
            while k < len(lines) and (not lines[k].strip() or _indent(lines[k]) > base):
                k += 1
            head = line.rstrip()[:-2].rstrip()
            if head:
                out.append(ROLE.sub(lambda m: render_role(m, resolve), head) + ":")
            if k > j:
                block = [ROLE.sub(lambda m: render_role(m, resolve, literal=True), ln)
                         for ln in lines[j:k]]
                out.append("")
                out.extend(_literal_block(block, line[:base]))
                if k < len(lines):
                    out.append("")
            i = k
            continue

        # reST simple table
        if TABLE_BORDER.match(line):
            j = i + 1
            n_borders = 1
            while j < len(lines) and lines[j].strip() and n_borders < 3:
                n_borders += bool(TABLE_BORDER.match(lines[j]))
                j += 1
            md = _table(lines[i:j])
            if md is not None:
                if out and out[-1].strip():
                    out.append("")
                out.extend(ROLE.sub(lambda m: render_role(m, resolve), ln) for ln in md)
                if j < len(lines) and lines[j].strip():
                    out.append("")
                i = j
                continue

        # ``name``  description  (a run of such items)  ->  bullet list
        m = DEF_ITEM.match(line)
        if m and (not out or not out[-1].strip()):
            base = len(m["indent"])
            items: list[tuple[str, list[str]]] = []
            j = i
            while j < len(lines):
                mm = DEF_ITEM.match(lines[j])
                if not mm or len(mm["indent"]) != base:
                    break
                parts = [mm["text"].strip()]
                j += 1
                while j < len(lines) and lines[j].strip() and _indent(lines[j]) > base \
                        and not DEF_ITEM.match(lines[j]):
                    parts.append(lines[j].strip())
                    j += 1
                items.append((mm["head"], parts))
                # blank lines between items keep the list going
                k = j
                while k < len(lines) and not lines[k].strip():
                    k += 1
                if k < len(lines) and k > j:
                    nxt = DEF_ITEM.match(lines[k])
                    if nxt and len(nxt["indent"]) == base:
                        j = k
            if len(items) >= 2:
                if out and out[-1].strip():
                    out.append("")
                for head, parts in items:
                    item = f"{m['indent']}- {head} — {' '.join(parts)}"
                    out.append(ROLE.sub(lambda r: render_role(r, resolve), item))
                if j < len(lines) and lines[j].strip():
                    out.append("")
                i = j
                continue

        out.append(ROLE.sub(lambda r: render_role(r, resolve), line))
        i += 1
    return "\n".join(out)


def make_resolver(obj: griffe.Object, collection) -> Resolver:
    """Resolve a role's target as Python would from ``obj``'s scope.

    Tried in order: the name as a full path; the first component looked up
    from ``obj`` outwards (members, then the module's imports, then the
    enclosing packages) with the rest appended; the name inside the package
    that holds ``obj``'s module (``.ssm`` from ``minirec.cells``).

    Returns:
        A function name → full path of an object in ``collection`` (an
        alias's target where it is inside the package), or ``None``.
    """
    def exists(path: str) -> str | None:
        try:
            found = collection[path]
        except Exception:  # KeyError, an alias that cannot be resolved, ...
            return None
        if found.is_alias:
            try:
                return found.final_target.path
            except Exception:
                return None
        return found.path

    def resolve(name: str) -> str | None:
        name = name.strip().lstrip(".~").removesuffix("()")
        if not name:
            return None
        hit = exists(name)
        if hit:
            return hit
        first, _, rest = name.partition(".")
        try:
            base = obj.resolve(first)
        except Exception:  # griffe.NameResolutionError, or an odd member
            base = None
        if base:
            hit = exists(base + ("." + rest if rest else ""))
            if hit:
                return hit
        package = obj.module.parent if obj.module.parent is not None else obj.module
        while package is not None:
            hit = exists(f"{package.path}.{name}")
            if hit:
                return hit
            package = package.parent
        return None

    return resolve


def _walk(obj: griffe.Object, seen: set[int]):
    if id(obj) in seen:
        return
    seen.add(id(obj))
    yield obj
    for member in obj.members.values():
        if member.is_alias:
            continue
        yield from _walk(member, seen)


class ReSTDocstrings(griffe.Extension):
    """Rewrite every docstring of a loaded package with :func:`convert`."""

    def __init__(self) -> None:
        super().__init__()
        self._done: set[int] = set()  # docstrings already converted (by id)

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs) -> None:
        """Convert the docstrings of ``pkg`` and all its members, once each."""
        for obj in _walk(pkg, set()):
            doc = obj.docstring
            if doc is None or id(doc) in self._done:
                continue
            doc.value = convert(doc.value, make_resolver(obj, loader.modules_collection))
            self._done.add(id(doc))
