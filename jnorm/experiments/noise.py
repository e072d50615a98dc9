"""Experiment 7: the noise of batch statistics and generalization.

(a) Train/test gap of an over-parameterised MLP trained to fit the training set: no norm vs batch
norm vs dropout (Ioffe & Szegedy 2015, §3.4: a training example's output depends on the other
examples of its batch, which regularizes, so dropout "can be removed or reduced").

(b) Batch size 2 … 128 for batch, group and layer norm in the CNN and the MLP (Wu & He 2018:
batch norm degrades at small batches, group norm does not). The learning rate is scaled
linearly with the batch size (η = 0.05 · B / 64, momentum 0.9) and the number of epochs is
fixed; evaluation uses the running statistics (batch norm) as at test time.
"""

from __future__ import annotations

import time

import numpy as np
from matplotlib.axes import Axes

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
from .models import make_model
from .plotting import NORM_COLORS, save, styled, subplots, validity_bar
from .training import train

NAME = "noise"
TITLE = "Noise of batch statistics: generalization and batch size"

GAP_HIDDEN = (256, 256)
DROPOUT = 0.3
GAP_LR = 0.05
#: floor of the margin on accuracy differences in the batch-size criteria.
BS_FLOOR = 0.02
#: floor of the margin on differences of the train/test accuracy gap.
GAP_FLOOR = 0.01
SOURCE_REG = ("Ioffe & Szegedy 2015, §3.4 (arXiv:1502.03167); Luo et al. 2019 "
              "(arXiv:1809.00846).")
SOURCE_GN = "Wu & He 2018, §1 and Fig. 1 (arXiv:1803.08494)."


def _zoom(ax: Axes, accs: list[np.ndarray], valid_bar: float) -> None:
    """Sets the accuracy axis to the range of the per-seed values and error bars (the
    differences between batch sizes can be a fraction of a point), with the validity bar drawn
    when it falls inside and named in the legend when it does not."""
    vals = np.concatenate([np.ravel(a) for a in accs]
                          + [m + sign * sd for m, sd in map(mean_std, accs) for sign in (-1, 1)])
    lo, hi = float(vals.min()), float(vals.max())
    pad = max(0.1 * (hi - lo), 0.005)
    lo, hi = max(0.0, lo - pad), min(1.01, hi + pad)
    if lo <= valid_bar <= hi:
        validity_bar(ax, valid_bar)
    else:
        ax.plot([], [], color="k", ls=":", lw=1,
                label=f"validity bar {valid_bar:.2f} ({'below' if valid_bar < lo else 'above'} "
                      "the axis)")
    ax.set_ylim(lo, hi)


@styled
def run(ctx: Context) -> ExperimentResult:
    """Runs experiment 7."""
    t0 = time.perf_counter()
    ncls = ctx.data.num_classes
    gap_epochs = ctx.pick(1, 10, 40)
    batch_sizes = ctx.pick((4, 64), (2, 16, 128), (2, 8, 32, 128))
    bs_epochs = ctx.pick(1, 2, 6)
    bs_norms = ctx.pick(("batch", "group"), ("batch", "group"), ("batch", "group", "layer"))
    numbers: dict = {"gap": {"hidden": GAP_HIDDEN, "dropout": DROPOUT, "lr": GAP_LR,
                             "epochs": gap_epochs, "momentum": 0.9},
                     "batch_size": {"batch_sizes": batch_sizes, "epochs": bs_epochs,
                                    "lr": "0.05 * B / 64", "momentum": 0.9, "floor": BS_FLOOR}}
    bs_archs = ctx.pick(("mlp",), ("mlp",), ("cnn", "mlp"))
    npanel = 2 + len(bs_archs)
    nrow = (npanel + 1) // 2  # two panels a row: readable at the report's width
    fig, grid = subplots(nrow, 2, figsize=(9.6, 3.9 * nrow), layout="constrained",
                         squeeze=False)
    ax = grid.reshape(-1)
    for extra in ax[npanel:]:
        extra.set_visible(False)

    # (a) generalization gap
    variants = {"none": make_model("mlp", "none", num_classes=ncls, hidden=GAP_HIDDEN),
                "batch": make_model("mlp", "batch", num_classes=ncls, hidden=GAP_HIDDEN),
                "dropout": make_model("mlp", "none", num_classes=ncls, hidden=GAP_HIDDEN,
                                      dropout=DROPOUT)}
    gap_rows = []
    for j, (name, model) in enumerate(variants.items()):
        res = train(model, ctx.data, lrs=(GAP_LR,), seeds=ctx.seeds, epochs=gap_epochs,
                    batch_size=64, momentum=0.9, desc=f"{NAME}: gap/{name}",
                    progress=ctx.progress)
        acc_gap = res.train_acc - res.test_acc
        loss_gap = res.test_loss - res.train_loss
        d = numbers["gap"][name] = {"train_acc": res.train_acc, "test_acc": res.test_acc,
                                    "train_loss": res.train_loss, "test_loss": res.test_loss,
                                    "acc_gap": acc_gap, "loss_gap": loss_gap}
        for k in list(d):
            d[k + "_mean"], d[k + "_std"] = (float(v) for v in mean_std(d[k], 0))
        c = NORM_COLORS[name]
        for i, key in enumerate(("acc_gap", "loss_gap")):
            ax[i].bar(j, d[key + "_mean"], 0.6, color=c, alpha=0.7)
            ax[i].plot(np.full(len(d[key]), j), d[key], "k.", ms=5,
                       label="one seed" if j == 0 else None)
        gap_rows.append([name] + [fmt(d[f + "_mean"], d[f + "_std"], n=len(ctx.seeds))
                                  for f in ("train_acc", "test_acc", "acc_gap", "loss_gap")])
    for i, (lab, unit) in enumerate((("accuracy gap: train − test", "accuracy"),
                                      ("loss gap: test − train", "cross-entropy"))):
        ax[i].set_xticks(range(3), ["no norm", "batch norm", f"dropout {DROPOUT}"])
        ax[i].set_ylabel(f"{lab} ({unit})")
        ax[i].set_title(f"({'ab'[i]}) {lab}, MLP {GAP_HIDDEN}, {gap_epochs} epochs", fontsize=9)
        ax[i].axhline(0, color="k", lw=0.8)
        ax[i].legend(fontsize=7)

    # (b) batch size, for the CNN (statistics also pool over pixels) and the MLP (they do not)
    bs_rows = []
    for kk, arch in enumerate(bs_archs):
        a = ax[2 + kk]
        numbers["batch_size"][arch] = {}
        for norm in bs_norms:
            model = make_model(arch, norm, num_classes=ncls)
            accs = []
            for bs in batch_sizes:
                res = train(model, ctx.data, lrs=(0.05 * bs / 64,), seeds=ctx.seeds,
                            epochs=bs_epochs, batch_size=bs, momentum=0.9,
                            desc=f"{NAME}: {arch}/{norm}/B={bs}", progress=ctx.progress)
                accs.append(res.test_acc)
            accs_a = np.stack(accs)  # (batch sizes, seeds)
            m, s = mean_std(accs_a)
            numbers["batch_size"][arch][norm] = {"test_acc": accs_a, "test_acc_mean": m,
                                                 "test_acc_std": s,
                                                 "drop_at_smallest": float(m.max() - m[0])}
            a.errorbar(batch_sizes, m, s, color=NORM_COLORS[norm], marker="o", capsize=2,
                       label=f"{norm} norm")
            bs_rows.append([arch, norm] + [fmt(x, y, 3, n=len(ctx.seeds)) for x, y in zip(m, s)]
                           + [f"{m.max() - m[0]:.3f}"])
        a.set_xscale("log", base=2)
        a.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
        a.set_xlabel("batch size B (η = 0.05·B/64)")
        a.set_ylabel("test accuracy (eval mode)")
        _zoom(a, [numbers["batch_size"][arch][n]["test_acc"] for n in bs_norms],
              ctx.valid_bar)
        a.set_title(f"({'cd'[kk]}) {arch.upper()}, {bs_epochs} epochs per batch size",
                    fontsize=9)
        a.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Noise of batch statistics ({seed_note(ctx)})")
    fname = save(fig, ctx.out, NAME, dpi=ctx.dpi)

    g = numbers["gap"]
    gap_best = max(g[n]["test_acc_mean"] for n in variants)
    c_reg = compare(g["none"]["acc_gap"], g["batch"]["acc_gap"], GAP_FLOOR)
    c_do = compare(g["batch"]["acc_gap"], g["dropout"]["acc_gap"], GAP_FLOOR)
    claims = [
        ctx.guard(Claim.from_outcome(
            "Batch norm regularizes: its noisy batch statistics shrink the train/test accuracy "
            "gap of a network that fits its training set.",
            f"accuracy gap (train − test, eval mode) smaller with batch norm than without "
            f"normalization by more than max({GAP_FLOOR:g}, 2 SE)",
            f"gap {fmt(g['batch']['acc_gap_mean'])} (batch norm) vs "
            f"{fmt(g['none']['acc_gap_mean'])} (none); {c_reg.describe()}",
            c_reg.beats(), source=SOURCE_REG), gap_best),
        ctx.guard(Claim.from_outcome(
            "With batch norm, dropout is not needed: batch norm's gap is no larger than "
            f"dropout's ({DROPOUT}).",
            f"batch norm's accuracy gap minus dropout's, + 2 SE, ≤ {GAP_FLOOR:g}; not "
            f"reproduced if it exceeds max({GAP_FLOOR:g}, 2 SE), inconclusive in between",
            f"gap {fmt(g['batch']['acc_gap_mean'])} (batch norm) vs "
            f"{fmt(g['dropout']['acc_gap_mean'])} (dropout); {c_do.describe()}",
            c_do.not_greater(), source=SOURCE_REG), gap_best),
    ]
    for arch in bs_archs:
        bsn = numbers["batch_size"][arch]
        cmp = {}
        for n in ("batch", "group"):
            acc = bsn[n]["test_acc"]
            best = int(np.argmax(bsn[n]["test_acc_mean"]))
            cmp[n] = compare(acc[best], acc[0], BS_FLOOR)
            bsn[n]["drop_margin"] = cmp[n].margin
        claims.append(ctx.guard(Claim.from_outcome(
            f"{arch.upper()}: batch norm degrades at small batches, group norm does not.",
            f"at B = {batch_sizes[0]}, batch norm's accuracy is below its best over B by more "
            f"than max({BS_FLOOR:g}, 2 SE), and group norm's drop + 2 SE is at most "
            f"{BS_FLOOR:g}; not reproduced if either part is refuted, inconclusive if "
            "neither is refuted and one is undecided",
            f"drop at B = {batch_sizes[0]}: batch norm {cmp['batch'].describe()}; group norm "
            f"{cmp['group'].describe()}",
            Outcome.all_of(cmp["batch"].beats(), cmp["group"].not_greater()),
            source=SOURCE_GN),
            max(float(bsn[n]["test_acc_mean"].max()) for n in bs_norms)))
    table = (md_table(["(a, b) model", "train acc", "test acc", "acc gap", "loss gap"], gap_rows)
             + "\n\n"
             + md_table(["(c, d) arch", "norm"] + [f"B={b}" for b in batch_sizes]
                        + ["drop from best to smallest B"], bs_rows))
    method = (f"(a, b) MLP {GAP_HIDDEN}, SGD momentum 0.9, η = {GAP_LR}, batch 64, {gap_epochs} "
              f"epochs; dropout {DROPOUT} after each hidden layer in the dropout variant. Train "
              "and test metrics in eval mode on the full splits. (c, d) The CNN (group norm: 4 "
              "groups) and the MLP (64-64; group norm: 8 groups) with batch, group and layer "
              f"norm, trained {bs_epochs} epochs at each batch size with η = 0.05·B/64 (linear "
              "scaling rule) and momentum 0.9; test accuracy in eval mode (batch norm uses its "
              "running averages, momentum 0.9). In the CNN, batch statistics also pool over "
              "the pixels (64 and 16 positions), so even B = 2 averages over 128 and 32 values "
              "per channel; in the MLP, B = 2 means statistics of two numbers.")
    return ExperimentResult(NAME, TITLE, method, fname, table, claims, numbers,
                            time.perf_counter() - t0)
