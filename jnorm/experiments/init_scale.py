"""Experiment 6: normalization reduces the sensitivity to weight initialization.

A deeper MLP (four hidden layers of 64) is trained from initial weights multiplied by a factor
×0.1 … ×10 (every dense kernel, after flax's default LeCun-normal init), with no norm, batch
norm and layer norm; same SGD schedule for all.
"""

from __future__ import annotations

import time

import numpy as np

from .common import Claim, Context, ExperimentResult, fmt, md_table, mean_std
from .models import make_model
from .plotting import NORM_COLORS, save, styled, subplots
from .training import train

NAME = "init_scale"
TITLE = "Less sensitivity to weight initialization"

LR = 0.05
HIDDEN = (64, 64, 64, 64)
NORMS = ("none", "batch", "layer")
#: normalization must raise the worst accuracy over init scales by at least this much.
MARGIN = 0.05


@styled
def run(ctx: Context) -> ExperimentResult:
    """Runs experiment 6."""
    t0 = time.perf_counter()
    scales = ctx.pick((0.1, 1.0, 10.0), (0.1, 0.3, 1.0, 3.0, 10.0),
                      (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0))
    epochs = ctx.pick(1, 4, 15)
    numbers: dict = {"scales": scales, "epochs": epochs, "lr": LR, "hidden": HIDDEN,
                     "momentum": 0.9, "margin": MARGIN}
    fig, ax = subplots(1, 2, figsize=(11, 4))
    rows = []
    norms = ctx.pick(NORMS[:2], NORMS, NORMS)
    for norm in norms:
        res = train(make_model("mlp", norm, hidden=HIDDEN), ctx.data, lrs=(LR,),
                    init_scales=scales, seeds=ctx.seeds, epochs=epochs, batch_size=64,
                    momentum=0.9, desc=f"{NAME}: mlp/{norm}", progress=ctx.progress)
        acc_m, acc_s = mean_std(res.grid("test_acc")[0])
        loss0 = res.grid("step_loss")[0, :, :, 0]
        final = res.grid("epoch_loss")[0, :, :, -1]
        div = res.grid("diverged")[0].mean(-1)
        numbers[norm] = {"test_acc_mean": acc_m, "test_acc_std": acc_s,
                         "first_step_loss_median": np.median(loss0, -1),
                         "final_train_loss_median": np.median(final, -1),
                         "diverged_fraction": div, "worst_acc": float(acc_m.min()),
                         "acc_range": float(acc_m.max() - acc_m.min())}
        c = NORM_COLORS[norm]
        ax[0].errorbar(scales, acc_m, acc_s, color=c, marker="o", capsize=2, label=norm)
        shown = np.where(np.isfinite(np.median(final, -1)), np.median(final, -1), 1e3)
        ax[1].plot(scales, np.clip(shown, 1e-3, 1e3), color=c, marker="o", label=norm)
        rows.append([norm] + [fmt(a, s, 2) + ("†" if d > 0 else "")
                              for a, s, d in zip(acc_m, acc_s, div)]
                    + [f"{acc_m.min():.3f}", f"{acc_m.max() - acc_m.min():.3f}"])
    for a in ax:
        a.set_xscale("log")
        a.set_xlabel("initial weight scale (× LeCun normal)")
        a.legend()
    ax[0].set_ylabel("test accuracy")
    ax[0].set_ylim(0, 1.02)
    ax[0].set_title(f"MLP {len(HIDDEN)}×64: test accuracy after {epochs} epochs")
    ax[1].set_yscale("log")
    ax[1].set_ylabel("final training loss (median; NaN at 1e3)")
    ax[1].set_title("final training loss")
    fname = save(fig, ctx.out, NAME, dpi=ctx.dpi)
    claims = []
    base = numbers["none"]
    for norm in norms[1:]:
        d = numbers[norm]
        claims.append(Claim(
            f"With {norm} norm the network is less sensitive to the weight initialization "
            "(notes, Why normalization helps: 'reduces sensitivity to weight initialization').",
            f"worst seed-mean test accuracy over the scales {list(scales)} at least "
            f"{MARGIN:g} higher than without normalization, and a smaller best–worst range",
            f"worst {d['worst_acc']:.3f} vs {base['worst_acc']:.3f}; range "
            f"{d['acc_range']:.3f} vs {base['acc_range']:.3f}",
            d["worst_acc"] >= base["worst_acc"] + MARGIN and d["acc_range"] < base["acc_range"]))
    table = md_table(["norm"] + [f"×{s:g}" for s in scales] + ["worst", "range"], rows)
    method = (f"MLP with hidden layers {HIDDEN}; every dense kernel is multiplied by the scale "
              f"after init (biases stay 0). SGD with momentum 0.9, η = {LR}, batch 64, "
              f"{epochs} epochs, same for all. Cells: seed-mean ± std test accuracy; † = at "
              "least one seed diverged. All scales and seeds of one model train in one "
              "vmapped loop.")
    return ExperimentResult(NAME, TITLE, method, fname, table, claims, numbers,
                            time.perf_counter() - t0)
