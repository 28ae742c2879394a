"""MkDocs hook: build the site's navigation from the generated pages.

``mkdocs.yml`` names this file under ``hooks:``; :func:`on_config` sets
``nav`` from :func:`gen_pages.nav`, so new tutorials and modules appear in the
menu without editing ``mkdocs.yml``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "gen_pages", Path(__file__).with_name("gen_pages.py"))
gen_pages = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen_pages)


def on_config(config):
    """Set ``config["nav"]`` from the pages present in ``docs_dir``."""
    config["nav"] = gen_pages.nav(Path(config["docs_dir"]))
    return config
