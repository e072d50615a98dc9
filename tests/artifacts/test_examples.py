"""examples/: each example runs at a tiny size and does what it says.

data_parallel.py: it runs; its synced step is the 1-device step.

Kept fast (a few seconds): width 4, 2 examples per device, a handful of steps.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

_PATH = pathlib.Path(__file__).resolve().parents[2] / "examples" / "data_parallel.py"
pytestmark = pytest.mark.skipif(jax.device_count() < 2, reason="needs several devices")


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("data_parallel_example", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses (flax modules) look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def test_runs_tiny_and_running_stats_identical(example) -> None:
    out = example.main(steps=3, batch_per_device=2, width=4, verbose=False)
    assert out["devices"] == jax.device_count()
    assert out["stats_identical"]
    assert np.all(np.isfinite(out["losses"]))
    assert 0.0 <= out["accuracy"] <= 1.0
    # The running statistics moved away from their initial values (mean 0, var 1).
    means = [np.asarray(v) for k, v in _flat(out["batch_stats"]) if k.endswith("mean")]
    assert means and all(np.any(m != 0) for m in means)


def _flat(tree) -> list:
    return [("/".join(str(getattr(p, "key", p)) for p in path), leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]


def test_synced_step_equals_single_device_step(example) -> None:
    n = jax.device_count()
    mesh = Mesh(np.array(jax.devices()), (example.AXIS,))
    x_train, y_train, _, _ = example.load_digits()
    x, y = x_train[: 2 * n], y_train[: 2 * n]
    synced, single = example.ResNet(width=4), example.ResNet(width=4, axis_name=None)
    variables = single.init(jax.random.key(0), jnp.asarray(x[:2]), train=False)
    tx = optax.sgd(0.1, momentum=0.9)
    params, stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)

    step = example.make_train_step(synced, tx, mesh, global_batch=2 * n)
    rows = NamedSharding(mesh, P(example.AXIS))
    got = step(jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, stats),
               jax.tree.map(jnp.copy, opt_state),
               jax.device_put(x, rows), jax.device_put(y, rows))

    @jax.jit
    def reference(params, stats, opt_state, x, y):
        def loss_fn(params):
            logits, upd = single.apply({"params": params, "batch_stats": stats}, x, train=True,
                                       mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, upd["batch_stats"]

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, opt_state, loss

    want = reference(params, stats, opt_state, jnp.asarray(x), jnp.asarray(y))
    for (path, a), (_, b) in zip(_flat(got), _flat(want), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        err = np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12)
        assert err < 1e-5, (path, err)
