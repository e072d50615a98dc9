"""Experiment 8: running (EMA) statistics vs the population statistics of the final network.

At test time batch norm uses running averages of the batch statistics, accumulated while the
weights were changing. After training, the *population* statistics of the final network are
computed with ``jnorm.precise_batch_stats`` (PreciseBN: the batch statistics of every training
batch under the frozen final weights, aggregated exactly), and compared with the EMA, layer by
layer; the eval accuracy is measured with both.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

import jnorm

from .common import Claim, Context, ExperimentResult, compare, fmt, md_table, mean_std, seed_note
from .models import make_model
from .plotting import save, styled, subplots
from .training import evaluate, train

NAME = "running_stats"
TITLE = "Running statistics vs population statistics"

LR = 0.05
#: EMA and population statistics "agree at test time" when the eval accuracies differ by at most
#: max(ACC_TOL, 2 SE of the per-seed difference).
ACC_TOL = 0.01
SOURCE = ("Ioffe & Szegedy 2015, §3.1 (arXiv:1502.03167): inference uses population statistics, "
          "estimated by moving averages; Wu & Johnson 2021, §3 (arXiv:2105.07576) on where the "
          "two differ.")
BATCH = 64


def population_stats(model: Any, variables: dict, x: np.ndarray) -> dict:
    """PreciseBN statistics of one run's ``variables`` over the training images ``x``."""
    n = (len(x) // BATCH) * BATCH
    batches = jnp.asarray(x[:n]).reshape(n // BATCH, BATCH, *x.shape[1:])
    return jnorm.precise_batch_stats(model, variables, batches, train=True)["batch_stats"]


def _flat(tree: Any) -> dict[str, np.ndarray]:
    """``{"Norm_0/BatchNorm_0/mean": array, ...}``."""
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


@styled
def run(ctx: Context) -> ExperimentResult:
    """Runs experiment 8."""
    t0 = time.perf_counter()
    momenta = ctx.pick((0.9,), (0.9, 0.99), (0.9, 0.99, 0.999))
    epochs = ctx.pick(1, 3, 12)
    numbers: dict = {"momenta": momenta, "epochs": epochs, "lr": LR, "batch_size": BATCH,
                     "acc_tol": ACC_TOL}
    fig, ax = subplots(1, 3, figsize=(15, 4.4), layout="constrained")
    rows, claims = [], []
    markers = {0.9: "o", 0.99: "s", 0.999: "^"}
    for j, m in enumerate(momenta):
        model = make_model("cnn", "batch", num_classes=ctx.data.num_classes, bn_momentum=m)
        res = train(model, ctx.data, lrs=(LR,), seeds=ctx.seeds, epochs=epochs,
                    batch_size=BATCH, momentum=0.9, desc=f"{NAME}: momentum {m}",
                    progress=ctx.progress)
        pops = [population_stats(model, res.run_variables(r), ctx.data.x_train)
                for r in range(len(ctx.seeds))]
        pop_stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *pops)
        pop_vars = {"params": res.variables["params"], "batch_stats": pop_stacked}
        _, acc_pop = evaluate(model, pop_vars, ctx.data.x_test, ctx.data.y_test)
        ema, pop = _flat(res.variables["batch_stats"]), _flat(pop_stacked)
        layer_err = {}
        for key in ema:
            if not key.endswith("mean"):
                continue
            vkey = key[: -len("mean")] + "var"
            std = np.sqrt(pop[vkey])  # (seeds, C)
            layer_err[key[: -len("/mean")]] = {
                # |EMA mean − population mean| in units of the population std, per channel
                "mean_err_in_std": np.mean(np.abs(ema[key] - pop[key]) / std, axis=-1),
                # EMA var / population var, geometric mean over channels
                "var_ratio": np.exp(np.mean(np.log(ema[vkey] / pop[vkey]), axis=-1)),
            }
            a = ax[0] if key.startswith("Norm_0/") else ax[1]
            a.scatter(pop[vkey].ravel(), ema[vkey].ravel(), s=10, alpha=0.6,
                      marker=markers.get(m, "o"), color=f"C{j}", label=f"momentum {m}")
        dacc = res.test_acc - acc_pop
        numbers[str(m)] = {"test_acc_ema": res.test_acc, "test_acc_population": acc_pop,
                           "acc_difference": dacc, "layers": layer_err,
                           "sgd_steps": epochs * res.steps_per_epoch,
                           "initial_value_weight": m ** (epochs * res.steps_per_epoch)}
        am, as_ = mean_std(res.test_acc, 0)
        pm, ps = mean_std(acc_pop, 0)
        dm, ds = mean_std(dacc, 0)
        for name, err in layer_err.items():
            mm, ms = mean_std(err["mean_err_in_std"], 0)
            vm, vs = mean_std(err["var_ratio"], 0)
            layer = "BN " + str(int(name.split("/")[0].rsplit("_", 1)[1]) + 1)
            rows.append([m, layer] + [fmt(a, b, n=len(ctx.seeds)) for a, b in
                                      ((mm, ms), (vm, vs), (am, as_), (pm, ps), (dm, ds))])
        ax[2].errorbar([j - 0.15], [am], [as_], fmt="o", color=f"C{j}", capsize=3,
                       label=f"EMA, momentum {m}")
        ax[2].errorbar([j + 0.15], [pm], [ps], fmt="s", mfc="none", color=f"C{j}",
                       capsize=3, label=f"population, momentum {m}")
        c = compare(dacc, np.zeros_like(dacc), ACC_TOL)
        ns = len(ctx.seeds)
        claims.append(ctx.guard(Claim.from_outcome(
            f"Running averages of the mini-batch statistics (momentum {m}) can stand in for the "
            "population statistics at test time.",
            f"|eval accuracy with EMA − with population statistics| (seed mean of the per-seed "
            f"difference) + 2 SE ≤ {ACC_TOL:g}; not reproduced if the |difference| exceeds "
            f"max({ACC_TOL:g}, 2 SE), inconclusive in between",
            f"{fmt(am, as_, n=ns)} (EMA) vs {fmt(pm, ps, n=ns)} (population); {c.describe()}; "
            f"after {epochs * res.steps_per_epoch} steps the EMA's initial value (mean 0, var 1) "
            f"still weighs {m ** (epochs * res.steps_per_epoch):.2f}",
            c.agrees(), source=SOURCE), max(am, pm)))
    for a, t in ((ax[0], "first batch norm (8 channels)"),
                 (ax[1], "second batch norm (16 channels)")):
        lim = [min(a.get_xlim()[0], a.get_ylim()[0]), max(a.get_xlim()[1], a.get_ylim()[1])]
        a.plot(lim, lim, "k:", lw=1)
        a.set_xscale("log")
        a.set_yscale("log")
        for axis in (a.xaxis, a.yaxis):
            axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FormatStrFormatter("%g"))
            axis.set_minor_formatter(NullFormatter())
        a.set_xlabel("population variance (PreciseBN)")
        a.set_ylabel("running (EMA) variance")
        a.set_title(f"per-channel variance, {t}")
        handles, labels = a.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        a.legend(uniq.values(), uniq.keys())
    ax[2].set_xticks(range(len(momenta)), [f"momentum {m}" for m in momenta])
    ax[2].set_ylabel("test accuracy (eval mode)")
    ax[2].set_title("eval accuracy: EMA (filled) vs population (open)")
    ax[2].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"Running (EMA) vs population statistics of the final CNN ({seed_note(ctx)})")
    fname = save(fig, ctx.out, NAME, dpi=ctx.dpi)
    table = md_table(["BN momentum", "layer", "mean |μ_EMA − μ_pop| / σ_pop",
                      "σ²_EMA / σ²_pop (geo. mean)", "test acc EMA", "test acc population",
                      "difference"], rows)
    method = (f"The CNN with batch norm (running-average momentum {list(momenta)}, flax "
              f"convention: weight of the old value) is trained {epochs} epochs (SGD momentum "
              f"0.9, η = {LR}, batch {BATCH}). Then `jnorm.precise_batch_stats` recomputes the "
              f"population statistics of the final weights over all training batches of {BATCH}"
              " (layers see the features of the previous layers in training mode, as in "
              "training). The table compares per-channel EMA and population statistics and the "
              "test accuracy with each (mean ± std over seeds). A large momentum averages over "
              "~1/(1 − momentum) steps, i.e. over older weights.")
    return ExperimentResult(NAME, TITLE, method, fname, table, claims, numbers,
                            time.perf_counter() - t0)
