"""Sphinx configuration of jnorm's documentation site.

Build (strict, as CI does): ``sphinx-build -W --keep-going -n docs docs/_build/html``.

Everything is local: the notebooks are rendered with their stored outputs (never executed
here), the experiments' report comes from committed results files, the figures of what each
layer normalizes are drawn by ``docs/_ext/norm_figures.py`` at build time, and MathJax is the
copy shipped by the ``sphinx-mathjax-offline`` package, so the pages typeset their formulas in
a browser without network access.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document this checkout's jnorm, not an installed copy
sys.path.insert(0, str(DOCS / "_ext"))

import jnorm  # noqa: E402

project = "jnorm"
author = "jnorm developers"
copyright = "jnorm developers"
release = version = jnorm.__version__

extensions = [
    "myst_nb",  # MyST markdown pages and notebooks (includes myst_parser)
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",  # Google-style docstrings
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "jnorm_site",  # docs/_ext/jnorm_site.py: figures, offline MathJax, page list
]

# ------------------------------------------------------------------------------- sources
exclude_patterns = [
    "_build",
    "_figures/*.py",
    "evidence/results/**",  # included by evidence/experiments.md, not a page of its own
    "**.ipynb_checkpoints",
    "jupyter_execute",
]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # notebooks are committed executed; tests run them (nbmake)
nb_merge_streams = True
nb_render_markdown_format = "myst"  # markdown outputs (the experiments' tables) as MyST: tables

# --------------------------------------------------------------------------------- strict
nitpicky = True
# Offline: no intersphinx inventories, so names of other packages cannot resolve. jnorm's own
# names must (a broken reference to jnorm.* fails the build).
nitpick_ignore_regex = [
    (r"py:.*", r"(jax|jaxlib|numpy|np|jnp|flax|nn|nnx|optax|orbax|typing|collections|os|"
               r"pathlib|types|builtins|abc|enum|dataclasses)(\..*)?"),
    # private modules are not part of the reference; docstrings may still name them
    (r"py:.*", r"jnorm\._.*"),
    (r"py:.*", r"(Array|ArrayLike|Any|Callable|Sequence|Hashable|Mapping|Iterable|Iterator|"
               r"PyTree|PathLike|DTypeLike|Dtype|Initializer|Module|Self|NoneType|"
               r"Axes|AxisName|AxisIndexGroups|Implementation|PromotionFn|"
               r"int|float|bool|str|tuple|list|dict|None|object|type|complex|bytes)"),
]

# -------------------------------------------------------------------------------- autodoc
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": False}
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# ----------------------------------------------------------------------------------- HTML
html_theme = "sphinx_book_theme"
html_title = f"jnorm {release}"
html_static_path = ["_static"]
html_css_files = ["jnorm.css"]
html_theme_options = {
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "home_page_in_toc": True,
}
html_last_updated_fmt = None
html_copy_source = False
html_show_sourcelink = False
pygments_style = "default"
mathjax_path = "mathjax/tex-svg-full.js"  # copied into _static by jnorm_site (offline)
mathjax3_config = {"tex": {"tags": "none"}}

os.environ.setdefault("JAX_PLATFORMS", "cpu")
