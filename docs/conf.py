"""Sphinx configuration for the ppl-arsm user guide and API reference.

Build (warnings are errors, as in .ci/run)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import sys
from importlib import metadata
from pathlib import Path

# Local extensions (docs/_ext): markdown_include renders benchmarks/results/*.md and marked parts
# of the README in a page, so that each table is written in one place.
sys.path.insert(0, str(Path(__file__).parent / "_ext"))

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
    "markdown_include",
]

# The pages are reStructuredText; Markdown is only read through the markdown-include directive.
source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "images"]

# Docstrings use Sphinx field lists (:param x:), so no napoleon. References into torch, Pyro, JAX
# and NumPyro (:class:`~pyro.plate`) stay plain text: intersphinx would fetch inventories over the
# network, which CI does not have, and nitpicky mode would flag every such reference.
nitpicky = False
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
# Signatures show the defaults as written (e.g. DEFAULT_ESTIMATORS), not their repr.
autodoc_preserve_defaults = True
autoclass_content = "both"

# Straight quotes: code-like text outside literals (estimator="rloo" in a table) stays as typed.
smartquotes = False

html_theme = "alabaster"
html_title = f"ppl-arsm {release}"
# No static files of our own; an html_static_path that does not exist is a warning.
html_static_path = []
