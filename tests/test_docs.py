"""The documentation site: generated pages, docstrings turned into Markdown, the
feature tables, and the built site as a reader sees it.

* docs/gen_pages.py: every public module gets an API page, new ones
  automatically; the home page is README without dead links; the feature page
  is the registry's.
* docs/rst_docstrings.py: Sphinx roles, ``text::`` literal blocks,
  "``name``  text" lists and reST tables become Markdown at build time.
* The feature table (README, docs) and ``minirec list`` say which methods each
  backend runs, from ``Entry.pairs``; ``minirec list`` fits 100 columns.
* ``test_built_site_in_headless_chromium`` builds the site with
  ``mkdocs build --strict``, serves it on 127.0.0.1 and drives Debian's
  ``chromium`` (DevTools protocol over ``--remote-debugging-pipe``, no extra
  package): maths typeset by MathJax on every tutorial page, zero raw Sphinx
  roles in the built HTML, lists and tables readable, search finds "blelloch".
  It needs the ``docs`` extra and chromium; it skips, saying which is missing,
  except under CI (``CI`` set), where ``.ci/run`` installs both and it fails.
"""

import base64
import fcntl
import functools
import html
import http.server
import importlib.util
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from minirec import registry
from minirec.cli import feature_table_markdown, list_table, main

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _missing(what: str):
    """Skip, saying what is missing; under CI fail instead (.ci/run installs it)."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} (.ci/run should have installed it)")
    pytest.skip(what)


@pytest.fixture(scope="module")
def gen():
    return _load("gen_pages")


@pytest.fixture(scope="module")
def rst():
    if importlib.util.find_spec("griffe") is None:
        _missing("griffe is not installed: pip install -e .[docs]")
    return _load("rst_docstrings")


# ---------------------------------------------------------------------------
# docs/gen_pages.py
# ---------------------------------------------------------------------------

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
    # the anchor makes the module a cross-reference target
    assert gen.api_page("minirec.ops.brand_new", False) == (
        "# `minirec.ops.brand_new`\n\n[](){#minirec.ops.brand_new}\n\n"
        "::: minirec.ops.brand_new\n")
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


def test_pipes_in_table_code_lose_githubs_escape_on_the_site(gen):
    text = "| `[a \\| b]` | x \\| y |\nprose `p \\| q`"
    assert gen.table_code_pipes(text) == "| `[a | b]` | x \\| y |\nprose `p \\| q`"


def test_features_page_is_the_registry_table(gen):
    page = gen.features_page()
    assert gen.feature_table_block(feature_table_markdown()) in page
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


# ---------------------------------------------------------------------------
# docs/rst_docstrings.py: reST conventions -> Markdown, sources untouched
# ---------------------------------------------------------------------------

def _known(*paths):
    return lambda name: next((p for p in paths if p.endswith(name)), None)


def test_a_role_that_resolves_becomes_an_optional_cross_reference(rst):
    out = rst.convert("See :func:`forward` and :class:`~minirec.scan.linear.LinearScanCache`.",
                      _known("minirec.scan.linear.forward",
                             "minirec.scan.linear.LinearScanCache"))
    assert out == ('See <autoref identifier="minirec.scan.linear.forward" optional>'
                   "<code>forward()</code></autoref> and "
                   '<autoref identifier="minirec.scan.linear.LinearScanCache" optional>'
                   "<code>LinearScanCache</code></autoref>.")


def test_a_role_that_does_not_resolve_becomes_plain_code(rst):
    out = rst.convert(":data:`numpy.newaxis`, :mod:`!minirec.bptt` and :meth:`x <a.b>`",
                      _known("minirec.bptt"))
    assert out == "<code>numpy.newaxis</code>, <code>minirec.bptt</code> and <code>x</code>"
    assert not rst.ROLE.search(out)


def test_a_literal_block_loses_its_double_colon_and_becomes_fenced(rst):
    text = "The loop::\n\n    h = h0\n    for t in range(T):\n        h = a[t] * h\n\nAfter."
    assert rst.convert(text) == ("The loop:\n\n```python\nh = h0\nfor t in range(T):\n"
                                 "    h = a[t] * h\n```\n\nAfter.")
    maths = "Backward::\n\n    g_t = dh_t + a_{t+1} ⊙ g_{t+1}   (:func:`scan`)\n"
    assert rst.convert(maths, _known("m.scan")) == (
        "Backward:\n\n```text\ng_t = dh_t + a_{t+1} ⊙ g_{t+1}   (scan())\n```")


def test_a_two_column_method_list_becomes_a_bullet_list(rst):
    text = ("Methods:\n\n``recurrent``      the loop.\n``blelloch``       work-efficient\n"
            "                   sweeps.\n\nBackends: numpy.")
    assert rst.convert(text) == ("Methods:\n\n- ``recurrent`` — the loop.\n"
                                 "- ``blelloch`` — work-efficient sweeps.\n\nBackends: numpy.")


def test_a_simple_table_becomes_a_markdown_table(rst):
    text = ("Tasks:\n\n======  =========\ntask    loss\n======  =========\n"
            "``a``   ``log 2``\n``b``   MSE\n======  =========\n")
    assert rst.convert(text) == ("Tasks:\n\n| task | loss |\n|---|---|\n"
                                 "| ``a`` | ``log 2`` |\n| ``b`` | MSE |\n")


def test_google_sections_and_markdown_are_left_alone(rst):
    text = ("Summary.\n\nArgs:\n    x: ``(B, T, D)``.\n\nReturns:\n    ``y``, and\n"
            "    a cache.\n\n```python\nprint(1)\n```")
    assert rst.convert(text) == text


def test_every_role_in_the_package_is_converted(rst):
    """Each docstring of minirec, as mkdocstrings will see it, keeps no raw role."""
    import griffe

    loader = griffe.GriffeLoader(extensions=griffe.load_extensions(rst.ReSTDocstrings()),
                                 search_paths=[str(ROOT)])
    pkg = loader.load("minirec")
    n_docs = 0
    for obj in rst._walk(pkg, set()):
        if obj.docstring is not None:
            n_docs += 1
            assert not rst.ROLE.search(obj.docstring.value), obj.path
    assert n_docs > 100
    # a relative name resolves in its module's scope
    doc = pkg["scan.linear.LinearScanCache"].docstring.value
    assert '<autoref identifier="minirec.scan.linear.backward" optional>' in doc


# ---------------------------------------------------------------------------
# the feature tables: which methods each backend runs
# ---------------------------------------------------------------------------

def _runs(entry, backend):
    return [m for m, b in entry.pairs if b == backend]


def test_feature_table_says_which_methods_each_backend_runs():
    lines = feature_table_markdown().splitlines()
    assert "backends: methods" in lines[0]
    rows = dict(zip(registry.ENTRIES, lines[2:]))
    for name, entry in registry.ENTRIES.items():
        cell = rows[name].split(" | ")[4]
        named = []
        for group in cell.split("<br>"):
            backends, methods = group.split(": ")
            for b in (b.strip("`") for b in backends.split(", ")):
                named.append(b)
                expected = _runs(entry, b)
                if methods == "all":
                    assert expected == list(entry.methods), (name, b)
                else:
                    assert [m.strip("`") for m in methods.split(", ")] == expected, (name, b)
        assert sorted(named) == sorted({b for _, b in entry.pairs}), name


def test_a_backend_that_runs_fewer_methods_is_listed_with_them():
    entry = registry.get("scan.linear")
    cell = next(line for line in feature_table_markdown([entry]).splitlines()[2:]).split(" | ")[4]
    assert cell.startswith("`numpy`: all<br>")
    if "numba" in entry.backends:
        numba = next(g for g in cell.split("<br>") if "`numba`" in g.split(": ")[0])
        assert numba.split(": ")[1] == ", ".join(f"`{m}`" for m in _runs(entry, "numba"))
        assert len(_runs(entry, "numba")) < len(entry.methods)


def test_minirec_list_fits_100_columns_and_names_every_entry(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 100
    firsts = [line.split()[0] for line in lines if line.strip()]
    assert set(registry.ENTRIES) <= set(firsts)
    text = "\n".join(lines)
    for entry in registry.ENTRIES.values():
        assert " ".join(entry.summary.split()[:3]) in " ".join(text.split())


def test_minirec_list_wide_is_one_line_per_entry(capsys):
    assert main(["list", "--wide"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 + len(registry.ENTRIES)
    for line, entry in zip(lines[2:], registry.ENTRIES.values()):
        assert line.startswith(entry.name + " ") and line.rstrip().endswith(entry.summary)
    assert list_table(wide=True) == "\n".join(lines)


def test_markdown_and_wide_cannot_be_combined(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["list", "--markdown", "--wide"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# the built site in headless Chromium
# ---------------------------------------------------------------------------

#: A Sphinx role as it would read on a page (``:func:`x```).
RAW_ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|data|attr|obj|exc|const):`")
#: The collapsed "Source code in ..." listings: Python source, shown as it is.
SOURCE_LISTING = re.compile(r'<details class="mkdocstrings-source">.*?</details>', re.S)
#: A code block (a notebook's code cell or output, a docstring's example).
CODE_BLOCK = re.compile(r"<pre\b.*?</pre>", re.S)
CHROMIUMS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class Chromium:
    """Headless Chromium driven through the DevTools protocol on a pipe.

    ``--remote-debugging-pipe`` reads JSON commands on fd 3 and writes
    replies on fd 4, each message ended by a NUL byte: no WebDriver, no extra
    package. Started with ``posix_spawn`` (safe in a threaded process, as an
    xdist worker is). One tab; :meth:`goto`, :meth:`js` and :meth:`screenshot`.
    """

    def __init__(self, exe: str, timeout: float = 60.0):
        self.timeout = timeout
        cmd_r, self._w = os.pipe()  # we write commands, chromium reads fd 3
        self._r, res_w = os.pipe()  # chromium writes replies on fd 4, we read
        # out of the way of 3 and 4 first, so that neither dup2 clobbers the other
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (cmd_r, res_w)]
        os.close(cmd_r)
        os.close(res_w)
        self.profile = tempfile.mkdtemp(prefix="minirec-chromium-")
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--remote-debugging-pipe", f"--user-data-dir={self.profile}",
                 "--window-size=1280,2000", "--hide-scrollbars", "--no-first-run",
                 "--no-default-browser-check", "--disable-extensions", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update",
                 "--metrics-recording-only", "--no-pings"]
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
                   (os.POSIX_SPAWN_DUP2, high[0], 3), (os.POSIX_SPAWN_DUP2, high[1], 4)]
        try:
            self.pid = os.posix_spawn(exe, [exe, *flags, "about:blank"], dict(os.environ),
                                      file_actions=actions)
        finally:
            for fd in high:
                os.close(fd)
        self._buf = b""
        self._id = 0
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget",
                                 {"targetId": target, "flatten": True})["sessionId"]
        self.send("Page.enable", session=True)

    def send(self, method: str, params: dict | None = None, session: bool = False) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._r], [], [], left)[0]:
                    raise TimeoutError(f"chromium did not answer {method} in {self.timeout} s")
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium exited")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def js(self, expression: str):
        """Evaluate ``expression`` in the page (awaiting a promise); its JSON value."""
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True}, session=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float = 30.0):
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.2)

    def goto(self, url: str):
        self.send("Page.navigate", {"url": url}, session=True)
        self.wait_for(f"document.readyState === 'complete' && location.href === {url!r}",
                      f"{url} to load")

    def screenshot(self, path: Path):
        data = self.send("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        Path(path).write_bytes(base64.b64decode(data))

    def close(self):
        try:
            self.send("Browser.close")
        except (OSError, RuntimeError, TimeoutError):  # already gone
            pass
        deadline = time.monotonic() + 10
        while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                break
            time.sleep(0.1)
        for fd in (self._w, self._r):
            os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


#: After MathJax has finished typesetting: how many formulas it rendered, how
#: many it could not parse, and any $…$ / $$…$$ / \(…\) left as text in the
#: notebooks' Markdown, the pages' maths or the menus (code and rendered maths
#: excluded).
MATHS_REPORT = """
(window.MathJax && MathJax.startup && MathJax.startup.promise
   ? MathJax.startup.promise : Promise.reject('MathJax did not load')).then(() => {
  const raw = [];
  const typeset = '.jp-RenderedMarkdown, .arithmatex, .md-sidebar .md-ellipsis';
  for (const el of document.querySelectorAll(typeset)) {
    const copy = el.cloneNode(true);
    copy.querySelectorAll('code, pre, mjx-container').forEach(n => n.remove());
    const m = copy.textContent.match(/\\$\\$|\\$[^\\s$][^$]*\\$|\\\\\\(|\\\\\\[/);
    if (m) raw.push(copy.textContent.slice(Math.max(0, m.index - 40), m.index + 60));
  }
  return {rendered: document.querySelectorAll('mjx-container').length,
          errors: document.querySelectorAll('mjx-merror').length, raw: raw};
})
"""


def _has_maths(notebook: Path) -> bool:
    cells = json.loads(notebook.read_text("utf-8"))["cells"]
    return any("$" in "".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


@pytest.fixture(scope="module")
def built_site(tmp_path_factory):
    """``docs/gen_pages.py`` then ``mkdocs build --strict`` into a temporary folder."""
    if importlib.util.find_spec("mkdocs") is None:
        _missing("mkdocs is not installed: pip install -e .[docs]")
    site = tmp_path_factory.mktemp("docs") / "site"
    for cmd in ([sys.executable, "docs/gen_pages.py"],
                [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)]):
        run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                             env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
        out = run.stdout + run.stderr
        warnings = [ln for ln in out.splitlines() if re.match(r"\s*(WARNING|ERROR)\b", ln)]
        assert run.returncode == 0, (f"{' '.join(cmd[1:])} failed:\n" + "\n".join(warnings)
                                     + f"\n...\n{out[-1500:]}")
    return site


@pytest.fixture(scope="module")
def chromium_exe():
    """The path of Debian's chromium (or another Chromium/Chrome on PATH)."""
    exe = next((p for p in map(shutil.which, CHROMIUMS) if p), None)
    if exe is None:
        _missing("chromium is not installed (apt-get install chromium)")
    return exe


def test_built_site_in_headless_chromium(chromium_exe, built_site, tmp_path):
    """Everything a reader sees, in one build (one build per run under xdist)."""
    site = built_site

    # -- the static HTML: no raw role or stray '::' in any page's text. Code is
    #    shown as written: the API pages' source listings and the notebooks'
    #    printed sources (inspect.getsource) keep the docstrings' roles.
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 40
    offenders = {}
    for page in pages:
        text = CODE_BLOCK.sub("", SOURCE_LISTING.sub("", page.read_text("utf-8")))
        prose = [html.unescape(re.sub(r"<[^>]+>", "", p)) for p in re.findall(
            r"<p>(.*?)</p>", re.sub(r"<code\b.*?</code>", "", text, flags=re.S), re.S)]
        hits = RAW_ROLE.findall(text) + [p[-60:] for p in prose if re.search(r"::(\s|$)", p)]
        if hits:
            offenders[str(page.relative_to(site))] = hits[:3]
    assert not offenders, f"raw Sphinx roles or '::' in the built HTML: {offenders}"
    mathjax = site / "assets" / "mathjax" / "tex-mml-chtml.js"
    assert mathjax.exists(), "MathJax was not copied into the site"
    for page in pages:  # nothing is loaded from another host, and no empty <script src="">
        scripts = re.findall(r'<script[^>]*\ssrc="([^"]*)"', page.read_text("utf-8"))
        assert all(s and not re.match(r"^(https?:)?//", s) for s in scripts), (page, scripts)

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    browser = Chromium(chromium_exe)
    try:
        # -- every tutorial page: the Markdown's maths typeset, none left raw
        tutorials = sorted((ROOT / "tutorials").glob("*.ipynb"))
        assert tutorials
        for nb in tutorials:
            browser.goto(f"{base}/tutorials/{nb.stem}/")
            report = browser.js(MATHS_REPORT)
            shot = tmp_path / f"{nb.stem}.png"
            browser.screenshot(shot)
            where = f"tutorial {nb.stem} (screenshot {shot})"
            assert not report["raw"], f"{where}: maths left as text: {report['raw'][:3]}"
            assert report["errors"] == 0, f"{where}: {report['errors']} TeX errors"
            if _has_maths(nb):
                assert report["rendered"] > 0, f"{where}: no formula typeset"

        # -- an API page: roles became links, the method list is a list, the
        #    docstrings' equation blocks do not run off to the side
        browser.goto(f"{base}/api/minirec.scan.linear/")
        api = browser.js("""(() => {
          const article = document.querySelector('article');
          article.querySelectorAll('details').forEach(d => d.remove());
          const blocks = [...document.querySelectorAll('.doc-contents pre > code')];
          return {text: article.innerText,
                  links: [...article.querySelectorAll('a.autorefs-internal')]
                           .map(a => a.getAttribute('href')),
                  methods: [...article.querySelectorAll('li > code:first-child')]
                           .map(c => c.textContent),
                  overflowing: blocks.filter(b => b.scrollWidth > b.clientWidth + 1).length,
                  blocks: blocks.length};
        })()""")
        browser.screenshot(tmp_path / "api_scan_linear.png")
        assert not RAW_ROLE.search(api["text"])
        assert any("minirec.scan.associative" in href for href in api["links"]), api["links"]
        assert set(api["methods"]) >= set(registry.get("scan.linear").methods), api["methods"]
        assert api["blocks"] >= 2 and api["overflowing"] == 0, api

        # -- the feature table: names never wrap mid-word, no literal '\|'
        browser.goto(f"{base}/features/")
        table = browser.js("""(() => {
          const rows = [...document.querySelectorAll('article table tbody tr')];
          return {rows: rows.length, text: document.querySelector('article table').innerText,
                  wrapped: rows.map(r => r.querySelector('td code'))
                               .filter(c => c.getClientRects().length > 1)
                               .map(c => c.textContent)};
        })()""")
        browser.screenshot(tmp_path / "features.png")
        assert table["rows"] == len(registry.ENTRIES)
        assert not table["wrapped"], f"names wrapped inside a word: {table['wrapped']}"
        assert "\\|" not in table["text"] and "numpy: all" in table["text"]

        # -- search (lunr in a web worker) finds the Blelloch scan
        browser.goto(f"{base}/?q=blelloch")
        hits = browser.wait_for(
            "[...document.querySelectorAll('.md-search-result__item')]"
            ".map(li => li.innerText).filter(t => /blelloch/i.test(t))",
            "search results for 'blelloch'")
        browser.screenshot(tmp_path / "search.png")
        assert hits
    finally:
        browser.close()
        server.shutdown()
        server.server_close()
