r"""Experiment 5: batch norm makes the optimization landscape smoother
(Santurkar et al. 2018, arXiv:1805.11604, §3.1, Fig. 4) — at several depths.

Along the training trajectory of MLPs of 2 to 16 hidden layers (no residuals) with and without
batch norm (same SGD rate), at each
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
import optax

from .common import Claim, Context, ExperimentResult, compare, fmt_seeds, md_table, seed_count
from .models import DEPTH_WIDTH, deep_mlp
from .plotting import NORM_COLORS, save, styled, subplots
from .training import loss_fn, train

NAME = "smoothness"
TITLE = "Smoother optimization landscape with batch norm (by depth)"

LR = 0.1
STEP_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)  # η = multiplier × LR
PROBE_BATCH = 128
METRICS = ("loss_range", "grad_change", "beta")
#: batch norm's value must be smaller by more than max(this, 2 SE) in log units (a factor 1.25).
LOG_FLOOR = float(np.log(1.25))
SOURCE = ("Santurkar et al. 2018, §3.1 and Fig. 4 (arXiv:1805.11604): batch norm makes the loss "
          "and its gradient change less along the gradient.")


def make_probe(model: nn.Module, x: jax.Array, y: jax.Array, etas: jax.Array) -> Callable:
    """jit(vmap over runs) of the three §3.1 measurements at the current parameters."""

    def grad_at(params: dict, batch_stats: dict) -> tuple[jax.Array, dict]:
        (loss, _), g = jax.value_and_grad(
            lambda p: loss_fn(model, p, batch_stats, x, y), has_aux=True)(params)
        return loss, g

    def probe(params: dict, batch_stats: dict) -> dict[str, jax.Array]:
        loss0, g = grad_at(params, batch_stats)
        gnorm = optax.tree.norm(g)

        def at(eta: jax.Array) -> tuple[jax.Array, jax.Array]:
            moved = jax.tree_util.tree_map(lambda p, d: p - eta * d, params, g)
            loss, g2 = grad_at(moved, batch_stats)
            diff = optax.tree.norm(jax.tree.map(jnp.subtract, g2, g))
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
    k = ctx.data.num_classes
    epochs = ctx.pick(2, 3, 8)
    depths = ctx.pick((2,), (2, 12), (2, 8, 16))
    etas = jnp.asarray([m * LR for m in STEP_MULTIPLIERS], jnp.float32)
    x = jnp.asarray(ctx.data.x_train[:PROBE_BATCH])
    y = jnp.asarray(ctx.data.y_train[:PROBE_BATCH])
    traces: dict = {}
    test_acc: dict = {}
    steps = 0
    for depth in depths:
        for norm in ("none", "batch"):
            model = deep_mlp(norm, depth, num_classes=k)
            probe = make_probe(model, x, y, etas)
            rec: list[dict] = []

            def record(epoch: int, variables: dict, rec: list = rec,
                       probe: Callable = probe) -> None:
                rec.append(jax.tree_util.tree_map(
                    np.asarray, probe(variables["params"], variables["batch_stats"])))

            res = train(model, ctx.data, lrs=(LR,), seeds=ctx.seeds, epochs=epochs,
                        batch_size=64, momentum=0.0, desc=f"{NAME}: depth {depth}/{norm}",
                        callback=record, progress=ctx.progress)
            steps = res.steps_per_epoch
            traces[depth, norm] = {kk: np.stack([r[kk] for r in rec], 1) for kk in rec[0]}
            test_acc[depth, norm] = res.test_acc

    xs = np.arange(epochs + 1) * steps
    fig, ax = subplots(3, len(depths), figsize=(4.6 * len(depths), 8.5), squeeze=False,
                       layout="constrained")
    ylabels = {"loss_range": "loss L(θ − ηg), band min…max over η",
               "grad_change": "‖∇L(θ − ηg) − ∇L(θ)‖, band over η",
               "beta": "β-smoothness max ‖Δ∇L‖ / ‖ηg‖"}
    for j, depth in enumerate(depths):
        for norm, lab in (("none", "no norm"), ("batch", "batch norm")):
            tr, c = traces[depth, norm], NORM_COLORS[norm]
            ax[0, j].fill_between(xs, tr["loss_min"].mean(0), tr["loss_max"].mean(0), color=c,
                                  alpha=0.3, label=lab)
            ax[0, j].plot(xs, tr["loss"].mean(0), color=c, lw=1)
            ax[1, j].fill_between(xs, tr["grad_change_min"].mean(0), tr["grad_change"].mean(0),
                                  color=c, alpha=0.3, label=lab)
            ax[2, j].plot(xs, tr["beta"].mean(0), color=c, marker=".", label=lab)
        ax[0, j].set_title(f"MLP, {depth} hidden layers of {DEPTH_WIDTH}")
        for i, m in enumerate(METRICS):
            ax[i, j].set_yscale("log")
            ax[i, j].set_xlabel("SGD step")
            if j == 0:
                ax[i, 0].set_ylabel(ylabels[m])
            ax[i, j].legend(fontsize=7, loc="best")
    fig.suptitle(f"Landscape probes along training, plain SGD η = {LR}\nprobes at η ∈ "
                 f"{[round(float(e), 3) for e in etas]} on {PROBE_BATCH} training images "
                 f"(curves: means over {seed_count(ctx)})")
    fname = save(fig, ctx.out, NAME, dpi=ctx.dpi)

    # Summaries: per seed, the median over the checkpoints after initialisation.
    summary: dict = {}
    rows, claims = [], []
    names = {"loss_range": "the loss varies less along the gradient (loss landscape)",
             "grad_change": "the gradient changes less along the gradient (gradient "
                            "predictiveness)",
             "beta": "the effective β-smoothness is smaller"}
    for depth in depths:
        summary[depth] = {}
        for norm in ("none", "batch"):
            tr = traces[depth, norm]
            summary[depth][norm] = {m: np.median(tr[m][:, 1:], axis=1)
                                    for m in METRICS + ("grad_norm",)}
            summary[depth][norm]["relative_grad_change"] = np.median(
                tr["grad_change"][:, 1:] / tr["grad_norm"][:, 1:], axis=1)
            sm = summary[depth][norm]
            rows.append([depth, "none" if norm == "none" else "batch norm"]
                        + [fmt_seeds(sm[m], 3) for m in METRICS + ("grad_norm",
                                                                   "relative_grad_change")]
                        + [fmt_seeds(test_acc[depth, norm])])
        # both nets must learn: a net stuck at its initialization (vanished gradient) has a
        # trivially flat landscape, which says nothing about the claim
        weaker = min(float(np.mean(test_acc[depth, n])) for n in ("none", "batch"))
        for m in METRICS:
            a, b = summary[depth]["batch"][m], summary[depth]["none"][m]
            c = compare(np.log(b), np.log(a), LOG_FLOOR)
            claims.append(ctx.guard(Claim.from_outcome(
                f"MLP of depth {depth}: with batch norm {names[m]}.",
                "per-seed median over the trajectory smaller with batch norm by more than "
                "max(a factor 1.25, 2 SE) in log units",
                f"{fmt_seeds(a, 3)} (batch norm) vs {fmt_seeds(b, 3)} (none); log {c.describe()}",
                c.beats(), source=SOURCE), weaker, "weaker of the two nets"))
    table = md_table(["depth", "model", "loss range", "gradient ℓ2 change", "β-smoothness",
                      "‖∇L‖", "‖Δ∇L‖/‖∇L‖", "test acc"], rows)
    numbers = {"lr": LR, "etas": np.asarray(etas), "epochs": epochs, "steps_per_epoch": steps,
               "depths": depths, "probe_batch": PROBE_BATCH, "checkpoint_steps": xs,
               "log_floor": LOG_FLOOR,
               "summary": {str(d): v for d, v in summary.items()},
               "traces": {f"depth_{d}/{n}": v for (d, n), v in traces.items()},
               "test_acc": {f"depth_{d}/{n}": v for (d, n), v in test_acc.items()}}
    method = (f"MLPs with {', '.join(map(str, depths))} hidden layers of {DEPTH_WIDTH} units are "
              f"trained with and without batch norm by plain SGD (η = {LR}, batch 64, {epochs} "
              f"epochs). Before training and after each epoch, on a fixed batch of "
              f"{PROBE_BATCH} training images, the gradient g is computed and the loss and "
              f"gradient are re-evaluated at θ − ηg for η = "
              f"{[round(float(e), 3) for e in etas]} (the training rate × "
              f"{list(STEP_MULTIPLIERS)}); batch norm uses the probe batch's statistics. Table: "
              "per seed the median over the checkpoints after initialisation, then mean ± "
              "sample std over seeds. ‖Δ∇L‖/‖∇L‖ is given because the nets' gradients differ in "
              "size (a deep plain net's gradient vanishes, which makes it trivially 'smooth'); "
              "the paper's claim is about the absolute quantities.")
    return ExperimentResult(NAME, TITLE, method, fname, table, claims, numbers,
                            time.perf_counter() - t0)
