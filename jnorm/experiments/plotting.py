"""Matplotlib helpers (headless Agg backend, one consistent style)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt

__all__ = ["NORM_COLORS", "plt", "save"]

NORM_COLORS = {"none": "#444444", "batch": "#1f77b4", "layer": "#2ca02c", "group": "#d62728",
               "instance": "#9467bd", "dropout": "#ff7f0e", "naive": "#d62728"}

plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3,
                     "axes.spines.top": False, "axes.spines.right": False, "font.size": 9,
                     "legend.fontsize": 8, "axes.titlesize": 10})


def save(fig: plt.Figure, out: Path, name: str, dpi: float | None = None) -> str:
    """Saves ``fig`` as ``out/name.png`` (at ``dpi``, default the figure's), closes it, returns
    the file name."""
    out.mkdir(parents=True, exist_ok=True)
    fname = f"{name}.png"
    fig.savefig(out / fname, bbox_inches="tight", dpi=dpi or "figure")
    plt.close(fig)
    return fname
