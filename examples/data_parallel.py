"""Data-parallel training with synced batch norm: a small ResNet on sklearn's digits.

Every device gets a slice of each global batch; ``jnorm.linen.BatchNorm(axis_name="batch")``
computes the batch statistics over the *global* batch (one all-reduce per layer and step), so
the result is the same as training on one device with the whole batch, and the running
statistics stay identical on every device (checked at the end, shard by shard).

Run on CPU with 8 simulated devices (about a minute)::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/data_parallel.py

The same file runs unchanged on a multi-host TPU/GPU slice: call ``jax.distributed.initialize()``
first (``--distributed``); the mesh then spans every device of every host and each process
feeds only its own slice of the global batch (``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jnorm.linen as jnn

AXIS = "batch"


class Block(nn.Module):
    """conv-BN-relu-conv-BN plus a (projected) skip connection."""

    features: int
    stride: int = 1
    axis_name: str | None = AXIS

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Residual block; ``train`` selects batch (synced) or running statistics."""
        bn = lambda: jnn.BatchNorm(  # noqa: E731
            use_running_average=not train, momentum=0.9, axis_name=self.axis_name
        )
        y = nn.Conv(self.features, (3, 3), self.stride, use_bias=False)(x)
        y = nn.relu(bn()(y))
        y = nn.Conv(self.features, (3, 3), use_bias=False)(y)
        y = bn()(y)
        if x.shape != y.shape:
            x = bn()(nn.Conv(self.features, (1, 1), self.stride, use_bias=False)(x))
        return nn.relu(x + y)


class ResNet(nn.Module):
    """Stem, two residual stages (8x8 then 4x4), global average pool, linear classifier."""

    width: int = 16
    num_classes: int = 10
    axis_name: str | None = AXIS

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Logits for a batch ``(N, 8, 8, 1)``."""
        x = nn.Conv(self.width, (3, 3), use_bias=False)(x)
        x = nn.relu(jnn.BatchNorm(use_running_average=not train, momentum=0.9,
                                  axis_name=self.axis_name)(x))
        x = Block(self.width, axis_name=self.axis_name)(x, train)
        x = Block(2 * self.width, stride=2, axis_name=self.axis_name)(x, train)
        return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


def load_digits(seed: int = 0) -> tuple[np.ndarray, ...]:
    """sklearn's 8x8 digits as ``(N, 8, 8, 1)`` float32 in [0, 1]; 80/20 train/test split."""
    from sklearn.datasets import load_digits as _load

    data = _load()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    y = data.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    split = int(0.8 * len(x))
    return x[:split], y[:split], x[split:], y[split:]


def make_train_step(
    model: ResNet, tx: optax.GradientTransformation, mesh: Mesh, global_batch: int
) -> Callable[..., Any]:
    """One synced SGD step: ``(params, batch_stats, opt_state, x, y) -> (..., loss)``.

    Inside ``shard_map`` each device sees its slice of ``x``/``y``; BatchNorm's ``axis_name``
    syncs the statistics. The loss is the device's share of the global mean; with shard_map's
    replication checking (``check_vma``, the default) the gradient of the replicated params is
    summed over devices automatically, i.e. it is the gradient of the global mean loss.
    """

    def local_step(params, batch_stats, opt_state, x, y):  # noqa: ANN001
        def loss_fn(params):  # noqa: ANN001
            logits, updates = model.apply(
                {"params": params, "batch_stats": batch_stats}, x, train=True,
                mutable=["batch_stats"],
            )
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            return jnp.sum(ce) / global_batch, updates["batch_stats"]

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, new_stats, opt_state, jax.lax.psum(loss, AXIS)

    replicated, rows = P(), P(AXIS)
    return jax.jit(
        jax.shard_map(
            local_step, mesh=mesh,
            in_specs=(replicated, replicated, replicated, rows, rows),
            out_specs=(replicated, replicated, replicated, replicated),
        ),
        donate_argnums=(0, 1, 2),
    )


def global_batch_array(mesh: Mesh, local: np.ndarray) -> jax.Array:
    """This process's rows of the global batch -> one global array sharded over the mesh."""
    return jax.make_array_from_process_local_data(NamedSharding(mesh, P(AXIS)), local)


def running_stats_identical(batch_stats: Any) -> bool:
    """True if every device holds bitwise the same running statistics (checks each shard)."""
    for leaf in jax.tree.leaves(batch_stats):
        shards = [np.asarray(s.data) for s in leaf.addressable_shards]
        if len(shards) != len(leaf.sharding.addressable_devices):
            return False
        if not all(np.array_equal(shards[0], s) for s in shards[1:]):
            return False
    return True


def main(
    steps: int = 300,
    batch_per_device: int = 16,
    width: int = 16,
    lr: float = 0.05,
    seed: int = 0,
    verbose: bool = True,
) -> dict[str, Any]:
    """Trains, evaluates with the running statistics, and returns a summary dict."""
    devices = jax.devices()  # every device of every process (= the local ones on one host)
    mesh = Mesh(np.array(devices), (AXIS,))
    n_proc, proc = jax.process_count(), jax.process_index()
    global_batch = batch_per_device * len(devices)
    local_batch = global_batch // n_proc
    log = print if verbose and proc == 0 else (lambda *a, **k: None)
    log(f"{len(devices)} {devices[0].platform} devices, {n_proc} process(es); "
        f"global batch {global_batch} ({batch_per_device} per device)")

    x_train, y_train, x_test, y_test = load_digits(seed)
    model = ResNet(width=width)
    variables = model.init(jax.random.key(seed), jnp.asarray(x_train[:2]), train=False)
    tx = optax.sgd(lr, momentum=0.9)
    replicated = NamedSharding(mesh, P())
    params, batch_stats = jax.device_put(
        (variables["params"], variables["batch_stats"]), replicated
    )
    opt_state = jax.device_put(tx.init(params), replicated)
    step = make_train_step(model, tx, mesh, global_batch)

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    losses = []
    for i in range(steps):
        idx = rng.choice(len(x_train), global_batch, replace=False)  # same on every process
        mine = idx[proc * local_batch:(proc + 1) * local_batch]
        params, batch_stats, opt_state, loss = step(
            params, batch_stats, opt_state,
            global_batch_array(mesh, x_train[mine]), global_batch_array(mesh, y_train[mine]),
        )
        if i % 50 == 0 or i == steps - 1:
            losses.append(float(loss))
            log(f"step {i:4d}  loss {losses[-1]:.4f}")
    train_time = time.perf_counter() - t0

    # Eval uses the running statistics: no collective, any batch size.
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(
        {"params": params, "batch_stats": batch_stats}, jnp.asarray(x_test)
    )
    accuracy = float(np.mean(np.asarray(jnp.argmax(logits, -1)) == y_test))
    identical = running_stats_identical(batch_stats)
    log(f"test accuracy {accuracy:.4f}   train time {train_time:.1f}s")
    log(f"running statistics identical on all {len(devices)} devices: {identical}")
    return dict(accuracy=accuracy, losses=losses, stats_identical=identical,
                params=params, batch_stats=batch_stats, devices=len(devices))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-per-device", type=int, default=16)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--distributed", action="store_true",
                        help="call jax.distributed.initialize() first (multi-host slices)")
    args = parser.parse_args()
    if args.distributed:
        jax.distributed.initialize()
    out = main(args.steps, args.batch_per_device, args.width, args.lr, args.seed)
    if not out["stats_identical"]:
        raise SystemExit("running statistics differ between devices")
