"""Beyond batch norm on digits: whitening vs standardisation, batch renorm vs batch norm.

Two small experiments on scikit-learn's bundled 8x8 digits (no download), with an MLP
``64 -> 64 -> norm -> relu -> 64 -> norm -> relu -> 10`` trained with Adam:

1. **Whitening vs standardisation** (batch 64): batch norm standardises each feature,
   decorrelated batch norm (ZCA, Huang et al. 2018) and IterNorm (Huang et al. 2019) whiten
   groups of 16 features jointly.
2. **Batch renorm vs batch norm at small batches** (batch 4 and 32): with few examples per
   batch, batch norm's training statistics are noisy and differ from the running averages used
   at test time; batch renorm (Ioffe 2017) corrects towards the running averages.

Prints a table of test accuracy (eval mode, running statistics) and final training loss, mean
and spread over seeds, and saves ``beyond_batch_norm.png`` to ``--out``. About a minute on two
CPU cores at the default size::

    python -m jnorm.experiments.beyond_batch_norm --out /tmp/bbn

Small models and one small data set: read the numbers as a demonstration of the methods, not as
a benchmark.
"""

from __future__ import annotations

import argparse
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jnorm
import jnorm.linen as jnn

NORMS = ("batch_norm", "decorrelated_bn", "iter_norm", "batch_renorm")


def load_digits(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits as float32 vectors (64 pixels), standardised with training statistics."""
    from sklearn.datasets import load_digits as _load

    d = _load()
    x, y = d.data.astype(np.float32), d.target.astype(np.int32)
    perm = np.random.default_rng(seed).permutation(len(x))
    x, y = x[perm], y[perm]
    n_train = 1500
    mu, sd = x[:n_train].mean(), x[:n_train].std()
    x = (x - mu) / sd
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


class MLP(nn.Module):
    """Two hidden layers, each ``Dense -> norm -> relu``."""

    norm: str
    width: int = 64
    group_size: int = 16

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, r_max: Any = 3.0, d_max: Any = 5.0):
        for _ in range(2):
            x = nn.Dense(self.width, use_bias=False)(x)
            ura = not train
            if self.norm == "batch_norm":
                x = jnn.BatchNorm(use_running_average=ura, momentum=0.9)(x)
            elif self.norm == "decorrelated_bn":
                x = jnn.DecorrelatedBatchNorm(
                    use_running_average=ura, group_size=self.group_size, momentum=0.9
                )(x)
            elif self.norm == "iter_norm":
                x = jnn.IterNorm(
                    use_running_average=ura, group_size=self.group_size, momentum=0.9
                )(x)
            elif self.norm == "batch_renorm":
                x = jnn.BatchRenorm(use_running_average=ura, momentum=0.9)(
                    x, r_max=r_max, d_max=d_max
                )
            else:
                raise ValueError(f"unknown norm {self.norm!r}; pick one of {NORMS}.")
            x = nn.relu(x)
        return nn.Dense(10)(x)


def train(
    norm: str, data: tuple, *, batch_size: int, epochs: int, seed: int, width: int,
    group_size: int,
) -> dict[str, float]:
    """Trains one model; returns test accuracy (eval mode) and the last epoch's train loss."""
    x_tr, y_tr, x_te, y_te = data
    model = MLP(norm, width=width, group_size=group_size)
    v = model.init(jax.random.key(seed), jnp.asarray(x_tr[:batch_size]), train=False)
    params, stats = v["params"], v["batch_stats"]
    opt = optax.adam(1e-3)
    opt_state = opt.init(params)
    steps_per_epoch = len(x_tr) // batch_size
    total = steps_per_epoch * epochs
    # the paper's r_max/d_max warm-up, scaled to this run: BN for 10%, relaxed by 50% / 35%
    warm, r_end, d_end = max(total // 10, 1), max(total // 2, 2), max(int(total * 0.35), 2)

    @jax.jit
    def step(params: Any, stats: Any, opt_state: Any, xb: jax.Array, yb: jax.Array,
             t: Any) -> tuple:
        r_max, d_max = jnorm.batch_renorm_schedule(
            t, warmup_steps=warm, r_max_steps=r_end, d_max_steps=d_end
        )

        def loss_fn(p: Any) -> tuple:
            logits, upd = model.apply(
                {"params": p, "batch_stats": stats}, xb, train=True, r_max=r_max, d_max=d_max,
                mutable=["batch_stats"],
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
            return loss, upd["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    rng = np.random.default_rng(seed)
    t = 0
    last = []
    for _ in range(epochs):
        perm = rng.permutation(len(x_tr))
        last = []
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            params, stats, opt_state, loss = step(
                params, stats, opt_state, jnp.asarray(x_tr[idx]), jnp.asarray(y_tr[idx]), t
            )
            last.append(loss)
            t += 1
    logits = model.apply({"params": params, "batch_stats": stats}, jnp.asarray(x_te),
                         train=False)
    acc = float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(y_te)))
    return {"test_acc": acc, "train_loss": float(jnp.mean(jnp.stack(last)))}


def run(
    *, epochs: int, seeds: int, width: int, group_size: int, small_batches: Sequence[int],
    whitening_batch: int, subset: int | None = None,
) -> list[dict[str, Any]]:
    """Both experiments; one row per (experiment, norm, batch size)."""
    data = load_digits()
    if subset is not None:
        data = (data[0][:subset], data[1][:subset], data[2], data[3])
    plan = [("whitening vs standardisation", n, whitening_batch)
            for n in ("batch_norm", "decorrelated_bn", "iter_norm")]
    plan += [("renorm at small batches", n, b) for b in small_batches
             for n in ("batch_norm", "batch_renorm")]
    rows = []
    for exp, norm, b in plan:
        start = time.perf_counter()
        res = [train(norm, data, batch_size=b, epochs=epochs, seed=s, width=width,
                     group_size=group_size) for s in range(seeds)]
        accs = np.array([r["test_acc"] for r in res])
        losses = np.array([r["train_loss"] for r in res])
        rows.append({"experiment": exp, "norm": norm, "batch": b,
                     "acc_mean": float(accs.mean()), "acc_std": float(accs.std()),
                     "loss_mean": float(losses.mean()),
                     "seconds": time.perf_counter() - start})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of the results."""
    lines = ["| experiment | norm | batch | test acc (mean ± std) | train loss | time (s) |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['experiment']} | {r['norm']} | {r['batch']} | "
            f"{100 * r['acc_mean']:.1f} ± {100 * r['acc_std']:.1f} % | {r['loss_mean']:.3f} | "
            f"{r['seconds']:.1f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: pathlib.Path) -> None:
    """Bar chart of test accuracy, one panel per experiment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exps = list(dict.fromkeys(r["experiment"] for r in rows))
    fig, axes = plt.subplots(1, len(exps), figsize=(5 * len(exps), 3.5))
    for ax, exp in zip(np.atleast_1d(axes), exps, strict=True):
        sel = [r for r in rows if r["experiment"] == exp]
        labels = [f"{r['norm']}\nB={r['batch']}" for r in sel]
        ax.bar(range(len(sel)), [100 * r["acc_mean"] for r in sel],
               yerr=[100 * r["acc_std"] for r in sel], color="tab:blue", alpha=0.8)
        ax.set_xticks(range(len(sel)), labels, fontsize=8)
        ax.set_ylabel("test accuracy (%)")
        lo = min(100 * r["acc_mean"] for r in sel)
        ax.set_ylim(max(0.0, lo - 10), 100)
        ax.set_title(exp)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Command line entry point; returns the result rows."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("beyond_batch_norm_out"))
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--tiny", action="store_true", help="a few seconds: for tests")
    args = p.parse_args(argv)
    if args.tiny:
        kw = dict(epochs=1, seeds=1, width=16, group_size=8, small_batches=(4,),
                  whitening_batch=32, subset=128)
    else:
        kw = dict(epochs=args.epochs, seeds=args.seeds, width=64, group_size=16,
                  small_batches=(4, 32), whitening_batch=64)
    rows = run(**kw)
    print(table(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    plot(rows, args.out / "beyond_batch_norm.png")
    (args.out / "beyond_batch_norm.md").write_text(table(rows) + "\n")
    print(f"saved {args.out / 'beyond_batch_norm.png'}")
    return rows


if __name__ == "__main__":
    main()
