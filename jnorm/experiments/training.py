"""The one training loop every experiment shares.

A *run* is one (learning rate, init scale, seed) triple. All runs of one call are trained in
lock-step with ``jax.vmap``; one epoch of all runs is a single ``jax.jit``-compiled
``lax.scan`` over the SGD steps. The learning rate and init scale are array arguments (via
``optax.inject_hyperparams``), so one compilation serves a whole sweep, and compiled epochs are
cached across calls by (model, optimizer) — and by shapes, through ``jax.jit``. The data
order is drawn outside the compiled code, from NumPy generators seeded by the run's seed.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from .data import Dataset
from .models import scale_kernels

__all__ = ["TrainResult", "cross_entropy", "diverged_loss", "evaluate", "loss_fn", "train"]


def diverged_loss(num_classes: int) -> float:
    """A run whose final training loss is above this (twice the loss of uniform guessing over
    ``num_classes`` classes) or not finite is counted as diverged."""
    return 2 * math.log(num_classes)

Variables = dict[str, Any]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy with integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def loss_fn(model: nn.Module, params: Any, batch_stats: Any, x: jax.Array, y: jax.Array,
            *, train: bool = True, rng: jax.Array | None = None
            ) -> tuple[jax.Array, tuple[Any, jax.Array]]:
    """Mean cross-entropy of ``model`` on ``(x, y)``; returns ``(loss, (new_batch_stats, acc))``.

    In training mode batch norm uses batch statistics and the running averages are updated.
    """
    variables = {"params": params, "batch_stats": batch_stats}
    rngs = {"dropout": rng} if rng is not None else {}
    if train:
        logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                      rngs=rngs)
        batch_stats = updates.get("batch_stats", batch_stats)
    else:
        logits = model.apply(variables, x, train=False)
    loss = cross_entropy(logits, y).mean()
    acc = jnp.mean(jnp.argmax(logits, -1) == y)
    return loss, (batch_stats, acc)


@dataclasses.dataclass
class TrainResult:
    """Everything one :func:`train` call measured, with a leading run axis ``R = L·S·K``.

    Use :meth:`grid` to view a per-run array as ``(len(lrs), len(init_scales), len(seeds), ...)``.
    """

    lrs: tuple[float, ...]
    init_scales: tuple[float, ...]
    seeds: tuple[int, ...]
    step_loss: np.ndarray  # shape=(R, epochs * steps_per_epoch)
    epoch_loss: np.ndarray  # shape=(R, epochs)
    train_loss: np.ndarray  # shape=(R,), eval mode, whole training split
    train_acc: np.ndarray  # shape=(R,)
    test_loss: np.ndarray  # shape=(R,)
    test_acc: np.ndarray  # shape=(R,)
    diverged: np.ndarray  # shape=(R,), bool
    variables: Variables  # leaves with leading axis R
    steps_per_epoch: int
    seconds: float

    def grid(self, name: str) -> np.ndarray:
        """Field ``name`` reshaped to ``(L, S, K, ...)``."""
        a = np.asarray(getattr(self, name))
        return a.reshape((len(self.lrs), len(self.init_scales), len(self.seeds)) + a.shape[1:])

    def run_variables(self, r: int) -> Variables:
        """The final variables of run ``r`` (no run axis)."""
        return jax.tree_util.tree_map(lambda v: v[r], self.variables)


_CACHE: dict[Any, Callable] = {}


def _optimizer(momentum: float) -> optax.GradientTransformation:
    return optax.inject_hyperparams(optax.sgd)(learning_rate=0.0, momentum=momentum or None)


def _compiled(kind: str, model: nn.Module, *static: Any) -> Callable:
    """jit(vmap(...)) functions, cached by (kind, model, static sizes)."""
    key = (kind, repr(model), static)
    if key in _CACHE:
        return _CACHE[key]
    if kind == "init":
        (momentum, image_shape) = static
        opt = _optimizer(momentum)

        def init(seed: jax.Array, lr: jax.Array, scale: jax.Array) -> tuple:
            k_init, k_run = jax.random.split(jax.random.key(seed, impl="rbg"))
            variables = model.init(k_init, jnp.zeros((2, *image_shape), jnp.float32))
            params = scale_kernels(variables["params"], scale)
            opt_state = opt.init(params)
            opt_state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
            return params, variables.get("batch_stats", {}), opt_state, k_run

        fn = jax.jit(jax.vmap(init))
    elif kind == "epoch":
        (momentum,) = static
        opt = _optimizer(momentum)

        def epoch(state: tuple, batches: jax.Array, x: jax.Array, y: jax.Array,
                  grad_mask: dict[str, jax.Array]) -> tuple[tuple, jax.Array]:
            params, batch_stats, opt_state, key = state
            key, k_steps = jax.random.split(key)

            def step(carry: tuple, inputs: tuple) -> tuple[tuple, jax.Array]:
                params, batch_stats, opt_state = carry
                idx, k = inputs
                (loss, (batch_stats, _)), grads = jax.value_and_grad(
                    lambda p: loss_fn(model, p, batch_stats, x[idx], y[idx], rng=k),
                    has_aux=True)(params)
                grads = {name: jax.tree_util.tree_map(lambda t, m=grad_mask[name]: t * m, g)
                         for name, g in grads.items()}
                updates, opt_state = opt.update(grads, opt_state, params)
                params = optax.apply_updates(params, updates)
                return (params, batch_stats, opt_state), loss

            (params, batch_stats, opt_state), losses = jax.lax.scan(
                step, (params, batch_stats, opt_state),
                (batches, jax.random.split(k_steps, batches.shape[0])))
            return (params, batch_stats, opt_state, key), losses

        fn = jax.jit(jax.vmap(epoch, in_axes=(0, 0, None, None, None)))
    elif kind == "eval":

        def ev(params: dict, batch_stats: dict, x: jax.Array, y: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
            loss, (_, acc) = loss_fn(model, params, batch_stats, x, y, train=False)
            return loss, acc

        fn = jax.jit(jax.vmap(ev, in_axes=(0, 0, None, None)))
    elif kind == "eval2":  # train and test splits in one compiled call

        def ev2(params: dict, batch_stats: dict, x1: jax.Array, y1: jax.Array, x2: jax.Array,
                y2: jax.Array) -> tuple[jax.Array, ...]:
            l1, (_, a1) = loss_fn(model, params, batch_stats, x1, y1, train=False)
            l2, (_, a2) = loss_fn(model, params, batch_stats, x2, y2, train=False)
            return l1, a1, l2, a2

        fn = jax.jit(jax.vmap(ev2, in_axes=(0, 0, None, None, None, None)))
    else:  # pragma: no cover
        raise ValueError(kind)
    _CACHE[key] = fn
    return fn


def evaluate(model: nn.Module, variables: Variables, x: np.ndarray, y: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode (running statistics) loss and accuracy of stacked ``variables`` (run axis 0)."""
    fn = _compiled("eval", model)
    loss, acc = fn(variables["params"], variables.get("batch_stats", {}), jnp.asarray(x),
                   jnp.asarray(y))
    return np.asarray(loss), np.asarray(acc)


def train(model: nn.Module, data: Dataset, *, lrs: Sequence[float] = (0.05,),
          seeds: Sequence[int] = (0,), init_scales: Sequence[float] = (1.0,), epochs: int = 10,
          batch_size: int = 64, momentum: float = 0.9, desc: str = "train",
          callback: Callable[[int, Variables], None] | None = None,
          freeze: Sequence[str] = (), progress: bool = True) -> TrainResult:
    """Trains ``model`` with SGD (optax, heavy-ball ``momentum``; 0 for plain SGD) for every
    (lr, init scale, seed) combination at once and evaluates each in eval mode.

    Args:
      model: a flax module called as ``model.apply(v, x, train=bool)``; normalization layers may
        keep a ``batch_stats`` collection.
      data: the dataset; the whole training split is visited once per epoch in random order
        (a different order per run), dropping the last incomplete batch.
      lrs, seeds, init_scales: the sweep; runs are ordered as ``itertools.product(lrs,
        init_scales, seeds)``. ``init_scales`` multiplies every weight kernel after init.
      epochs, batch_size, momentum: the schedule; constant learning rate.
      desc: label of the progress bar.
      callback: called as ``callback(epoch, variables)`` with the stacked variables before the
        first epoch (``epoch=0``) and after each epoch.
      freeze: names of top-level parameter collections (e.g. ``"Dense_0"``) whose gradients
        are zeroed, so they keep their initial values (a runtime mask: no recompilation).
      progress: show a tqdm progress bar over epochs.

    Returns:
      A :class:`TrainResult`.
    """
    n = len(data.x_train)
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} exceeds the {n} training examples")
    steps = n // batch_size
    grid = list(itertools.product(lrs, init_scales, seeds))
    lr_a = jnp.asarray([g[0] for g in grid], jnp.float32)
    sc_a = jnp.asarray([g[1] for g in grid], jnp.float32)
    sd_a = jnp.asarray([g[2] for g in grid], jnp.uint32)
    t0 = time.perf_counter()
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    state = _compiled("init", model, momentum, data.image_shape)(sd_a, lr_a, sc_a)
    unknown = set(freeze) - set(state[0])
    if unknown:
        raise ValueError(f"freeze={sorted(unknown)} are not top-level parameters of the model; "
                         f"choose from {sorted(state[0])}")
    # data order: one NumPy generator per run, seeded by the run's seed (so runs that differ
    # only in learning rate or init scale see the same batches)
    orders = [np.random.default_rng(int(g[2])) for g in grid]
    grad_mask = {k: jnp.asarray(0.0 if k in freeze else 1.0, jnp.float32) for k in state[0]}
    epoch_fn = _compiled("epoch", model, momentum)  # jit re-specialises per batch shape
    losses = []

    def variables_of(s: tuple) -> Variables:
        return {"params": s[0], "batch_stats": s[1]}

    if callback is not None:
        callback(0, variables_of(state))
    for e in tqdm(range(epochs), desc=desc, leave=False, disable=not progress):
        batches = np.stack([r.permutation(n)[: steps * batch_size].reshape(steps, batch_size)
                            for r in orders]).astype(np.int32)
        state, loss = epoch_fn(state, batches, x, y, grad_mask)
        losses.append(np.asarray(loss))
        if callback is not None:
            callback(e + 1, variables_of(state))
    step_loss = np.concatenate(losses, axis=1) if losses else np.zeros((len(grid), 0))
    variables = variables_of(state)
    train_loss, train_acc, test_loss, test_acc = (np.asarray(a) for a in _compiled(
        "eval2", model)(variables["params"], variables["batch_stats"], x, y,
                        jnp.asarray(data.x_test), jnp.asarray(data.y_test)))
    epoch_loss = step_loss.reshape(len(grid), epochs, steps).mean(-1)
    final = epoch_loss[:, -1] if epochs else np.full(len(grid), np.nan)
    diverged = ~np.isfinite(step_loss).all(axis=1) | ~(final <= diverged_loss(data.num_classes))
    return TrainResult(tuple(float(v) for v in lrs), tuple(float(v) for v in init_scales),
                       tuple(int(s) for s in seeds), step_loss, epoch_loss, train_loss,
                       train_acc, test_loss, test_acc, diverged, variables, steps,
                       time.perf_counter() - t0)
