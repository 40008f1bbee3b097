"""Sphinx configuration: ``nox -s docs`` builds the site (warnings are
errors) and runs its ``>>>`` examples (``-b doctest``)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Document this checkout's onion_tls, whatever else is installed.
sys.path.insert(0, str(HERE.parent))

import onion_tls  # noqa: E402

project = "onion_tls"
author = "the onion_tls authors"
copyright = "the onion_tls authors"
release = onion_tls.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
]

exclude_patterns = ["_build", "examples", "_intersphinx"]
templates_path: list[str] = []

# -- autodoc + napoleon (the docstrings are Google style) ----------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" as fields, not duplicate object entries
napoleon_use_rtype = False

# -- intersphinx: Python's own docs, from a stored inventory (builds offline) --
# docs/_intersphinx/python3.11.inv is objects.inv of the Python 3.11 docs (from
# Debian's python3.11-doc); refresh it from https://docs.python.org/3/objects.inv.
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", str(HERE / "_intersphinx" / "python3.11.inv")),
}

# -- doctest --------------------------------------------------------------------
doctest_global_setup = """
import importlib.util
HAVE_PROXY = importlib.util.find_spec("onion_tls.proxy") is not None
HAVE_STARTTLS = importlib.util.find_spec("onion_tls.starttls") is not None
"""

# -- HTML -----------------------------------------------------------------------
html_theme = "furo"
html_title = f"onion_tls {release}"
