"""Matplotlib helpers: figures without pyplot (no backend switch, nothing global), one style.

Figures are plain :class:`matplotlib.figure.Figure` objects rendered by Agg on ``savefig``, so
importing this package inside a notebook leaves the user's own pyplot backend and rcParams
alone; the style applies only inside an experiment's ``run`` (see :func:`styled`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import matplotlib
from matplotlib.figure import Figure

__all__ = ["NORM_COLORS", "STYLE", "figure", "save", "styled", "subplots"]

NORM_COLORS = {"none": "#444444", "batch": "#1f77b4", "layer": "#2ca02c", "group": "#d62728",
               "instance": "#9467bd", "dropout": "#ff7f0e", "naive": "#d62728",
               "renorm": "#17becf", "decorrelated": "#8c564b", "iternorm": "#e377c2"}

STYLE = {"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
         "axes.spines.right": False, "font.size": 9, "legend.fontsize": 8,
         "axes.titlesize": 10}

F = TypeVar("F", bound=Callable[..., Any])


def styled(fn: F) -> F:
    """Runs ``fn`` with :data:`STYLE` in effect (``matplotlib.rc_context``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def figure(**kwargs: Any) -> Figure:
    """A new figure (keyword arguments as for :class:`~matplotlib.figure.Figure`)."""
    return Figure(**kwargs)


def subplots(nrows: int = 1, ncols: int = 1, *, squeeze: bool = True,
             **kwargs: Any) -> tuple[Figure, Any]:
    """Like ``pyplot.subplots`` but without pyplot."""
    fig = Figure(**kwargs)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def save(fig: Figure, out: Path, name: str, dpi: float | None = None) -> str:
    """Saves ``fig`` as ``out/name.png`` (at ``dpi``, default the figure's) and returns the
    file name."""
    out.mkdir(parents=True, exist_ok=True)
    fname = f"{name}.png"
    fig.savefig(out / fname, bbox_inches="tight", dpi=dpi or "figure")
    return fname
