"""Build-time helpers of jnorm's documentation site (a local Sphinx extension).

* draws the pictures of what each layer normalizes (:mod:`norm_figures`) into ``_figures/``;
* serves MathJax from the copy the ``sphinx-mathjax-offline`` package ships (one file, the
  SVG output with every TeX package built in: no fonts and no network needed);
* lists, in the home page's "More pages" toctree, every top-level ``docs/*.md`` page that the
  home page does not already name, so a page another branch adds is on the site by itself.
"""

from __future__ import annotations

import inspect
import re
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError

MATHJAX = "mathjax/tex-svg-full.js"
MORE_PAGES = "<!-- more-pages -->"


def _mathjax_source() -> Path:
    """The MathJax 3 bundle inside the installed ``sphinx-mathjax-offline`` distribution."""
    try:
        dist = metadata.distribution("sphinx-mathjax-offline")
    except metadata.PackageNotFoundError as e:
        raise ExtensionError(
            "the docs need the sphinx-mathjax-offline package for offline formulas: "
            'pip install -e ".[docs]"') from e
    path = Path(str(dist.locate_file(f"sphinx-mathjax-offline/static/{MATHJAX}")))
    if not path.is_file():
        raise ExtensionError(f"MathJax bundle not found at {path}")
    return path


def _figures(app: Sphinx) -> None:
    import norm_figures

    out = Path(app.srcdir) / "_figures"
    script = Path(norm_figures.__file__)
    stamp = out / "all.svg"
    if not stamp.is_file() or stamp.stat().st_mtime < script.stat().st_mtime:
        norm_figures.write_all(out)


def _copy_mathjax(app: Sphinx, exc: Exception | None) -> None:
    if exc is None and app.builder.format == "html":
        target = Path(app.outdir) / "_static" / MATHJAX
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_mathjax_source(), target)


def more_pages(index_text: str, srcdir: Path) -> list[str]:
    """Top-level pages (``*.md`` beside ``index.md``) that ``index.md`` names nowhere."""
    named = set(re.findall(r"^\s*([\w./-]+)\s*$", index_text, flags=re.M))
    return sorted(p.stem for p in srcdir.glob("*.md")
                  if p.stem != "index" and p.stem not in named)


def _source_read(app: Sphinx, docname: str, source: list[str]) -> None:
    if docname != "index" or MORE_PAGES not in source[0]:
        return
    pages = more_pages(source[0], Path(app.srcdir))
    block = ("```{toctree}\n:hidden:\n:caption: More pages\n:maxdepth: 1\n\n" + "\n".join(pages)
             + "\n```\n") if pages else ""
    source[0] = source[0].replace(MORE_PAGES, block)


def _default(value: Any) -> str:
    """A short, stable spelling of a default value (no memory addresses)."""
    if isinstance(value, type):
        module = value.__module__.replace("jax.numpy", "jnp")
        return f"{module}.{value.__qualname__}" if module != "builtins" else value.__name__
    if callable(value) and hasattr(value, "__name__"):
        return value.__name__
    return re.sub(r" at 0x[0-9a-f]+", "", repr(value))


def _module_signature(app: Sphinx, what: str, name: str, obj: Any, options: Any,
                      signature: str | None, return_annotation: str | None) -> Any:
    """Constructor signatures of the Flax modules as a user writes them.

    flax.linen modules are dataclasses whose generated ``__init__`` ends with flax's internal
    ``parent``/``name`` (defaults printed with memory addresses); flax.nnx modules are built by
    a metaclass whose ``__call__(*args, **kwargs)`` autodoc would show instead of ``__init__``.
    """
    if what != "class" or not name.startswith(("jnorm.linen.", "jnorm.nnx.")):
        return None
    init = obj.__init__ if name.startswith("jnorm.nnx.") else obj
    try:
        sig = inspect.signature(init)
    except (TypeError, ValueError):
        return None
    parts = []
    star = False
    for p in sig.parameters.values():
        if p.name in ("self", "parent", "name"):
            continue
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        text = p.name if p.kind is not p.VAR_KEYWORD else f"**{p.name}"
        if p.annotation is not p.empty and isinstance(p.annotation, str):
            text += f": {p.annotation}"
        if p.default is not p.empty:
            text += f" = {_default(p.default)}"
        parts.append(text)
    return f"({', '.join(parts)})", None


def setup(app: Sphinx) -> dict[str, Any]:
    _mathjax_source()  # fail early, with the fix, when the package is missing
    app.connect("builder-inited", _figures)
    app.connect("build-finished", _copy_mathjax)
    app.connect("source-read", _source_read)
    app.connect("autodoc-process-signature", _module_signature)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
