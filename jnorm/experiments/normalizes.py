"""Experiment 1: what each normalization normalizes (the cube figure of Wu & He 2018, Fig. 2).

The cube figure is *measured*, not drawn by hand: for a small ``(N, H, W, C)`` input we push a
one-hot tangent at one element ``x_i`` through the jnorm function (``jax.jvp``), i.e. take
column ``i`` of the Jacobian ``dy/dx``. The outputs that depend on ``x_i`` are exactly the
elements that share its mean and variance — the set the layer normalizes over. Those cells are
drawn in the N × C × (H·W) cube of the group-norm paper. Below, a real activation of a trained
CNN is histogrammed before and after each normalization.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jnorm

from .common import Claim, Context, ExperimentResult, md_table
from .models import make_model
from .plotting import NORM_COLORS, figure, save, styled
from .training import train

NAME = "normalizes"
TITLE = "What each normalization normalizes"

CUBE = (4, 2, 3, 6)  # N, H, W, C of the probe tensor
PROBE = (0, 0, 0, 0)  # the perturbed element (n, h, w, c): a visible corner
GROUPS = 2
#: Groups of group norm on the real activation (16 channels) of the histograms.
HIST_GROUPS = 4


def norm_functions(groups: int = GROUPS) -> dict[str, Callable[[jax.Array], jax.Array]]:
    """The four layers as jnorm functions of an NHWC array (no scale/bias)."""
    return {
        "batch": lambda x: jnorm.batch_norm(x, jnorm.BatchStats.init(x.shape[-1]),
                                            training=True)[0],
        "layer": lambda x: jnorm.layer_norm(x, reduction_axes=(1, 2, 3)),
        "instance": lambda x: jnorm.instance_norm(x),
        "group": lambda x: jnorm.group_norm(x, num_groups=groups),
    }


def influence(fn: Callable[[jax.Array], jax.Array], x: jax.Array,
              index: tuple[int, ...]) -> np.ndarray:
    """Boolean mask of the outputs ``y_j`` with ``dy_j/dx_index != 0`` (one Jacobian column)."""
    tangent = jnp.zeros_like(x).at[index].set(1.0)
    _, col = jax.jvp(fn, (x,), (tangent,))
    col = np.abs(np.asarray(col))
    return col > 1e-6 * col.max()


def to_cube(mask: np.ndarray) -> np.ndarray:
    """``(N, H, W, C)`` → ``(N, C, H·W)``, the axes of the cube figure."""
    n, h, w, c = mask.shape
    return mask.transpose(0, 3, 1, 2).reshape(n, c, h * w)


def expected_sets(shape: tuple[int, int, int, int], index: tuple[int, ...],
                  groups: int) -> dict[str, np.ndarray]:
    """The sets each layer normalizes over according to its paper (and jnorm's docstrings), as
    NHWC masks."""
    n, _, _, c = shape
    i_n, _, _, i_c = index
    nn_, cc = np.meshgrid(np.arange(n), np.arange(c), indexing="ij")
    same_n = np.broadcast_to((nn_ == i_n)[:, None, None, :], shape)
    same_c = np.broadcast_to((cc == i_c)[:, None, None, :], shape)
    gsize = c // groups
    same_g = np.broadcast_to((cc // gsize == i_c // gsize)[:, None, None, :], shape)
    return {"batch": same_c,  # one channel, all examples, all pixels
            "layer": same_n,  # everything of one example
            "instance": same_n & same_c,  # one channel of one example
            "group": same_n & same_g}  # the channels of one group of one example


def _draw_cube(ax: Any, cube: np.ndarray, probe: tuple[int, int, int], color: str,
               title: str) -> None:
    """Draws the selected cells of an ``(N, C, H·W)`` boolean cube inside its wire frame."""
    n, c, hw = cube.shape
    colors = np.empty(cube.shape, object)
    colors[...] = color + "dd"
    colors[probe] = "#000000ff"
    # voxel axes: x = H·W, y = C, z = N (examples stacked upwards, example 0 at the top)
    sel = cube[::-1].transpose(2, 1, 0)
    ax.voxels(sel, facecolors=colors[::-1].transpose(2, 1, 0), edgecolor="#ffffff99",
              linewidth=0.4)
    for xs, ys, zs in _box_edges(hw, c, n):
        ax.plot(xs, ys, zs, color="#555555", linewidth=0.8)
    ax.set_xlabel("H·W", labelpad=-12)
    ax.set_ylabel("C", labelpad=-12)
    ax.set_zlabel("N", labelpad=-12)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_zticks([])
    ax.set_xlim(0, hw)
    ax.set_ylim(0, c)
    ax.set_zlim(0, n)
    ax.set_title(title)
    ax.view_init(elev=24, azim=-55)
    ax.set_box_aspect((hw, c, n))
    ax.grid(False)


def _box_edges(a: int, b: int, c: int) -> list[tuple[list[int], list[int], list[int]]]:
    """The 12 edges of the box ``[0, a] × [0, b] × [0, c]``."""
    edges = []
    for y in (0, b):
        for z in (0, c):
            edges.append(([0, a], [y, y], [z, z]))
    for x in (0, a):
        for z in (0, c):
            edges.append(([x, x], [0, b], [z, z]))
    for x in (0, a):
        for y in (0, b):
            edges.append(([x, x], [y, y], [0, c]))
    return edges


def real_activation(ctx: Context) -> tuple[np.ndarray, dict[str, float]]:
    """The pre-normalization output of the second conv of a briefly trained plain CNN on
    test images (``(N, H/2, W/2, 16)``)."""
    model = make_model("cnn", "none", num_classes=ctx.data.num_classes)
    res = train(model, ctx.data, lrs=(0.05,), seeds=ctx.seeds[:1],
                epochs=ctx.pick(1, 2, 5), batch_size=64, momentum=0.0,
                desc="normalizes: CNN", progress=ctx.progress)
    variables = res.run_variables(0)
    x = jnp.asarray(ctx.data.x_test[:128])
    _, inter = model.apply(variables, x, capture_intermediates=lambda m, _: isinstance(m, nn.Conv))
    act = np.asarray(inter["intermediates"]["Conv_1"]["__call__"][0])
    return act, {"test_acc": float(res.test_acc[0])}


@styled
def run(ctx: Context) -> ExperimentResult:
    """Runs experiment 1."""
    t0 = time.perf_counter()
    x = jax.random.normal(jax.random.key(0), CUBE, jnp.float32)
    fns = norm_functions()
    expected = expected_sets(CUBE, PROBE, GROUPS)
    measured = {k: influence(f, x, PROBE) for k, f in fns.items()}
    i_n, i_h, i_w, i_c = PROBE
    probe_cube = (i_n, i_c, i_h * CUBE[2] + i_w)

    act, act_info = real_activation(ctx)
    ja = jnp.asarray(act)
    after = {k: np.asarray(f(ja)) for k, f in norm_functions(groups=HIST_GROUPS).items()}
    # Check the statistics each layer produces over its own sets: per set mean ~0, std ~1.
    n, h, w, c = act.shape
    group_view = {
        "batch": lambda a: a.reshape(-1, c).T,  # one row per channel
        "layer": lambda a: a.reshape(n, -1),  # one row per example
        "instance": lambda a: a.transpose(0, 3, 1, 2).reshape(n * c, -1),
        "group": lambda a: a.reshape(n, h * w, HIST_GROUPS, c // HIST_GROUPS)
        .transpose(0, 2, 1, 3).reshape(n * HIST_GROUPS, -1),
    }
    set_stats = {}
    for k, a in after.items():
        rows = group_view[k](a)
        # constant sets (e.g. a dead ReLU-free channel) normalize to 0; skip them
        live = group_view[k](act).std(1) > 1e-3
        set_stats[k] = {"max_abs_set_mean": float(np.abs(rows[live].mean(1)).max()),
                        "max_abs_set_std_minus_1": float(np.abs(rows[live].std(1) - 1).max()),
                        "dead_sets": int((~live).sum())}

    fig = figure(figsize=(13, 6.8))
    names = ["batch", "layer", "instance", "group"]
    for j, k in enumerate(names):
        ax = fig.add_subplot(2, 4, j + 1, projection="3d")
        _draw_cube(ax, to_cube(measured[k]), probe_cube, NORM_COLORS[k],
                   f"{k} norm" + (f" ({GROUPS} groups)" if k == "group" else ""))
        ax2 = fig.add_subplot(2, 4, 5 + j)
        bins = np.linspace(-4, 4, 61)
        ax2.hist(act.ravel(), bins=bins, color="#888888", alpha=0.6, density=True,
                 label="before (conv output)")
        ax2.hist(after[k].ravel(), bins=bins, color=NORM_COLORS[k], alpha=0.6, density=True,
                 label=f"after {k} norm"
                 + (f" ({HIST_GROUPS} groups)" if k == "group" else ""))
        ax2.set_xlabel("activation value (range ±4 shown)")
        ax2.legend(loc="upper left", fontsize=7)
        if j == 0:
            ax2.set_ylabel("density")
    fig.suptitle("Top: cells that share the statistics of the black cell, measured from "
                 "jnorm's Jacobian (column dy/dx_i ≠ 0).  Bottom: a real activation (2nd conv "
                 "of a trained CNN, test images) before/after each norm", fontsize=9)
    fname = save(fig, ctx.out, NAME, dpi=ctx.dpi)

    rows, claims, numbers = [], [], {"probe_shape_NHWC": CUBE, "probe_index_NHWC": PROBE,
                                     "groups": GROUPS, "activation": act_info,
                                     "activation_before": {"mean": float(act.mean()),
                                                           "std": float(act.std())}}
    descr = {"batch": "one channel, over all examples and all pixels (N, H, W)",
             "layer": "everything of one example (H, W, C)",
             "instance": "one channel of one example (H, W)",
             "group": "the channels of one group of one example (H, W, C/G)"}
    sources = {"batch": "Ioffe & Szegedy 2015, Alg. 1 and §3.2 (arXiv:1502.03167).",
               "layer": "Ba et al. 2016, §3 (arXiv:1607.06450); Wu & He 2018, Fig. 2.",
               "instance": "Ulyanov et al. 2016 (arXiv:1607.08022); Wu & He 2018, Fig. 2.",
               "group": "Wu & He 2018, §3.1 and Fig. 2 (arXiv:1803.08494)."}
    paper_text = {"batch": "Batch norm normalizes one channel over all data points",
                  "layer": "Layer norm normalizes everything over a single data point",
                  "instance": "Instance norm normalizes a single channel over a single data point",
                  "group": "Group norm normalizes multiple channels on a single data point"}
    for k in names:
        m, e = measured[k], expected[k]
        match = bool(np.array_equal(m, e))
        numbers[k] = {"cells_measured": int(m.sum()), "cells_expected": int(e.sum()),
                      "matches_paper": match, **set_stats[k],
                      "after_mean": float(after[k].mean()), "after_std": float(after[k].std())}
        rows.append([k, descr[k], int(m.sum()), int(e.sum()), "yes" if match else "NO",
                     f"{set_stats[k]['max_abs_set_mean']:.1e}",
                     f"{set_stats[k]['max_abs_set_std_minus_1']:.1e}"])
        claims.append(Claim(
            claim=paper_text[k] + ".",
            source=sources[k],
            criterion="the set of outputs whose Jacobian column w.r.t. one input is non-zero "
                      "equals the set the paper defines, exactly",
            measured=f"{int(m.sum())} of {m.size} cells, "
                     f"{'identical to' if match else 'different from'} the expected set",
            holds=match))
    table = md_table(["layer", "normalizes over (paper / jnorm docs)", "cells measured",
                      "cells expected", "match", "max |set mean| after",
                      "max |set std − 1| after"], rows)
    method = (f"A random `{CUBE}` (N, H, W, C) tensor goes through `jnorm.batch_norm` "
              "(training mode), `jnorm.layer_norm(reduction_axes=(1, 2, 3))`, "
              f"`jnorm.instance_norm` and `jnorm.group_norm(num_groups={GROUPS})`. One Jacobian "
              f"column (a `jax.jvp` with a one-hot tangent at element {PROBE}) marks every "
              "output that depends on that input: that is the set whose mean and variance the "
              "element shares. The cube shows N × C × (H·W) as in Wu & He (2018), Fig. 2. The "
              "histograms use the "
              "second-conv activation of a plain CNN trained briefly on the data (test images), "
              f"normalized by each function (group norm with {HIST_GROUPS} groups); the last "
              "two table columns check that every normalized set has mean 0 and std 1 "
              "(sets that were constant before are skipped). For images, batch norm pools over "
              "the pixels (H, W) as well as the examples (Ioffe & Szegedy 2015, §3.2).")
    return ExperimentResult(NAME, TITLE, method, fname, table, claims, numbers,
                            time.perf_counter() - t0)
