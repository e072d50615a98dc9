"""Experiment 2: normalization allows larger learning rates.

A small CNN and an MLP are trained on digits with plain SGD (no momentum) at a sweep of
constant learning rates, for every normalization. Per rate: final test accuracy (eval mode),
final training loss and whether the run diverged (non-finite or above twice the chance loss).
"""

from __future__ import annotations

import time

import numpy as np

from .common import Claim, Context, ExperimentResult, fmt, md_table, mean_std
from .models import make_model
from .plotting import NORM_COLORS, save, styled, subplots
from .training import DIVERGED_LOSS, train

NAME = "learning_rate"
TITLE = "Normalization allows larger learning rates"

#: A run "trains well" when its seed-mean test accuracy reaches this.
GOOD_ACC = 0.9
ARCH_NORMS = {"cnn": ("none", "batch", "layer", "group", "instance"),
              "mlp": ("none", "batch", "layer", "group")}


def sweep_config(ctx: Context) -> dict:
    """Rates, epochs and architectures for the context's scale."""
    rates = ctx.pick((0.01, 0.1, 1.0, 3.0),
                     (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0),
                     (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0))
    arch_norms = ctx.pick({"mlp": ("none", "batch")},
                          {"cnn": ("none", "batch", "group"), "mlp": ("none", "batch", "layer")},
                          ARCH_NORMS)
    return {"rates": rates, "epochs": ctx.pick(1, 3, 12), "batch_size": 64,
            "arch_norms": arch_norms}


def largest_good_rate(rates: tuple[float, ...], acc: np.ndarray) -> float | None:
    """The largest rate whose (seed-mean) accuracy is at least :data:`GOOD_ACC`."""
    good = [r for r, a in zip(rates, acc) if a >= GOOD_ACC]
    return max(good) if good else None


@styled
def run(ctx: Context) -> ExperimentResult:
    """Runs experiment 2."""
    t0 = time.perf_counter()
    cfg = sweep_config(ctx)
    rates = cfg["rates"]
    numbers: dict = {"rates": rates, "epochs": cfg["epochs"], "batch_size": cfg["batch_size"],
                     "optimizer": "SGD, no momentum, constant rate", "good_acc": GOOD_ACC,
                     "diverged_loss": DIVERGED_LOSS, "seeds": ctx.seeds}
    archs = list(cfg["arch_norms"])
    fig, axes = subplots(2, len(archs), figsize=(5.2 * len(archs), 7), squeeze=False)
    rows, claims = [], []
    for j, arch in enumerate(archs):
        numbers[arch] = {}
        for norm in cfg["arch_norms"][arch]:
            res = train(make_model(arch, norm), ctx.data, lrs=rates, seeds=ctx.seeds,
                        epochs=cfg["epochs"], batch_size=cfg["batch_size"], momentum=0.0,
                        desc=f"{NAME}: {arch}/{norm}", progress=ctx.progress)
            acc_m, acc_s = mean_std(res.grid("test_acc")[:, 0])
            final = res.grid("epoch_loss")[:, 0, :, -1]
            div = res.grid("diverged")[:, 0].mean(-1)
            numbers[arch][norm] = {
                "test_acc_mean": acc_m, "test_acc_std": acc_s,
                "final_train_loss_median": np.median(final, -1),
                "diverged_fraction": div, "largest_good_rate": largest_good_rate(rates, acc_m),
                "seconds": res.seconds}
            c = NORM_COLORS[norm]
            ax = axes[0, j]
            ax.errorbar(rates, acc_m, acc_s, color=c, marker="o", ms=4, capsize=2, label=norm)
            dmask = div > 0
            ax.plot(np.asarray(rates)[dmask], acc_m[dmask], "x", color=c, ms=9, mew=2)
            ax2 = axes[1, j]
            shown = np.where(np.isfinite(np.median(final, -1)), np.median(final, -1), 1e3)
            ax2.plot(rates, np.clip(shown, 1e-3, 1e3), color=c, marker="o", ms=4, label=norm)
        axes[0, j].set_title(f"{arch.upper()}: test accuracy after {cfg['epochs']} epochs "
                             "(× = diverged)")
        axes[0, j].set_xscale("log")
        axes[0, j].axhline(GOOD_ACC, color="k", ls=":", lw=1)
        axes[0, j].set_ylim(0, 1.02)
        axes[0, j].set_ylabel("test accuracy")
        axes[0, j].legend(loc="lower left")
        axes[1, j].set_xscale("log")
        axes[1, j].set_yscale("log")
        axes[1, j].axhline(DIVERGED_LOSS, color="k", ls=":", lw=1)
        axes[1, j].set_title("final training loss (median over seeds; NaN drawn at 1e3)")
        axes[1, j].set_xlabel("learning rate (SGD)")
        axes[1, j].set_ylabel("training loss")

        base = numbers[arch]["none"]
        base_good = base["largest_good_rate"]
        for norm in cfg["arch_norms"][arch]:
            d = numbers[arch][norm]
            rows.append([arch, norm] + [
                fmt(a, None, 2) + ("†" if dv > 0 else "")
                for a, dv in zip(d["test_acc_mean"], d["diverged_fraction"])]
                + [d["largest_good_rate"] if d["largest_good_rate"] is not None else "—"])
            if norm == "none":
                continue
            # rates where the plain net fails (diverges or stalls) but this norm trains well
            rescued = [r for r, a0, dv0, a in zip(rates, base["test_acc_mean"],
                                                  base["diverged_fraction"], d["test_acc_mean"])
                       if (a0 < GOOD_ACC or dv0 > 0) and a >= GOOD_ACC and r > (base_good or 0)]
            good = d["largest_good_rate"]
            holds = bool(rescued) and good is not None and (base_good is None or good > base_good)
            d["rates_rescued"] = rescued
            claims.append(Claim(
                claim=f"{arch.upper()} with {norm} norm trains well at learning rates where the "
                      "plain net diverges or stalls (notes: 'we can use larger learning rates').",
                criterion=f"some rate above the plain net's largest good rate gives seed-mean "
                          f"test accuracy ≥ {GOOD_ACC} with {norm} norm while the plain net "
                          "is below it or diverges there",
                measured=f"largest good rate: {good} ({norm}) vs {base_good} (none); "
                         f"rescued rates: {rescued or 'none'}",
                holds=holds))
    fig.suptitle("Test accuracy and training loss vs SGD learning rate, per normalization "
                 f"(mean ± std over {len(ctx.seeds)} seeds)")
    fname = save(fig, ctx.out, NAME, dpi=ctx.dpi)
    for arch in archs:
        accs = np.stack([numbers[arch][nm]["test_acc_mean"] for nm in cfg["arch_norms"][arch]])
        numbers[arch]["rates_where_all_fail"] = [r for r, a in zip(rates, accs.max(0))
                                                 if a < GOOD_ACC]
    table = md_table(["arch", "norm"] + [f"lr={r:g}" for r in rates] + ["largest good rate"],
                     rows)
    method = (f"Plain SGD (no momentum, constant rate, batch {cfg['batch_size']}, "
              f"{cfg['epochs']} epochs) at {len(rates)} rates from {rates[0]:g} to "
              f"{rates[-1]:g}; cells are the seed-mean test accuracy in eval mode (running "
              "statistics for batch norm), † marks rates where at least one seed diverged "
              f"(non-finite loss or final loss > {DIVERGED_LOSS:.2f}, twice the chance loss). "
              f"A rate is *good* when the mean test accuracy is ≥ {GOOD_ACC}. Instance norm is "
              "only defined with spatial axes, so the MLP has no instance-norm row. All rates "
              "and seeds of one model train in one vmapped, jit-compiled loop. Rates at which no "
              "variant of an architecture reaches the threshold: "
              + "; ".join(f"{arch.upper()} {numbers[arch]['rates_where_all_fail']}"
                          for arch in archs) + ".")
    return ExperimentResult(NAME, TITLE, method, fname, table, claims, numbers,
                            time.perf_counter() - t0)
