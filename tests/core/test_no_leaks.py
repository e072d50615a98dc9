"""Nothing leaks through a mask, nothing poisons state, no edge case crashes.

Masked-out NaN/inf elements, fully masked blocks, cumulative averages with few or many counts,
singular whitening, tiny spectral-norm kernels and size-zero axes: each case pins what reaches
outputs, gradients and state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnorm
from tests.registry import CORE


def _masked_input(shape=(4, 6, 5, 8), bad=np.nan):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    mask = rng.random(shape) < 0.8
    mask[0, 0, 0, :] = False  # the first element of several blocks
    return np.where(mask, x, np.float32(bad)), np.where(mask, x, 0).astype(np.float32), mask


def _renorm_call(x, s, b, m=None):
    state = jnorm.BatchStats.init(x.shape[-1])
    return jnorm.batch_renorm(x, state, s, b, training=True, mask=m)[0]


CALLS = [(c.name, c.apply) for c in CORE] + [("batch_renorm", _renorm_call)]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize(("name", "call"), CALLS, ids=[n for n, _ in CALLS])
def test_masked_out_nonfinite_values_leave_gradients_finite_and_exact(name, call, bad):
    """A loss over the masked-in outputs does not depend on masked-out inputs: its gradient is
    the one computed with those inputs replaced by 0, NaN/inf or not (the `where` trap)."""
    hidden, clean, mask = _masked_input(bad=bad)
    c = hidden.shape[-1]
    scale, bias = jnp.linspace(0.5, 1.5, c), jnp.linspace(-1, 1, c)
    weights = jnp.cos(jnp.arange(hidden.size, dtype=jnp.float32)).reshape(hidden.shape)

    def loss(x, s, b):
        y = call(x, s, b, jnp.asarray(mask))
        return jnp.sum(jnp.where(jnp.asarray(mask), y * weights, 0.0))

    grads = jax.grad(loss, argnums=(0, 1, 2))(jnp.asarray(hidden), scale, bias)
    expect = jax.grad(loss, argnums=(0, 1, 2))(jnp.asarray(clean), scale, bias)
    for got, want in zip(grads, expect):
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # The forward passes the hidden values through unchanged; the rest is unaffected.
    y = call(jnp.asarray(hidden), scale, bias, jnp.asarray(mask))
    y_clean = call(jnp.asarray(clean), scale, bias, jnp.asarray(mask))
    np.testing.assert_array_equal(np.asarray(y)[~mask], hidden[~mask])
    np.testing.assert_allclose(np.asarray(y)[mask], np.asarray(y_clean)[mask], rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize(("name", "call"), CALLS, ids=[n for n, _ in CALLS])
def test_fully_masked_blocks_return_the_bias_in_half_precision(name, call):
    """No statistics for a block: its normalized value is 0, so the output is the bias, not
    x / sqrt(epsilon) (which is inf in float16 for |x| > 65 with epsilon 1e-6)."""
    x = jnp.full((4, 2, 2, 4), 300.0, jnp.float16)
    mask = jnp.zeros(x.shape, bool)
    bias = jnp.array([0.5, -0.25, 1.0, 2.0], jnp.float16)
    y = call(x, jnp.ones(4, jnp.float16), bias, mask)
    assert y.dtype == jnp.float16
    expect = np.zeros(x.shape) if name == "rms_norm" else np.broadcast_to(bias, x.shape)
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(expect, np.float32))


def test_cumulative_average_skips_features_without_data():
    """momentum=None: a feature masked out of one batch averages only the batches that had it
    (29.85 here; one count shared by all features would give 22.39)."""
    rng = np.random.default_rng(1)
    batches = [(10.0 * (k + 1) + rng.standard_normal((16, 2))).astype(np.float32)
               for k in range(4)]
    state = jnorm.BatchStats.init(2, per_feature_count=True)
    for k, b in enumerate(batches):
        mask = np.ones_like(b, bool)
        if k == 0:
            mask[:, 0] = False  # feature 0 has no data in batch 1
        _, state = jnorm.batch_norm(
            jnp.asarray(b), state, training=True, momentum=None, mask=jnp.asarray(mask)
        )
    means0 = [b[:, 0].astype(np.float64).mean() for b in batches[1:]]
    np.testing.assert_allclose(state.mean[0], np.mean(means0), rtol=1e-6)
    assert abs(float(state.mean[0]) - 30.0) < 1.0
    np.testing.assert_array_equal(state.count, [3, 4])


def test_cumulative_average_with_one_count_and_a_mask_is_refused():
    state = jnorm.BatchStats.init(2)
    x = jnp.ones((4, 2))
    with pytest.raises(ValueError, match="per_feature_count=True"):
        jnorm.batch_norm(x, state, training=True, momentum=None, mask=x > 0)
    with pytest.raises(ValueError, match="per_feature_count=True"):
        jnorm.batch_norm(x, state, training=True, momentum=None, skip_nonfinite=True)
    jnorm.batch_norm(x, state, training=True, momentum=None)  # no mask: every feature counts


def test_cumulative_average_keeps_learning_past_2_to_the_24():
    """At count >= 2**24, count / (count + 1) is 1 in float32; the update must still move."""
    state = jnorm.BatchStats(jnp.zeros(2), jnp.ones(2), jnp.asarray(2**24 + 5, jnp.int32))
    new = jnorm.update_batch_stats(
        state, jnp.full(2, 2.0**26), jnp.full(2, 1.0), jnp.full(2, 8.0), momentum=None
    )
    np.testing.assert_allclose(new.mean, 2.0**26 / (2**24 + 6), rtol=1e-6)


def test_decorrelated_batch_norm_with_fewer_rows_than_features_is_finite():
    """16 rows, 32 features: the covariance is singular; the whitening must stay finite."""
    x = (np.random.default_rng(2).standard_normal((16, 32)) * 30).astype(np.float32)
    y, state = jnorm.decorrelated_batch_norm(
        jnp.asarray(x), jnorm.WhiteningStats.init(32), training=True
    )
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(state.whitening))
    # Within the data's span it still whitens: the centred outputs' covariance is a projector.
    cov = np.cov(np.asarray(y, np.float64).T, bias=True)
    eig = np.linalg.eigvalsh(cov)
    assert np.sum(eig > 0.5) == 15 and np.all(eig < 1.0 + 1e-2)


@pytest.mark.parametrize("fn", [jnorm.decorrelated_batch_norm, jnorm.iter_norm])
def test_whitening_skip_nonfinite_keeps_the_state(fn):
    x = np.random.default_rng(3).standard_normal((64, 8)).astype(np.float32)
    state = jnorm.WhiteningStats.init(8, group_size=4)
    _, state = fn(jnp.asarray(x), state, training=True, group_size=4)
    x[5, 1] = np.nan  # group 0 only
    _, new = fn(jnp.asarray(x), state, training=True, group_size=4, skip_nonfinite=True)
    assert np.all(np.isfinite(new.mean)) and np.all(np.isfinite(new.whitening))
    np.testing.assert_array_equal(new.whitening[0], state.whitening[0])
    assert not np.array_equal(new.whitening[1], state.whitening[1])


@pytest.mark.parametrize("size", [1e-6, 1e-10])
def test_spectral_norm_of_tiny_kernels(size):
    """sigma of a kernel whose largest singular value is 1e-6: the normalized kernel's spectral
    norm is 1 (not 2.45, which epsilon inside the square root would give). Below epsilon = 1e-12
    the rule max(||z||, epsilon), PyTorch's, takes over by design."""
    w = np.random.default_rng(4).standard_normal((16, 4)).astype(np.float32)
    w = w / np.linalg.svd(w, compute_uv=False)[0] * size
    for u in (jnorm.spectral_norm_init(w), jnp.ones(4) / 2):
        w_sn, _, _ = jnorm.spectral_norm(jnp.asarray(w.astype(np.float32)), u, n_steps=20)
        np.testing.assert_allclose(np.linalg.svd(np.asarray(w_sn), compute_uv=False)[0], 1.0,
                                   rtol=1e-4)


def test_size_zero_axes():
    """Reducing over an empty axis gives mean 0 / variance 0 (no data), not an internal error."""
    mean, var = jnorm.moments(jnp.zeros((3, 0)), 1)
    np.testing.assert_array_equal(mean, np.zeros(3))
    np.testing.assert_array_equal(var, np.zeros(3))
    y = jnorm.layer_norm(jnp.zeros((3, 0)), mask=jnp.zeros((3, 0), bool))
    assert y.shape == (3, 0)
    assert jnorm.layer_norm(jnp.zeros((3, 0))).shape == (3, 0)
    assert jnorm.group_norm(jnp.zeros((2, 0, 4)), num_groups=2).shape == (2, 0, 4)
