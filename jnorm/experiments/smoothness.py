r"""Experiment 5: batch norm makes the optimization landscape smoother
(Santurkar et al. 2018, arXiv:1805.11604, §3.1, Fig. 4).

Along the training trajectory of a CNN with and without batch norm (same SGD rate), at each
checkpoint ``θ`` with gradient ``g = ∇L(θ)`` on a fixed training batch, we step along the
gradient with several step sizes ``η`` and record

* *loss landscape*: the spread ``max_η L(θ − ηg) − min_η L(θ − ηg)``;
* *gradient predictiveness*: ``max_η ‖∇L(θ − ηg) − g‖₂``;
* *effective β-smoothness*: ``max_η ‖∇L(θ − ηg) − g‖₂ / ‖ηg‖₂``.

Batch-norm statistics are those of the probe batch (training mode), as in the paper.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .common import Claim, Context, ExperimentResult, fmt, md_table, mean_std
from .models import make_model
from .plotting import NORM_COLORS, save, styled, subplots
from .training import loss_fn, train

NAME = "smoothness"
TITLE = "Smoother optimization landscape with batch norm"

LR = 0.1
STEP_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)  # η = multiplier × LR
PROBE_BATCH = 128
METRICS = ("loss_range", "grad_change", "beta")


def make_probe(model: nn.Module, x: jax.Array, y: jax.Array, etas: jax.Array) -> Callable:
    """jit(vmap over runs) of the three §3.1 measurements at the current parameters."""

    def grad_at(params: dict, batch_stats: dict) -> tuple[jax.Array, dict]:
        (loss, _), g = jax.value_and_grad(
            lambda p: loss_fn(model, p, batch_stats, x, y), has_aux=True)(params)
        return loss, g

    def probe(params: dict, batch_stats: dict) -> dict[str, jax.Array]:
        loss0, g = grad_at(params, batch_stats)
        gnorm = jnp.sqrt(sum(jnp.sum(t * t) for t in jax.tree_util.tree_leaves(g)))

        def at(eta: jax.Array) -> tuple[jax.Array, jax.Array]:
            moved = jax.tree_util.tree_map(lambda p, d: p - eta * d, params, g)
            loss, g2 = grad_at(moved, batch_stats)
            diff = jnp.sqrt(sum(jnp.sum((a - b) ** 2) for a, b in
                                zip(jax.tree_util.tree_leaves(g2), jax.tree_util.tree_leaves(g))))
            return loss, diff

        losses, diffs = jax.vmap(at)(etas)
        all_losses = jnp.concatenate([loss0[None], losses])
        return {"loss": loss0, "grad_norm": gnorm,
                "loss_range": jnp.max(all_losses) - jnp.min(all_losses),
                "loss_min": jnp.min(all_losses), "loss_max": jnp.max(all_losses),
                "grad_change": jnp.max(diffs), "grad_change_min": jnp.min(diffs),
                "beta": jnp.max(diffs / (etas * gnorm))}

    return jax.jit(jax.vmap(probe))


@styled
def run(ctx: Context) -> ExperimentResult:
    """Runs experiment 5."""
    t0 = time.perf_counter()
    epochs = ctx.pick(2, 4, 15)
    etas = jnp.asarray([m * LR for m in STEP_MULTIPLIERS], jnp.float32)
    x = jnp.asarray(ctx.data.x_train[:PROBE_BATCH])
    y = jnp.asarray(ctx.data.y_train[:PROBE_BATCH])
    traces: dict[str, dict[str, np.ndarray]] = {}
    results = {}
    for norm in ("none", "batch"):
        model = make_model("cnn", norm)
        probe = make_probe(model, x, y, etas)
        rec: list[dict] = []

        def record(epoch: int, variables: dict, rec: list = rec,
                   probe: Callable = probe) -> None:
            rec.append(jax.tree_util.tree_map(
                np.asarray, probe(variables["params"], variables["batch_stats"])))

        results[norm] = train(model, ctx.data, lrs=(LR,), seeds=ctx.seeds, epochs=epochs,
                              batch_size=64, momentum=0.0, desc=f"{NAME}: cnn/{norm}",
                              callback=record, progress=ctx.progress)
        traces[norm] = {k: np.stack([r[k] for r in rec], 1) for k in rec[0]}  # (seeds, ckpts)

    steps = results["none"].steps_per_epoch
    xs = np.arange(epochs + 1) * steps
    fig, ax = subplots(1, 3, figsize=(15, 4))
    titles = {"loss_range": "loss landscape: L(θ − ηg) over η (band = min…max)",
              "grad_change": "gradient predictiveness: ‖∇L(θ − ηg) − ∇L(θ)‖ (band)",
              "beta": "effective β-smoothness: max ‖Δ∇L‖ / ‖ηg‖"}
    for norm, lab in (("none", "no norm"), ("batch", "batch norm")):
        tr, c = traces[norm], NORM_COLORS[norm]
        lo, hi = tr["loss_min"].mean(0), tr["loss_max"].mean(0)
        ax[0].fill_between(xs, lo, hi, color=c, alpha=0.3, label=lab)
        ax[0].plot(xs, tr["loss"].mean(0), color=c, lw=1)
        ax[1].fill_between(xs, tr["grad_change_min"].mean(0), tr["grad_change"].mean(0),
                           color=c, alpha=0.3, label=lab)
        ax[2].plot(xs, tr["beta"].mean(0), color=c, marker=".", label=lab)
    for j, k in enumerate(("loss_range", "grad_change", "beta")):
        ax[j].set_title(titles[k])
        ax[j].set_xlabel("SGD step")
        ax[j].set_yscale("log")
        ax[j].legend()
    ax[0].set_ylabel("loss")
    ax[1].set_ylabel("ℓ2 change of the gradient")
    fig.suptitle(f"CNN on digits, SGD η = {LR}; probes at η ∈ "
                 f"{[round(float(e), 3) for e in etas]} on {PROBE_BATCH} training digits "
                 f"(mean over {len(ctx.seeds)} seeds)")
    fname = save(fig, ctx.out, NAME, dpi=ctx.dpi)

    # Summaries: median over checkpoints after the first (the paper's plots span training).
    summary: dict = {}
    rows = []
    for norm in ("none", "batch"):
        summary[norm] = {}
        for k in METRICS + ("grad_norm",):
            per_seed = np.median(traces[norm][k][:, 1:], axis=1)
            summary[norm][k] = {"median_per_seed": per_seed,
                                "mean": float(per_seed.mean()), "std": float(per_seed.std())}
        rel = np.median(traces[norm]["grad_change"][:, 1:] / traces[norm]["grad_norm"][:, 1:], 1)
        summary[norm]["relative_grad_change"] = {"median_per_seed": rel,
                                                 "mean": float(rel.mean())}
        acc_m, acc_s = mean_std(results[norm].test_acc, 0)
        rows.append(["none" if norm == "none" else "batch norm"]
                    + [fmt(summary[norm][k]["mean"], summary[norm][k]["std"], 3)
                       for k in METRICS + ("grad_norm",)]
                    + [f"{summary[norm]['relative_grad_change']['mean']:.3f}", fmt(acc_m, acc_s)])
    table = md_table(["model", "loss range", "gradient ℓ2 change", "β-smoothness",
                      "‖∇L‖", "‖Δ∇L‖/‖∇L‖", "test acc"], rows)
    names = {"loss_range": "the loss varies less along the gradient (loss landscape)",
             "grad_change": "the gradient changes less along the gradient (gradient "
                            "predictiveness, ℓ2)",
             "beta": "the effective β-smoothness is smaller"}
    claims = []
    for k in METRICS:
        a, b = summary["batch"][k]["mean"], summary["none"][k]["mean"]
        claims.append(Claim(
            f"With batch norm {names[k]} (Santurkar et al. 2018 §3.1; notes: BN 'smoothes the "
            "optimization function, making the gradient more predictable').",
            "median over the trajectory (seed mean) smaller with batch norm than without",
            f"{a:.3g} (batch norm) vs {b:.3g} (none)", a < b))
    numbers = {"lr": LR, "etas": np.asarray(etas), "epochs": epochs, "steps_per_epoch": steps,
               "probe_batch": PROBE_BATCH, "checkpoint_steps": xs, "summary": summary,
               "traces": traces,
               "test_acc": {n: results[n].test_acc for n in results}}
    method = (f"The CNN (conv 8 → conv 16, stride 2) is trained with and without batch norm by "
              f"plain SGD (η = {LR}, batch 64, {epochs} epochs). Before training and after each "
              f"epoch, on a fixed batch of {PROBE_BATCH} training digits, the gradient g is "
              f"computed and the loss and gradient are re-evaluated at θ − ηg for η = "
              f"{[round(float(e), 3) for e in etas]} (the training rate × "
              f"{list(STEP_MULTIPLIERS)}). Table: median over the checkpoints after "
              "initialisation, mean ± std over seeds. ‖Δ∇L‖/‖∇L‖ is given because the two "
              "nets' gradients differ in size; the paper's claim is about the absolute "
              "quantities.")
    return ExperimentResult(NAME, TITLE, method, fname, table, claims, numbers,
                            time.perf_counter() - t0)
