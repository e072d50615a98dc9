"""Running statistics (jnorm.BatchStats, jnorm.update_batch_stats) of complex inputs.

flax keeps a complex running mean for complex inputs (its variance stays real); the functional
state must do the same, and agree with jnorm's modules, which follow flax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnorm
import jnorm.linen as jnn


def _complex_batch(dtype, shape=(16, 3), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape) + 1j * rng.normal(size=shape) * np.array([0.5, 2.0, 1.0])
    return (x + np.array([1 + 2j, -3 + 0.5j, 0.25 - 4j])).astype(dtype)


def _reference(x, momentum, mean0, var0):
    """flax's rule in complex128 NumPy: mean and biased variance E|x - mu|^2 (real)."""
    x = x.astype(np.complex128)
    mu = x.mean(0)
    var = (np.abs(x - mu) ** 2).mean(0)
    return momentum * mean0 + (1 - momentum) * mu, momentum * var0 + (1 - momentum) * var


@pytest.mark.parametrize("momentum", [0.9, None])
def test_batch_norm_keeps_the_imaginary_part_of_the_running_mean(momentum):
    x = _complex_batch(np.complex64)
    s0 = jnorm.BatchStats(jnp.asarray([0.5, -1.0, 0.0], jnp.float32), jnp.ones(3), jnp.asarray(1))
    _, s1 = jnorm.batch_norm(jnp.asarray(x), s0, training=True, momentum=momentum)
    m = 0.5 if momentum is None else momentum  # cumulative average at count 1: weight 1/2
    mean_ref, var_ref = _reference(x, m, np.asarray(s0.mean, np.float64), 1.0)
    assert s1.mean.dtype == jnp.complex64 and s1.var.dtype == jnp.float32
    assert np.abs(mean_ref.imag).min() > 0.05  # the imaginary part is there to be dropped
    # float32 sums of n values, any order: error <= (n + 2) u max|x| for the mean, and
    # (n + 4) u max|x - mu|^2 for the variance (recursive summation's worst case, plus the
    # shift, the division and the update)
    n, u = x.shape[0], 2.0**-24
    dev = np.abs(x.astype(np.complex128) - x.astype(np.complex128).mean(0)) ** 2
    np.testing.assert_allclose(s1.mean, mean_ref, rtol=0, atol=(n + 2) * u * np.abs(x).max())
    np.testing.assert_allclose(s1.var, var_ref, rtol=0, atol=(n + 4) * u * dev.max())
    # eval with the new state uses the complex mean: y = (x - mean) / sqrt(var + eps), a few
    # roundings of the float32 operands
    y, _ = jnorm.batch_norm(jnp.asarray(x), s1, training=False, epsilon=0.0)
    mean1, var1 = np.asarray(s1.mean, np.complex128), np.asarray(s1.var, np.float64)
    ref = (x.astype(np.complex128) - mean1) / np.sqrt(var1)
    np.testing.assert_allclose(y, ref, rtol=0, atol=8 * u * (np.abs(x).max() + np.abs(mean1).max())
                               / np.sqrt(var1.min()))


def test_complex128_state_matches_reference_to_float64_rounding():
    x = _complex_batch(np.complex128, seed=1)
    with jax.enable_x64(True):
        s0 = jnorm.BatchStats.init(3, jnp.float64)
        _, s1 = jnorm.batch_norm(jnp.asarray(x), s0, training=True, momentum=0.5)
        assert s1.mean.dtype == jnp.complex128 and s1.var.dtype == jnp.float64
        mean_ref, var_ref = _reference(x, 0.5, 0.0, 1.0)
        np.testing.assert_allclose(s1.mean, mean_ref, rtol=1e-14, atol=1e-14)
        np.testing.assert_allclose(s1.var, var_ref, rtol=1e-14)


def test_functional_state_agrees_with_the_linen_module():
    x = jnp.asarray(_complex_batch(np.complex64, seed=2))
    mod = jnn.BatchNorm(use_running_average=False, momentum=0.8)
    v = mod.init(jax.random.key(0), x)
    _, upd = mod.apply(v, x, mutable=["batch_stats"])
    _, s = jnorm.batch_norm(x, jnorm.BatchStats.init(3), training=True, momentum=0.8)
    np.testing.assert_array_equal(s.mean, upd["batch_stats"]["mean"])
    np.testing.assert_array_equal(s.var, upd["batch_stats"]["var"])


def test_complex_init_gives_a_fixed_dtype_carry():
    """BatchStats.init(C, complex64): complex mean, real variance; the dtypes do not change
    with an update, so the state can be a lax.scan carry."""
    s = jnorm.BatchStats.init(3, jnp.complex64)
    assert (s.mean.dtype, s.var.dtype) == (jnp.complex64, jnp.float32)
    xs = jnp.asarray(np.stack([_complex_batch(np.complex64, seed=k) for k in range(3)]))

    def step(state, x):
        return jnorm.batch_norm(x, state, training=True, momentum=0.5)[1], None

    final, _ = jax.lax.scan(step, s, xs)
    mean, var = np.zeros(3, np.complex128), np.ones(3)
    for x in np.asarray(xs):
        mean, var = _reference(x, 0.5, mean, var)
    np.testing.assert_allclose(final.mean, mean, atol=1e-5)
    np.testing.assert_allclose(final.var, var, rtol=1e-5)
    with pytest.raises(TypeError, match=r"`dtype`=.*int32.* is not a floating"):
        jnorm.BatchStats.init(3, jnp.int32)
