"""Ghost (virtual) batch norm: ``batch_norm(..., virtual_batch_size=V)``.

Outputs: each sub-batch of ``V`` consecutive examples is normalized with its own statistics.
Running statistics: one update with the count-weighted average of the sub-batch means and
variances. Both are checked against float64 NumPy written from that definition.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

import jnorm
import jnorm.linen as jnn

N, V, C = 12, 4, 3
EPS = 1e-5
MOMENTUM = 0.8


def _x(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Sub-batches around different offsets: ghost and full-batch statistics differ a lot.
    offsets = np.repeat([0.0, 4.0, -3.0], V)[:, None, None]
    return (offsets + rng.normal(size=(N, 2, C)) * [1.0, 2.0, 0.5]).astype(np.float32)


def _oracle(x: np.ndarray, mask: np.ndarray | None, unbiased: bool = False):
    """float64: output, and the (mean, var) the running statistics are moved towards."""
    x64 = x.astype(np.float64).reshape(N // V, V, *x.shape[1:])
    w = np.ones_like(x64) if mask is None else np.broadcast_to(mask, x.shape).reshape(x64.shape)
    n = w.sum((1, 2))  # (K, C)
    safe = np.maximum(n, 1)
    mu = (w * x64).sum((1, 2)) / safe
    m2 = (w * (x64 - mu[:, None, None]) ** 2).sum((1, 2))
    y = (x64 - mu[:, None, None]) / np.sqrt(m2 / safe + EPS)[:, None, None]
    mean = (n * mu).sum(0) / n.sum(0)
    var = m2.sum(0) / (np.maximum(n - 1, 0).sum(0) if unbiased else n.sum(0))
    return y.reshape(x.shape), mean, var


@pytest.mark.parametrize("unbiased", [False, True])
def test_ghost_outputs_and_running_stats(unbiased: bool) -> None:
    x = _x()
    state = jnorm.BatchStats.init(C)
    y, new = jnorm.batch_norm(x, state, training=True, epsilon=EPS, momentum=MOMENTUM,
                              virtual_batch_size=V, unbiased_running_var=unbiased)
    want_y, mean, var = _oracle(x, None, unbiased)
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new.mean, (1 - MOMENTUM) * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new.var, MOMENTUM + (1 - MOMENTUM) * var, rtol=1e-5)
    assert int(new.count) == 1
    # Without a mask the average is the plain mean of the sub-batch statistics.
    subs = [jnorm.moments(x[k * V:(k + 1) * V], (0, 1)) for k in range(N // V)]
    plain_var = np.mean([s[1] for s in subs], 0) * (V * 2 / (V * 2 - 1) if unbiased else 1)
    np.testing.assert_allclose(var, plain_var, rtol=1e-5)
    # ... and it differs from full-batch batch norm (the offsets make that obvious).
    y_full, _ = jnorm.batch_norm(x, state, training=True, epsilon=EPS)
    assert not np.allclose(y, y_full, atol=1e-2)


def test_ghost_with_mask_is_count_weighted() -> None:
    x = _x(1)
    rng = np.random.default_rng(2)
    mask = rng.random(x.shape) < 0.6
    mask[V: 2 * V] = False  # the second sub-batch holds no valid element
    mask[0, 0] = True
    y, new = jnorm.batch_norm(x, jnorm.BatchStats.init(C), training=True, epsilon=EPS,
                              momentum=0.0, mask=mask, virtual_batch_size=V)
    want_y, mean, var = _oracle(x, mask)
    keep = np.ones(N, bool)
    keep[V: 2 * V] = False  # rows of an empty sub-batch are normalized with mean 0, var 0
    np.testing.assert_allclose(np.asarray(y)[keep], want_y[keep], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new.mean, mean, rtol=1e-5)
    np.testing.assert_allclose(new.var, var, rtol=1e-5)


def test_one_sub_batch_is_plain_batch_norm_and_eval_ignores_it() -> None:
    x = _x()
    state = jnorm.BatchStats.init(C)
    y1, s1 = jnorm.batch_norm(x, state, training=True, virtual_batch_size=N)
    y0, s0 = jnorm.batch_norm(x, state, training=True)
    np.testing.assert_allclose(y1, y0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(s1.var, s0.var, rtol=1e-6)
    # Eval uses the running statistics; the size need not divide an eval batch.
    e1, _ = jnorm.batch_norm(x[:5], s1, training=False, virtual_batch_size=V)
    e0, _ = jnorm.batch_norm(x[:5], s1, training=False)
    np.testing.assert_array_equal(e1, e0)


def test_linen_equals_function_and_grads() -> None:
    x = jnp.asarray(_x())
    model = jnn.BatchNorm(use_running_average=False, virtual_batch_size=V, momentum=MOMENTUM)
    variables = model.init(jax.random.key(0), x)
    y, upd = model.apply(variables, x, mutable=["batch_stats"])
    y_f, s_f = jnorm.batch_norm(x, jnorm.BatchStats.init(C), jnp.ones(C), jnp.zeros(C),
                                training=True, momentum=MOMENTUM, virtual_batch_size=V)
    np.testing.assert_array_equal(y, y_f)
    np.testing.assert_array_equal(upd["batch_stats"]["var"], s_f.var)

    from jax.test_util import check_grads

    with jax.enable_x64(True):
        x64 = jnp.asarray(_x(), jnp.float64)
        state = jnorm.BatchStats.init(C, jnp.float64)
        w = jnp.asarray(np.random.default_rng(3).normal(size=x64.shape))
        f = jax.jit(lambda x: jnp.sum(w * jnorm.batch_norm(
            x, state, training=True, virtual_batch_size=V)[0]))
        check_grads(f, (x64,), order=1, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)


def test_ghost_with_axis_name_combines_sub_batch_k_of_every_device() -> None:
    devices = jax.devices()[:4]
    if len(devices) < 4:
        pytest.skip("needs 4 devices")
    mesh = Mesh(np.array(devices), ("d",))
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4 * 6, C)).astype(np.float32)  # 6 rows per device, V=3
    f = jax.jit(jax.shard_map(
        lambda x: jnorm.batch_norm(x, jnorm.BatchStats.init(C), training=True, momentum=0.0,
                                   axis_name="d", virtual_batch_size=3),
        mesh=mesh, in_specs=P("d"), out_specs=(P("d"), P()),
    ))
    y, state = f(x)
    rows = np.arange(24).reshape(4, 2, 3)  # device, sub-batch, row
    means, variances = [], []
    for k in range(2):
        sub = x[rows[:, k].ravel()].astype(np.float64)
        mu, var = sub.mean(0), sub.var(0)
        means.append(mu)
        variances.append(var)
        want = (sub - mu) / np.sqrt(var + 1e-5)
        np.testing.assert_allclose(np.asarray(y)[rows[:, k].ravel()], want, rtol=1e-5,
                                   atol=1e-5)
    np.testing.assert_allclose(state.mean, np.mean(means, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.var, np.mean(variances, 0), rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "shape", "match"),
    [
        ({"virtual_batch_size": 5}, (12, 3),
         r"`virtual_batch_size`=5 does not divide .*\[1, 2, 3, 4, 6, 12\]"),
        ({"virtual_batch_size": 0}, (12, 3), "positive int"),
        ({"virtual_batch_size": 2.0}, (12, 3), "positive int"),
        ({"virtual_batch_size": True}, (12, 3), "positive int"),
        ({"virtual_batch_size": 1}, (12, 3), "one value per channel"),
        ({"virtual_batch_size": 2, "feature_axes": 0}, (12, 3), "axis 0 a feature axis"),
    ],
)
def test_ghost_errors_name_the_argument_and_the_fix(kwargs: dict, shape: tuple, match: str) -> None:
    x = jnp.ones(shape)
    axis = kwargs.get("feature_axes", -1)
    state = jnorm.BatchStats.init(shape[axis])
    with pytest.raises(ValueError, match=match):
        jnorm.batch_norm(x, state, training=True, **kwargs)
