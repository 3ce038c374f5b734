"""Sphinx configuration for the ppl-arsm API reference.

Build (warnings are errors, as in .ci/run)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

from importlib import metadata

project = "ppl-arsm"
author = "the ppl-arsm authors"
copyright = "the ppl-arsm authors"
# One version, written in pyproject.toml, read from the installed distribution.
release = metadata.version("ppl-arsm")
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

# Only the reStructuredText pages are part of the site; converting.md is read on GitHub (and run
# as a test by tests/test_converting_doc.py).
source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "images", "*.md"]

# Docstrings use Sphinx field lists (:param x:), so no napoleon. References into torch, Pyro, JAX
# and NumPyro (:class:`~pyro.plate`) stay plain text: intersphinx would fetch inventories over the
# network, which CI does not have, and nitpicky mode would flag every such reference.
nitpicky = False
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
# Signatures show the defaults as written (e.g. DEFAULT_ESTIMATORS), not their repr.
autodoc_preserve_defaults = True
autoclass_content = "both"

html_theme = "alabaster"
html_title = f"ppl-arsm {release}"
# No static files of our own; an html_static_path that does not exist is a warning.
html_static_path = []
