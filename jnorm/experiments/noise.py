"""Experiment 7: the noise of batch statistics and generalization.

(a) Train/test gap of an over-parameterised MLP trained to fit the training set: no norm vs batch
norm vs dropout (the notes: batch norm makes a training example's output non-deterministic, so
'we don't need further regularization or dropout').

(b) Batch size 2 … 128 for batch, group and layer norm in the CNN and the MLP (Wu & He 2018:
batch norm degrades at small batches, group norm does not). The learning rate is scaled
linearly with the batch size (η = 0.05 · B / 64, momentum 0.9) and the number of epochs is
fixed; evaluation uses the running statistics (batch norm) as at test time.
"""

from __future__ import annotations

import time

import numpy as np

from .common import Claim, Context, ExperimentResult, fmt, md_table, mean_std
from .models import make_model
from .plotting import NORM_COLORS, save, styled, subplots
from .training import train

NAME = "noise"
TITLE = "Noise of batch statistics: generalization and batch size"

GAP_HIDDEN = (256, 256)
DROPOUT = 0.3
GAP_LR = 0.05
#: tolerance on accuracy differences in the batch-size criteria (two test digits in 449 ≈ 0.5%).
BS_TOL = 0.02


@styled
def run(ctx: Context) -> ExperimentResult:
    """Runs experiment 7."""
    t0 = time.perf_counter()
    gap_epochs = ctx.pick(1, 10, 40)
    batch_sizes = ctx.pick((4, 64), (2, 16, 128), (2, 4, 8, 16, 32, 64, 128))
    bs_epochs = ctx.pick(1, 2, 6)
    bs_norms = ctx.pick(("batch", "group"), ("batch", "group", "layer"),
                        ("batch", "group", "layer"))
    numbers: dict = {"gap": {"hidden": GAP_HIDDEN, "dropout": DROPOUT, "lr": GAP_LR,
                             "epochs": gap_epochs, "momentum": 0.9},
                     "batch_size": {"batch_sizes": batch_sizes, "epochs": bs_epochs,
                                    "lr": "0.05 * B / 64", "momentum": 0.9, "tol": BS_TOL}}
    bs_archs = ctx.pick(("mlp",), ("mlp",), ("cnn", "mlp"))
    fig, ax = subplots(1, 1 + len(bs_archs), figsize=(5.5 * (1 + len(bs_archs)), 4.2))

    # (a) generalization gap
    variants = {"none": make_model("mlp", "none", hidden=GAP_HIDDEN),
                "batch": make_model("mlp", "batch", hidden=GAP_HIDDEN),
                "dropout": make_model("mlp", "none", hidden=GAP_HIDDEN, dropout=DROPOUT)}
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
        ax[0].bar(j - 0.2, d["acc_gap_mean"], 0.4, yerr=d["acc_gap_std"], color=c, capsize=3,
                  label="accuracy gap (train − test)" if j == 0 else None)
        ax[0].bar(j + 0.2, d["loss_gap_mean"], 0.4, yerr=d["loss_gap_std"], color=c,
                  alpha=0.45, hatch="//", capsize=3,
                  label="loss gap (test − train)" if j == 0 else None)
        gap_rows.append([name, fmt(d["train_acc_mean"], d["train_acc_std"]),
                         fmt(d["test_acc_mean"], d["test_acc_std"]),
                         fmt(d["acc_gap_mean"], d["acc_gap_std"]),
                         fmt(d["loss_gap_mean"], d["loss_gap_std"])])
    ax[0].set_xticks(range(3), ["no norm", "batch norm", f"dropout {DROPOUT}"])
    ax[0].set_title(f"(a) generalization gap, MLP {GAP_HIDDEN}, {gap_epochs} epochs")
    ax[0].legend()

    # (b) batch size, for the CNN (statistics also pool over pixels) and the MLP (they do not)
    bs_rows = []
    for k, arch in enumerate(bs_archs):
        a = ax[1 + k]
        numbers["batch_size"][arch] = {}
        for norm in bs_norms:
            model = make_model(arch, norm)
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
            bs_rows.append([arch, norm] + [fmt(x, y, 3) for x, y in zip(m, s)]
                           + [f"{m.max() - m[0]:.3f}"])
        a.set_xscale("log", base=2)
        a.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
        a.set_xlabel("batch size B (η = 0.05·B/64)")
        a.set_ylabel("test accuracy (eval mode)")
        a.set_title(f"({'bc'[k]}) {arch.upper()}, {bs_epochs} epochs per batch size")
        a.legend()
    fname = save(fig, ctx.out, NAME, dpi=ctx.dpi)

    g = numbers["gap"]
    gap_bn, gap_none, gap_do = (g[k]["acc_gap_mean"] for k in ("batch", "none", "dropout"))
    noise_none = g["none"]["acc_gap_std"] + g["batch"]["acc_gap_std"]
    drops = {arch: {n: numbers["batch_size"][arch][n]["drop_at_smallest"] for n in bs_norms}
             for arch in bs_archs}
    claims = [
        Claim("Batch norm regularizes: its noisy statistics reduce the train/test gap (notes: "
              "'the mean and std-dev are noisy, and this helps generalization in some cases').",
              "accuracy gap (train − test, eval mode) with batch norm smaller than without "
              "normalization by more than the sum of their seed std's",
              f"gap {gap_bn:.3f} (batch norm) vs {gap_none:.3f} (none), seed std sum "
              f"{noise_none:.3f}", gap_bn < gap_none - noise_none),
        Claim("'We don't need further regularization or dropout' with batch norm (notes).",
              "accuracy gap with batch norm no larger than with dropout "
              f"{DROPOUT} (+ {BS_TOL / 2:g} tolerance)",
              f"gap {gap_bn:.3f} (batch norm) vs {gap_do:.3f} (dropout)",
              gap_bn <= gap_do + BS_TOL / 2),
    ]
    for arch in bs_archs:
        bn_drop, gn_drop = drops[arch]["batch"], drops[arch]["group"]
        claims.append(Claim(
            f"{arch.upper()}: batch norm degrades at small batches, group norm does not "
            "(Wu & He 2018).",
            f"batch norm's accuracy at B = {batch_sizes[0]} is more than {BS_TOL:g} below its "
            f"best over B, and group norm's is within {BS_TOL:g} of its best",
            f"drop at B = {batch_sizes[0]}: {bn_drop:.3f} (batch) vs {gn_drop:.3f} (group)",
            bn_drop > BS_TOL and gn_drop <= BS_TOL))
    table = (md_table(["(a) model", "train acc", "test acc", "acc gap", "loss gap"], gap_rows)
             + "\n\n"
             + md_table(["(b, c) arch", "norm"] + [f"B={b}" for b in batch_sizes]
                        + ["drop from best to smallest B"], bs_rows))
    method = (f"(a) MLP {GAP_HIDDEN}, SGD momentum 0.9, η = {GAP_LR}, batch 64, {gap_epochs} "
              f"epochs; dropout {DROPOUT} after each hidden layer in the dropout variant. Train "
              "and test metrics in eval mode on the full splits. (b, c) The CNN (group norm: 4 "
              "groups) and the MLP (64-64; group norm: 8 groups) with batch, group and layer "
              f"norm, trained {bs_epochs} epochs at each batch size with η = 0.05·B/64 (linear "
              "scaling rule) and momentum 0.9; test accuracy in eval mode (batch norm uses its "
              "running averages, momentum 0.9). In the CNN, batch statistics also pool over "
              "the pixels (64 and 16 positions), so even B = 2 averages over 128 and 32 values "
              "per channel; in the MLP, B = 2 means statistics of two numbers.")
    return ExperimentResult(NAME, TITLE, method, fname, table, claims, numbers,
                            time.perf_counter() - t0)
