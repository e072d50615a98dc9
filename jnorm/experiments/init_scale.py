"""Experiment 6: normalization reduces the sensitivity to weight initialization — by depth.

MLPs with 2 to 16 hidden layers of 64 (no residuals) are trained from initial weights
multiplied by a factor ×0.1 … ×10 (every dense kernel, after flax's default LeCun-normal init),
with no norm, batch norm and layer norm; same SGD schedule for all.
"""

from __future__ import annotations

import time

import numpy as np

from .common import Claim, Context, ExperimentResult, compare, fmt, md_table, mean_std, seed_note
from .models import DEPTH_WIDTH, deep_mlp
from .plotting import NORM_COLORS, save, styled, subplots, sweep_axes, sweep_curve
from .training import train

NAME = "init_scale"
TITLE = "Less sensitivity to weight initialization (by depth)"

LR = 0.02
#: the normalized net's worst accuracy over the scales must beat the plain net's worst by more
#: than max(FLOOR, 2 SE).
FLOOR = 0.05
SOURCE = ("Ioffe & Szegedy 2015, abstract and §3.3 (arXiv:1502.03167): batch norm lets us 'be "
          "less careful about initialization'.")


@styled
def run(ctx: Context) -> ExperimentResult:
    """Runs experiment 6."""
    t0 = time.perf_counter()
    k = ctx.data.num_classes
    scales = ctx.pick((0.1, 1.0, 10.0), (0.1, 1.0, 10.0), (0.1, 0.3, 1.0, 3.0, 10.0))
    epochs = ctx.pick(1, 4, 8)
    depths = ctx.pick((2, 4), (2, 12), (2, 8, 16))
    norms = ctx.pick(("none", "batch"), ("none", "batch"), ("none", "batch", "layer"))
    numbers: dict = {"scales": scales, "epochs": epochs, "lr": LR, "depths": depths,
                     "width": DEPTH_WIDTH, "momentum": 0.9, "floor": FLOOR}
    fig, axes = subplots(1, len(depths), figsize=(4.6 * len(depths), 3.9), squeeze=False,
                         layout="constrained")
    rows, claims = [], []
    for j, depth in enumerate(depths):
        ax = axes[0, j]
        per: dict = {}
        for norm in norms:
            res = train(deep_mlp(norm, depth, num_classes=k), ctx.data, lrs=(LR,),
                        init_scales=scales, seeds=ctx.seeds, epochs=epochs, batch_size=64,
                        momentum=0.9, desc=f"{NAME}: depth {depth}/{norm}",
                        progress=ctx.progress)
            acc = res.grid("test_acc")[0]  # (scales, seeds)
            acc_m, acc_s = mean_std(acc)
            div = res.grid("diverged")[0].mean(-1)
            worst = int(np.argmin(acc_m))
            per[norm] = {"test_acc": acc, "test_acc_mean": acc_m, "test_acc_std": acc_s,
                         "diverged_fraction": div, "worst_scale": scales[worst],
                         "worst_acc": float(acc_m[worst]), "best_acc": float(acc_m.max())}
            sweep_curve(ax, scales, acc_m, acc_s, div, color=NORM_COLORS[norm],
                        label="no norm" if norm == "none" else f"{norm} norm")
            rows.append([depth, norm] + [fmt(a, s, 2, n=len(ctx.seeds)) + ("†" if d > 0 else "")
                                         for a, s, d in zip(acc_m, acc_s, div)]
                        + [f"{acc_m.min():.3f}"])
        numbers[f"depth_{depth}"] = per
        sweep_axes(ax, valid_bar=ctx.valid_bar, chance=ctx.chance,
                   xlabel="initial weight scale (× LeCun normal)",
                   title=f"MLP, {depth} hidden layers of {DEPTH_WIDTH}")
        base = per["none"]
        for norm in norms[1:]:
            d = per[norm]
            c = compare(d["test_acc"][scales.index(d["worst_scale"])],
                        base["test_acc"][scales.index(base["worst_scale"])], FLOOR)
            claims.append(ctx.guard(Claim.from_outcome(
                f"An MLP of depth {depth} with {norm} norm is less sensitive to the initial "
                "weight scale than without normalization.",
                f"worst seed-mean test accuracy over the scales {list(scales)} higher than the "
                f"plain net's worst by more than max({FLOOR:g}, 2 SE)",
                f"worst {d['worst_acc']:.3f} (×{d['worst_scale']:g}, {norm}) vs "
                f"{base['worst_acc']:.3f} (×{base['worst_scale']:g}, none); {c.describe()}",
                c.beats(), source=SOURCE), max(x["best_acc"] for x in per.values())))
    fig.suptitle(f"Test accuracy after {epochs} epochs vs initial weight scale, by depth "
                 f"({seed_note(ctx)})")
    handles, labels = axes[0, -1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8)
    fname = save(fig, ctx.out, NAME, dpi=ctx.dpi)
    table = md_table(["depth", "norm"] + [f"×{s:g}" for s in scales] + ["worst"], rows)
    method = (f"MLPs with {', '.join(map(str, depths))} hidden layers of {DEPTH_WIDTH} units "
              "(no residuals); every dense kernel is multiplied by the scale after flax's "
              f"LeCun-normal init (biases stay 0). SGD with momentum 0.9, η = {LR}, batch 64, "
              f"{epochs} epochs, the same for every variant. Cells: test accuracy (seed mean ± "
              "sample std); † = at least one seed diverged. All scales and seeds of one model "
              "train in one vmapped loop.")
    return ExperimentResult(NAME, TITLE, method, fname, table, claims, numbers,
                            time.perf_counter() - t0)
