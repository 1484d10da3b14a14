"""Sphinx configuration of the wfl_like documentation site.

Build with ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
"""

import sys
from pathlib import Path

# Document the package of this checkout even where it is not installed.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))

project = "wfl_like"
author = "wfl_like developers"
copyright = "wfl_like developers"

import wfl_like  # noqa: E402  (after the path is set)

release = version = wfl_like.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "repo_links",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# README.md: a note for people browsing docs/ on GitHub would not be a page of the site
exclude_patterns = ["_build", ".venv", "**/.ipynb_checkpoints", "README.md"]

# MyST: headings get anchors so that links like guide.md#failures resolve.
myst_heading_anchors = 3

# Links from the pages to files beside docs/ (they work on GitHub as they are): these files
# are shown on pages of the site ("page#anchor"); other files become downloads (see _ext/repo_links.py).
repo_link_root = ".."
repo_link_pages = {
    "benchmarks/README.md": "benchmarks",
    "examples/relax_md_calculate.py": "examples#relax_md_calculatepy",
    "examples/wrap_an_operation.py": "examples#wrap_an_operationpy",
    "examples/scatter_gather.py": "examples#scatter_gatherpy",
    "examples/ml_potential.py": "examples#ml_potentialpy",
    "examples/on_a_cluster.py": "examples#on_a_clusterpy",
}

# numpy-style docstrings
napoleon_google_docstring = False
napoleon_numpy_docstring = True

autodoc_member_order = "bysource"
autodoc_default_options = {"show-inheritance": True}

try:
    import furo  # noqa: F401
    html_theme = "furo"
except ImportError:
    html_theme = "alabaster"
html_title = f"wfl_like {release}"
