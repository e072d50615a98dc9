"""The core layers against their float64 oracle beyond the registry's generic tests (data far
from zero with gradients, constant input, float16, integers, any rank, masks, layouts), and
batch norm's running statistics. tests/core/test_registry.py has the float32 and bfloat16
accuracy of every layer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnorm
from tests.helpers import as64, data, params
from tests.registry import CENTERED, CORE

SHAPE = (6, 3, 5, 4)  # N, H, W, C (group norm: 2 groups of 2 channels)


@pytest.mark.parametrize("case", CORE, ids=repr)
@pytest.mark.parametrize("offset", [1e4, 1e6])
def test_offset_data_outputs_and_gradients(case, offset):
    """Accuracy target: max |error| <= 1e-5 on outputs and input gradients for data far from 0."""
    x = data((8, 4, 4, 4), offset=offset, seed=1)
    s, b = params(4)
    ct = data(x.shape, seed=2)
    y, vjp = jax.vjp(lambda x: case.apply(x, jnp.asarray(s), jnp.asarray(b)), jnp.asarray(x))
    (gx,) = vjp(jnp.asarray(ct))
    assert np.max(np.abs(as64(y) - case.oracle(x, s, b))) <= 1e-5
    assert np.max(np.abs(as64(gx) - case.oracle_grad(x, s, ct))) <= 1e-5


@pytest.mark.parametrize("case", CENTERED, ids=repr)
def test_constant_input_returns_exactly_the_bias(case):
    x = jnp.full(SHAPE, 10000.1, jnp.float32)
    s, b = params(SHAPE[-1])
    y = case.apply(x, jnp.asarray(s), jnp.asarray(b))
    np.testing.assert_array_equal(y, np.broadcast_to(b, SHAPE))
    g = jax.grad(lambda x: jnp.sum(case.apply(x, s, b) ** 2))(x)
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize("case", CORE, ids=repr)
def test_float16_large_values(case):
    x = data(SHAPE, offset=400.0, spread=20.0).astype(np.float16)
    assert np.all(np.abs(x) > 256)
    s, b = params(SHAPE[-1])
    y = case.apply(jnp.asarray(x), s, b)
    assert y.dtype == jnp.float16
    ref = case.oracle(x.astype(np.float64), s, b)
    assert np.max(np.abs(as64(y) - ref) / np.maximum(np.abs(ref), 1.0)) <= 1e-3


@pytest.mark.parametrize("case", CORE, ids=repr)
def test_integer_input_is_promoted(case):
    x = np.random.default_rng(0).integers(-50, 50, SHAPE).astype(np.int32)
    y = case.apply(jnp.asarray(x), None, None)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, case.oracle(x), atol=1e-5)


@pytest.mark.parametrize("case", CORE, ids=repr)
@pytest.mark.parametrize("shape", [(5, 7, 4), (3, 2, 3, 2, 4)], ids=["1d", "3d"])
def test_any_number_of_spatial_axes(case, shape):
    x = data(shape, offset=-1.0)
    s, b = params(shape[-1])
    np.testing.assert_allclose(case.apply(jnp.asarray(x), s, b), case.oracle(x, s, b), atol=1e-5)


@pytest.mark.parametrize("case", CORE, ids=repr)
def test_mask(case):
    x = data(SHAPE, offset=5.0, seed=3)
    mask = np.random.default_rng(4).random(SHAPE) > 0.3
    s, b = params(SHAPE[-1])
    y = case.apply(jnp.asarray(x), s, b, jnp.asarray(mask))
    np.testing.assert_allclose(y, case.oracle(x, s, b, mask), atol=2e-5)


def test_channel_first_equals_channel_last():
    x = data((4, 6, 3, 5), offset=1.0)  # N, C, H, W
    xl = np.moveaxis(x, 1, -1)
    s, b = params(6)
    pairs = [
        (jnorm.instance_norm(x, s, b, feature_axes=1), jnorm.instance_norm(xl, s, b)),
        (jnorm.group_norm(x, s, b, num_groups=3, feature_axes=1),
         jnorm.group_norm(xl, s, b, num_groups=3)),
        (jnorm.batch_norm(x, jnorm.BatchStats.init(6), s, b, training=True, feature_axes=1)[0],
         jnorm.batch_norm(xl, jnorm.BatchStats.init(6), s, b, training=True)[0]),
        (jnorm.layer_norm(x, reduction_axes=(1, 2, 3)),
         jnorm.layer_norm(xl, reduction_axes=(1, 2, 3))),
    ]
    for first, last in pairs:
        np.testing.assert_allclose(np.moveaxis(np.asarray(first), 1, -1), last, atol=5e-6)


def test_layer_norm_over_all_features_of_an_image():
    """The notes' layer norm: everything of a single data point, params per channel."""
    x = data(SHAPE, offset=3.0)
    s, b = params(SHAPE[-1])
    y = jnorm.layer_norm(x, s, b, reduction_axes=(1, 2, 3), feature_axes=-1)
    ref = (x - x.astype(np.float64).mean((1, 2, 3), keepdims=True)) / np.sqrt(
        x.astype(np.float64).var((1, 2, 3), keepdims=True) + 1e-6) * s + b
    np.testing.assert_allclose(y, ref, atol=1e-5)


def test_group_norm_of_features_without_spatial_axes():
    x = data((5, 6), offset=2.0)
    y = jnorm.group_norm(x, num_groups=3)
    xs = x.astype(np.float64).reshape(5, 3, 2)
    ref = (xs - xs.mean(-1, keepdims=True)) / np.sqrt(xs.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(y, ref.reshape(5, 6), atol=1e-5)


def test_group_norm_extremes_are_layer_and_instance_norm():
    x = jnp.asarray(data(SHAPE, offset=1.0))
    np.testing.assert_allclose(jnorm.group_norm(x, num_groups=1),
                               jnorm.layer_norm(x, reduction_axes=(1, 2, 3)), atol=1e-6)
    np.testing.assert_allclose(jnorm.group_norm(x, num_groups=None, group_size=1),
                               jnorm.instance_norm(x), atol=1e-6)


# ----------------------------------------------------------------------------- batch norm state


def _bn_ref_state(x, mean0, var0, momentum, unbiased=False):
    x64 = x.astype(np.float64).reshape(-1, x.shape[-1])
    n = x64.shape[0]
    v = x64.var(0) * (n / (n - 1) if unbiased else 1.0)
    return momentum * mean0 + (1 - momentum) * x64.mean(0), momentum * var0 + (1 - momentum) * v


@pytest.mark.parametrize("unbiased", [False, True])
def test_running_statistics_after_a_step(unbiased):
    x = data(SHAPE, offset=7.0, spread=2.0)
    state = jnorm.BatchStats.init(4)
    _, new = jnorm.batch_norm(x, state, training=True, momentum=0.9,
                              unbiased_running_var=unbiased)
    rm, rv = _bn_ref_state(x, 0.0, 1.0, 0.9, unbiased)
    np.testing.assert_allclose(new.mean, rm, rtol=1e-6)
    np.testing.assert_allclose(new.var, rv, rtol=1e-6)
    assert int(new.count) == 1 and new.mean.dtype == jnp.float32 and new.count.dtype == jnp.int32


def test_eval_uses_running_statistics_and_keeps_state():
    x = data(SHAPE, offset=1.0)
    state = jnorm.BatchStats(jnp.arange(4.0), jnp.arange(1.0, 5.0), jnp.asarray(3, jnp.int32))
    s, b = params(4)
    y, same = jnorm.batch_norm(x, state, s, b, training=False)
    assert same is state
    ref = (x - np.arange(4.0)) / np.sqrt(np.arange(1.0, 5.0) + 1e-5) * s + b
    np.testing.assert_allclose(y, ref, atol=1e-5)


def test_cumulative_average_when_momentum_is_none():
    state = jnorm.BatchStats.init(4)
    batches = [data(SHAPE, offset=i, seed=i) for i in range(3)]
    for x in batches:
        _, state = jnorm.batch_norm(x, state, training=True, momentum=None)
    means = [x.astype(np.float64).reshape(-1, 4).mean(0) for x in batches]
    np.testing.assert_allclose(state.mean, np.mean(means, 0), rtol=1e-6)
    assert int(state.count) == 3


def test_fully_masked_batch_leaves_running_statistics_untouched():
    state = jnorm.BatchStats(jnp.ones(4), jnp.full(4, 2.0), jnp.asarray(5, jnp.int32))
    x = jnp.full(SHAPE, jnp.nan)
    _, new = jnorm.batch_norm(x, state, training=True, mask=jnp.zeros(SHAPE, bool))
    np.testing.assert_array_equal(new.mean, state.mean)
    np.testing.assert_array_equal(new.var, state.var)
    assert int(new.count) == 5


def test_skip_nonfinite_keeps_running_statistics():
    state = jnorm.BatchStats.init(4)
    x = np.asarray(data(SHAPE))
    x[0, 0, 0, 1] = np.inf
    _, new = jnorm.batch_norm(x, state, training=True, skip_nonfinite=True)
    assert np.isfinite(np.asarray(new.mean)).all() and float(new.mean[1]) == 0.0
    assert float(new.var[1]) == 1.0 and float(new.mean[0]) != 0.0
    _, poisoned = jnorm.batch_norm(x, state, training=True)
    assert not np.isfinite(float(poisoned.mean[1]))


def test_count_saturates():
    state = jnorm.BatchStats(jnp.zeros(4), jnp.ones(4), jnp.asarray(2**31 - 1, jnp.int32))
    _, new = jnorm.batch_norm(data(SHAPE), state, training=True)
    assert int(new.count) == 2**31 - 1


def test_torch_conventions_side_by_side():
    """PyTorch BatchNorm(momentum=0.1) == jnorm momentum 0.9 with unbiased running variance."""
    x = data((16, 3), offset=2.0, seed=5)
    params_, state = jnorm.from_torch_batch_norm(
        np.zeros(3), np.ones(3), 0, weight=np.ones(3), bias=np.zeros(3))
    y, state = jnorm.batch_norm(x, state, params_["scale"], params_["bias"], training=True,
                                momentum=jnorm.momentum_from_torch(0.1),
                                unbiased_running_var=True)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(state.mean, 0.1 * x64.mean(0), rtol=1e-6)
    np.testing.assert_allclose(state.var, 0.9 + 0.1 * x64.var(0, ddof=1), rtol=1e-6)
    # torch normalizes with the biased batch variance, as jnorm does.
    np.testing.assert_allclose(y, (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-5), atol=1e-5)


def test_from_torch_batch_norm_eval_matches_torch_formula():
    rm, rv = np.array([1.0, -2.0]), np.array([4.0, 0.25])
    w, b = np.array([2.0, 1.0]), np.array([0.5, 0.0])
    params_, state = jnorm.from_torch_batch_norm(rm, rv, np.int64(12), w, b)
    assert int(state.count) == 12
    x = data((5, 2))
    y, _ = jnorm.batch_norm(x, state, params_["scale"], params_["bias"], training=False)
    np.testing.assert_allclose(y, (x - rm) / np.sqrt(rv + 1e-5) * w + b, atol=1e-6)


def test_batch_stats_init():
    s = jnorm.BatchStats.init((2, 3), jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    assert s.mean.shape == s.var.shape == (2, 3) and s.count.shape == ()
    assert jax.tree_util.tree_structure(s).num_leaves == 3
