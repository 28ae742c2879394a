"""MkDocs hooks: the site's navigation, and MathJax served from the site itself.

``mkdocs.yml`` names this file under ``hooks:``.

* :func:`on_config` sets ``nav`` from :func:`gen_pages.nav`, so new tutorials
  and modules appear in the menu without editing ``mkdocs.yml``.
* :func:`on_page_content` removes, from the notebook pages, the MathJax 2
  loader that nbconvert's template writes (``<script src="">`` with no URL,
  and a ``text/x-mathjax-config`` block that MathJax 3 ignores): the site
  loads MathJax 3 once for every page (``extra_javascript``).
* :func:`on_post_build` copies MathJax 3 from the installed
  ``django-static-mathjax`` package (the ``docs`` extra) into
  ``site/assets/mathjax/``: the maths renders without reaching a CDN, and no
  JavaScript is committed.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

from mkdocs.exceptions import PluginError

_spec = importlib.util.spec_from_file_location(
    "gen_pages", Path(__file__).with_name("gen_pages.py"))
gen_pages = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen_pages)

#: Where MathJax goes in the site (``mkdocs.yml``'s ``extra_javascript`` loads
#: ``assets/mathjax/tex-mml-chtml.js``).
MATHJAX_DEST = "assets/mathjax"
#: What of MathJax's ``es5/`` build the site needs: the TeX-input, HTML-output
#: component, its fonts, the TeX extensions it loads on demand (``\boldsymbol``,
#: ``\cancel``, ...), and the right-click menu with its accessibility parts.
MATHJAX_PARTS = ("tex-mml-chtml.js", "input", "output/chtml", "ui", "a11y", "sre",
                 "adaptors")

_NB_MATHJAX = re.compile(
    r'<!-- Load mathjax -->\s*<script src="[^"]*">\s*</script>.*?'
    r"<!-- End of mathjax configuration -->", re.S)


def mathjax_source() -> Path:
    """The ``es5/`` folder of the installed MathJax 3 (django-static-mathjax).

    Raises:
        PluginError: the package is not installed (``pip install -e ".[docs]"``).
    """
    spec = importlib.util.find_spec("mathjax")
    root = Path(spec.origin).parent if spec and spec.origin else None
    es5 = root / "static" / "mathjax" / "es5" if root else None
    if es5 is None or not (es5 / "tex-mml-chtml.js").exists():
        raise PluginError("MathJax 3 not found: expected the django-static-mathjax package "
                          "(pip install -e \".[docs]\"), got "
                          + (f"no tex-mml-chtml.js under {es5}" if es5 else "no `mathjax` module"))
    return es5


def copy_mathjax(site_dir: Path) -> int:
    """Copy :data:`MATHJAX_PARTS` of MathJax into ``site_dir``/:data:`MATHJAX_DEST`.

    Returns:
        The number of files copied.
    """
    src = mathjax_source()
    dest = Path(site_dir) / MATHJAX_DEST
    n = 0
    for part in MATHJAX_PARTS:
        path = src / part
        if path.is_dir():
            shutil.copytree(path, dest / part, dirs_exist_ok=True)
            n += sum(1 for p in path.rglob("*") if p.is_file())
        else:
            (dest / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / part)
            n += 1
    licence = src.parent / "LICENSE"
    if licence.exists():
        shutil.copy2(licence, dest / "LICENSE")
    return n


def on_config(config):
    """Set ``config["nav"]`` from the pages present in ``docs_dir``."""
    config["nav"] = gen_pages.nav(Path(config["docs_dir"]))
    return config


def on_page_content(html, page, config, files):
    """Drop nbconvert's MathJax 2 loader from a notebook page."""
    if page.file.src_uri.endswith(".ipynb"):
        html = _NB_MATHJAX.sub("", html)
    return html


def on_post_build(config):
    """Copy MathJax into the built site."""
    copy_mathjax(Path(config["site_dir"]))
