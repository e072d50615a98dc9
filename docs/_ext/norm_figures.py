"""Draws what each normalization layer normalizes over an ``(N, H, W, C)`` tensor.

The tensor is drawn as a cube of cells in an oblique projection: the batch axis N runs left
to right, the channel axis C runs into the page, and the spatial axes H, W (flattened into
one) run upwards. The cells shaded blue are the elements that share one mean and one
variance; every other set of the same layer is a translate of it. Run as a script to write
the SVGs into a folder; ``docs/_ext/jnorm_site.py`` calls :func:`write_all` at build time.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Polygon

N, C, HW = 6, 6, 5  # cells along each drawn axis
DEPTH = (0.62, 0.5)  # screen offset of one step along C (into the page)
# face colours (front, top, side) of shaded and plain cells: a flat-shaded solid
BLUE = ("#6fa3e0", "#a9c9f0", "#4f86c6")
WHITE = ("#ffffff", "#f3f5f7", "#e3e7eb")
BLUE_EDGE, EDGE = "#1f4f8a", "#8a939c"
GROUP = 3  # channels per group in the group-norm picture

# (n, c) pairs whose columns (all of H, W) share one statistic.
Shared = Callable[[int, int], bool]
LAYERS: dict[str, tuple[str, Shared]] = {
    "batch_norm": ("Batch norm", lambda n, c: c == 0),
    "layer_norm": ("Layer norm", lambda n, c: n == 0),
    "instance_norm": ("Instance norm", lambda n, c: n == 0 and c == 0),
    "group_norm": ("Group norm", lambda n, c: n == 0 and c < GROUP),
}


def _point(x: float, y: float, z: float) -> tuple[float, float]:
    """Screen position of cube coordinates (x along N, y along H·W, z along C)."""
    return x + z * DEPTH[0], y + z * DEPTH[1]


def _cell(ax: plt.Axes, corners: list[tuple[float, float, float]], shaded: bool,
          face: int = 0) -> None:
    """One cell of a face (0 front, 1 top, 2 side)."""
    colour = (BLUE if shaded else WHITE)[face]
    poly = Polygon([_point(*p) for p in corners], closed=True, facecolor=colour,
                   edgecolor=BLUE_EDGE if shaded else EDGE, linewidth=0.7)
    ax.add_patch(poly)


def draw_cube(ax: plt.Axes, title: str, shared: Shared) -> None:
    """Draws one cube with the cells of one statistic shaded."""
    for n in range(N):  # front face: z = 0, cells (n, h) of channel 0
        for h in range(HW):
            _cell(ax, [(n, h, 0), (n + 1, h, 0), (n + 1, h + 1, 0), (n, h + 1, 0)],
                  shared(n, 0))
    for n in range(N):  # top face: y = HW, cells (n, c)
        for c in range(C):
            _cell(ax, [(n, HW, c), (n + 1, HW, c), (n + 1, HW, c + 1), (n, HW, c + 1)],
                  shared(n, c), 1)
    for c in range(C):  # right face: x = N, cells (c, h) of the last example
        for h in range(HW):
            _cell(ax, [(N, h, c), (N, h, c + 1), (N, h + 1, c + 1), (N, h + 1, c)],
                  shared(N - 1, c), 2)
    # axis labels
    ax.annotate("", xy=_point(N, -0.6, 0), xytext=_point(0, -0.6, 0),
                arrowprops={"arrowstyle": "->", "color": "#333"})
    ax.text(*_point(N / 2, -1.35, 0), "N  (batch)", ha="center", va="center", fontsize=12)
    ax.annotate("", xy=_point(-0.5, HW, 0), xytext=_point(-0.5, 0, 0),
                arrowprops={"arrowstyle": "->", "color": "#333"})
    ax.text(*_point(-1.0, HW / 2, 0), "H, W", ha="center", va="center", fontsize=12,
            rotation=90)
    ax.annotate("", xy=_point(N + 0.35, -0.35, C), xytext=_point(N + 0.35, -0.35, 0),
                arrowprops={"arrowstyle": "->", "color": "#333"})
    ax.text(*_point(N + 1.1, -0.5, C / 2), "C", ha="center", va="center", fontsize=12)
    ax.set_title(title, fontsize=14, pad=4)
    ax.set_xlim(-1.6, N + C * DEPTH[0] + 1.6)
    ax.set_ylim(-1.9, HW + C * DEPTH[1] + 0.4)
    ax.set_aspect("equal")
    ax.axis("off")


def figure(names: list[str], columns: int = 2) -> plt.Figure:
    """Cubes, one per layer name, in rows of ``columns``."""
    cols = min(columns, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.3 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        title, shared = LAYERS[name]
        draw_cube(ax, title, shared)
    fig.tight_layout(pad=0.3)
    return fig


def write_all(out: Path) -> list[Path]:
    """Writes ``all.svg`` (the four layers side by side) and one SVG per layer into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    plt.rcParams["svg.hashsalt"] = "jnorm"  # stable ids: identical output for identical code
    jobs = {"all": list(LAYERS), **{name: [name] for name in LAYERS}}
    written = []
    for stem, names in jobs.items():
        fig = figure(names)
        path = out / f"{stem}.svg"
        fig.savefig(path, format="svg", metadata={"Date": None})
        plt.close(fig)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "_figures")):
        print(p)
