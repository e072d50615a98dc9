"""Experiment 2: normalization allows larger learning rates — and where it matters: depth.

MLPs without residual connections, with 2 to 16 hidden layers of 64 units (and, at the full
size, the CNN of 2 conv layers), are trained on the data with plain SGD (no momentum) at a
sweep of constant learning rates, without normalization and with batch or layer norm. Per
rate: final test accuracy (eval mode) and whether the run diverged (non-finite loss, or final
training loss above twice the chance loss).
"""

from __future__ import annotations

import time

import numpy as np

from .common import (
    Claim,
    Context,
    ExperimentResult,
    Outcome,
    compare,
    fmt,
    md_table,
    mean_std,
    seed_note,
)
from .models import DEPTH_WIDTH, deep_mlp, make_model
from .plotting import NORM_COLORS, save, styled, subplots, sweep_axes, sweep_curve
from .training import diverged_loss, train

NAME = "learning_rate"
TITLE = "Normalization allows larger learning rates (and depth is where it matters)"

#: A normalized net must beat the plain one by more than max(FLOOR, 2 SE) at a rate.
FLOOR = 0.05
SOURCE = ("Ioffe & Szegedy 2015, §3.3 (arXiv:1502.03167); Bjorck et al. 2018 "
          "(arXiv:1806.02375), who show the effect grows with depth.")


def sweep_config(ctx: Context) -> dict:
    """Rates, epochs, depths and norms for the context's scale."""
    return {"rates": ctx.pick((0.01, 0.1, 1.0), (0.003, 0.03, 0.3, 3.0),
                              (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)),
            "epochs": ctx.pick(1, 4, 10), "batch_size": 64,
            "depths": ctx.pick((2, 4), (2, 12), (2, 8, 16)),
            "norms": ctx.pick(("none", "batch"), ("none", "batch"), ("none", "batch", "layer")),
            "cnn_depths": ctx.pick((), (), (2,)), "cnn_norms": ("none", "batch")}


@styled
def run(ctx: Context) -> ExperimentResult:
    """Runs experiment 2."""
    t0 = time.perf_counter()
    cfg = sweep_config(ctx)
    rates = cfg["rates"]
    panels = ([("mlp", d, cfg["norms"]) for d in cfg["depths"]]
              + [("cnn", d, cfg["cnn_norms"]) for d in cfg["cnn_depths"]])
    k = ctx.data.num_classes
    numbers: dict = {"rates": rates, "epochs": cfg["epochs"], "batch_size": cfg["batch_size"],
                     "depths": cfg["depths"], "cnn_depths": cfg["cnn_depths"],
                     "width": DEPTH_WIDTH,
                     "optimizer": "SGD, no momentum, constant rate", "floor": FLOOR,
                     "valid_bar": ctx.valid_bar, "diverged_loss": diverged_loss(k),
                     "seeds": ctx.seeds}
    ncol = len(cfg["depths"])
    nrow = 2 if cfg["cnn_depths"] else 1
    fig, axes = subplots(nrow, ncol, figsize=(4.6 * ncol, 3.9 * nrow), squeeze=False,
                         layout="constrained")
    rows, claims = [], []
    for j, (arch, depth, norms) in enumerate(panels):
        ax = axes[j // ncol, j % ncol]
        per: dict = {}
        for norm in norms:
            model = (deep_mlp(norm, depth, num_classes=k) if arch == "mlp"
                     else make_model("cnn", norm, num_classes=k, depth=depth))
            res = train(model, ctx.data, lrs=rates,
                        seeds=ctx.seeds, epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                        momentum=0.0, desc=f"{NAME}: {arch} depth {depth}/{norm}",
                        progress=ctx.progress)
            acc = res.grid("test_acc")[:, 0]  # (rates, seeds)
            acc_m, acc_s = mean_std(acc)
            div = res.grid("diverged")[:, 0].mean(-1)
            per[norm] = {"test_acc": acc, "test_acc_mean": acc_m, "test_acc_std": acc_s,
                         "diverged_fraction": div, "best_rate": rates[int(np.argmax(acc_m))],
                         "best_acc": float(acc_m.max()), "seconds": res.seconds}
            sweep_curve(ax, rates, acc_m, acc_s, div, color=NORM_COLORS[norm], ms=4,
                        label=f"{norm}" if norm != "none" else "no norm")
            rows.append([arch.upper(), depth, norm] + [fmt(a, None, 2) + ("†" if dv > 0 else "")
                                         for a, dv in zip(acc_m, div)]
                        + [f"{per[norm]['best_rate']:g}"])
        numbers[f"depth_{depth}" if arch == "mlp" else f"cnn_depth_{depth}"] = per
        sweep_axes(ax, valid_bar=ctx.valid_bar, chance=ctx.chance,
                   xlabel="learning rate (plain SGD)",
                   title=f"MLP, {depth} hidden layers of {DEPTH_WIDTH}" if arch == "mlp"
                   else f"CNN, {depth} conv layers (8 channels, last 16)")

        base = per["none"]
        for norm in norms[1:]:
            d = per[norm]
            # the rates above the plain net's best rate (all rates if it never learned), with
            # this norm's advantage there
            plain_learned = base["best_acc"] >= ctx.valid_bar
            above = [i for i, r in enumerate(rates)
                     if r > base["best_rate"] or not plain_learned]
            cmp = {rates[i]: compare(d["test_acc"][i], base["test_acc"][i], FLOOR)
                   for i in above}
            # at each rate: won (beats the plain net and reaches the bar), refuted (the plain
            # net is not beaten, or the norm stays below the bar), or undecided
            at_rate = {r: Outcome.all_of(c.beats(), Outcome(
                bool(d["test_acc_mean"][rates.index(r)] >= ctx.valid_bar))) for r, c in cmp.items()}
            won = [r for r, o in at_rate.items() if o.holds]
            outcome = Outcome.any_of(
                *at_rate.values(),
                none=f"the sweep has no rate above the plain net's best (η = "
                     f"{base['best_rate']:g}), so it shows no rate where the plain net fails")
            open_rates = [f"{r:g}" for r, o in at_rate.items() if o.undecided]
            if outcome.undecided and open_rates:
                outcome = Outcome(False, f"no rate is won, and at η = {', '.join(open_rates)} "
                                         "the advantage lies within the margin but is not "
                                         "bounded below the floor either (more seeds would "
                                         "decide)")
            best = max(cmp, key=lambda r: cmp[r].diff) if cmp else None
            d["rates_won_above_plain_best"] = won
            measured = (f"plain net best at η = {base['best_rate']:g} "
                        f"({base['best_acc']:.3f}); {norm} norm best at η = {d['best_rate']:g} "
                        f"({d['best_acc']:.3f}); ")
            where = (f"above η = {base['best_rate']:g}" if plain_learned
                     else "(the plain net learned at no rate)")
            measured += (f"largest advantage {where}: at η = {best:g}, "
                         + cmp[best].describe() if best is not None
                         else "no rate above the plain net's best in the sweep")
            claims.append(ctx.guard(Claim.from_outcome(
                claim=f"A{'n MLP' if arch == 'mlp' else ' CNN'} of depth {depth} with {norm} norm "
                      "trains well at learning rates "
                      "where the same net without normalization fails.",
                criterion=f"at some rate above the plain net's best rate (at any rate if the "
                          f"plain net reaches the validity bar {ctx.valid_bar:.2f} at no rate), "
                          f"{norm} "
                          f"norm's test accuracy exceeds the plain net's by more than "
                          f"max({FLOOR:g}, 2 SE) and reaches the validity bar; not reproduced "
                          "if at every such rate it is below the bar, below the plain net by "
                          "that margin, or ahead by less than the floor (+ 2 SE); inconclusive "
                          "otherwise",
                measured=measured + (f"; rates won: {won}" if won else ""),
                outcome=outcome, source=SOURCE), max(x["best_acc"] for x in per.values())))
    fig.suptitle(f"Test accuracy vs SGD learning rate after {cfg['epochs']} epochs, by depth "
                 f"({seed_note(ctx)})")
    handles, labels = axes[0, -1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8)
    for j in range(len(panels), nrow * ncol):
        axes[j // ncol, j % ncol].set_visible(False)
    fname = save(fig, ctx.out, NAME, dpi=ctx.dpi)
    table = md_table(["arch", "depth", "norm"] + [f"η={r:g}" for r in rates] + ["best η"], rows)
    method = (f"MLPs with {', '.join(map(str, cfg['depths']))} hidden layers of {DEPTH_WIDTH} "
              "units (dense → norm → relu, no residual connections, flax's default "
              "LeCun-normal init)" + (
                  f" and CNNs of {' and '.join(map(str, cfg['cnn_depths']))} conv layers (3×3, "
                  "8 channels, the last with 16 channels and stride 2, then a dense layer; no "
                  "residuals)" if cfg["cnn_depths"] else "")
              + ", trained with plain SGD (no momentum, constant rate, batch "
              f"{cfg['batch_size']}, {cfg['epochs']} epochs) at {len(rates)} rates from "
              f"{rates[0]:g} to {rates[-1]:g}. Cells: seed-mean test accuracy in eval mode "
              "(running statistics for batch norm); † marks rates where at least one seed "
              f"diverged (non-finite loss or final training loss > {diverged_loss(k):.2f}, "
              "twice the chance loss). Without normalization the signal of a deep ReLU net "
              "shrinks layer by layer at this init, so the claim is tested at several depths: "
              "the table shows where normalization makes the difference and where it does not. "
              "All rates and seeds of one model train in one vmapped, jit-compiled loop.")
    return ExperimentResult(NAME, TITLE, method, fname, table, claims, numbers,
                            time.perf_counter() - t0)

