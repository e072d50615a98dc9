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
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["NORM_COLORS", "STYLE", "figure", "save", "styled", "subplots", "sweep_axes",
           "sweep_curve", "validity_bar"]

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


def validity_bar(ax: Axes, valid_bar: float) -> None:
    """The dotted line of the validity bar (see :class:`~jnorm.experiments.common.Context`)."""
    ax.axhline(valid_bar, color="k", ls=":", lw=1, label=f"validity bar {valid_bar:.2f}")


def sweep_curve(ax: Axes, xs: Any, mean: np.ndarray, std: np.ndarray, diverged: np.ndarray,
                *, color: str, label: str, ms: float | None = None) -> None:
    """One model of a sweep panel: seed mean ± std of the test accuracy at each value `xs` of
    the swept setting, and a cross where ``diverged > 0`` (at least one seed diverged)."""
    size = {} if ms is None else {"ms": ms}
    ax.errorbar(xs, mean, std, color=color, marker="o", capsize=2, label=label, **size)
    hit = diverged > 0
    ax.plot(np.asarray(xs)[hit], mean[hit], "x", color=color, ms=10, mew=2)


def sweep_axes(ax: Axes, *, valid_bar: float, chance: float, xlabel: str, title: str) -> None:
    """The rest of a sweep panel of test accuracy against a setting on a log axis: the legend
    entry of the divergence crosses, the validity bar, the chance line, the axes and title."""
    ax.plot([], [], "x", color="k", ms=8, mew=2, label="diverged (≥ 1 seed)")
    validity_bar(ax, valid_bar)
    ax.axhline(chance, color="0.6", ls="--", lw=1, label=f"chance {chance:.2f}")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
