"""Property tests (hypothesis): invariances of the scheme, and the notes' claims about it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jnorm
from tests.registry import CENTERED, CORE

SHAPE = (4, 3, 2, 4)
finite = st.floats(-10.0, 10.0, allow_nan=False, width=64)
inputs = hnp.arrays(np.float64, SHAPE, elements=finite).filter(
    lambda x: all(np.ptp(x[..., c]) > 1e-2 for c in range(4)))
# A checkerboard of +-3 along every axis puts both signs in every block each layer normalizes, so
# with a perturbation in [-1, 1] every block has a spread well above epsilon's scale.
_CHECKER = 3.0 * (-1.0) ** np.indices(SHAPE).sum(0)
spread_inputs = hnp.arrays(np.float64, SHAPE, elements=st.floats(-1.0, 1.0)).map(
    lambda e: e + _CHECKER)


def _spread_enough(case, x):
    """Every block a layer normalizes has a non-negligible spread (else eps dominates)."""
    xv, axes = case.view(x)
    return bool(np.all(xv.std(axes) > 0.5 if case.center else np.sqrt((xv**2).mean(axes)) > 0.5))


@pytest.mark.parametrize("case", CENTERED, ids=repr)
@given(x=inputs, c=st.floats(-1e3, 1e3, allow_nan=False))
def test_shift_invariance(case, x, c):
    with jax.enable_x64(True):
        y0 = case.apply(jnp.asarray(x), None, None)
        y1 = case.apply(jnp.asarray(x + c), None, None)
        np.testing.assert_allclose(y1, y0, atol=1e-8)


@pytest.mark.parametrize("case", CORE, ids=repr)
@given(x=inputs, k=st.floats(0.5, 20.0))
def test_scale_invariance(case, x, k):
    """y(k x) = y(x) up to epsilon, exactly: per block y(k x) = y(x) sqrt((v + e) / (v + e/k^2)),
    with v the block's variance (mean square for RMS norm) of x (float64)."""
    with jax.enable_x64(True):
        y0 = np.asarray(case.apply(jnp.asarray(x), None, None))
        y1 = np.asarray(case.apply(jnp.asarray(k * x), None, None))
    xv, axes = case.view(x)
    v = xv.var(axes, keepdims=True) if case.center else (xv**2).mean(axes, keepdims=True)
    factor = np.sqrt((v + case.epsilon) / (v + case.epsilon / k**2))
    np.testing.assert_allclose(case.view(y1)[0], case.view(y0)[0] * factor, atol=1e-9)


@pytest.mark.parametrize("case", CORE, ids=repr)
@given(x=spread_inputs, k=st.floats(0.5, 20.0))
def test_scale_invariance_float32(case, x, k):
    """The same in float32 where epsilon is negligible (block spread > 0.5)."""
    assume(_spread_enough(case, x))
    y0 = case.apply(jnp.asarray(x, jnp.float32), None, None)
    y1 = case.apply(jnp.asarray(k * x, jnp.float32), None, None)
    np.testing.assert_allclose(y1, y0, atol=2e-5)


@given(
    x=hnp.arrays(np.float64, (12, 3), elements=finite),
    mask=hnp.arrays(np.bool_, (12, 1)).filter(lambda m: m.sum() >= 1),
)
def test_masked_moments_equal_moments_of_the_filtered_rows(x, mask):
    """Metamorphic: masking rows is the same as deleting them."""
    with jax.enable_x64(True):
        mean, var = jnorm.moments(jnp.asarray(x), 0, mask=jnp.asarray(mask))
        kept = jnp.asarray(x[mask[:, 0]])
        fmean, fvar = jnorm.moments(kept, 0)
        np.testing.assert_allclose(mean, fmean, atol=1e-12)
        np.testing.assert_allclose(var, fvar, atol=1e-10)


@given(perm=st.permutations(range(SHAPE[0])), x=inputs)
def test_batch_norm_is_permutation_equivariant(perm, x):
    state = jnorm.BatchStats.init(4)
    y, s1 = jnorm.batch_norm(jnp.asarray(x, jnp.float32), state, training=True)
    yp, s2 = jnorm.batch_norm(jnp.asarray(x[list(perm)], jnp.float32), state, training=True)
    np.testing.assert_allclose(yp, np.asarray(y)[list(perm)], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s1.var, s2.var, rtol=1e-5)


@given(
    u=hnp.arrays(np.float64, (16, 5), elements=finite).filter(lambda u: np.linalg.matrix_rank(
        u - u.mean(0)) == 5),
    a=st.floats(0.01, 100.0),
)
def test_notes_weight_scale_identities(u, a):
    """The notes' claim: with z = u W, d BN((aW)u)/du = d BN(Wu)/du and
    d BN((aW)u)/d(aW) = (1/a) d BN(Wu)/dW (epsilon = 0; float64)."""
    with jax.enable_x64(True):
        w = jnp.asarray(np.random.default_rng(0).standard_normal((5, 3)))
        c = jnp.asarray(np.random.default_rng(1).standard_normal((16, 3)))
        state = jnorm.BatchStats.init(3, jnp.float64)

        def loss(u, w):
            return jnp.sum(c * jnorm.batch_norm(u @ w, state, training=True, epsilon=0.0)[0])

        gu, gw = jax.grad(loss, argnums=(0, 1))(jnp.asarray(u), w)
        gu_a, gw_a = jax.grad(loss, argnums=(0, 1))(jnp.asarray(u), a * w)
        np.testing.assert_allclose(gu_a, gu, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(gw_a, gw / a, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("case", CORE, ids=repr)
@given(x=spread_inputs)
def test_output_statistics_are_standard(case, x):
    """Without scale/bias each normalized block has mean 0 and (up to eps) variance 1."""
    assume(_spread_enough(case, x))
    with jax.enable_x64(True):
        y = np.asarray(case.apply(jnp.asarray(x), None, None))
    yv, axes = case.view(y)
    if case.center:
        np.testing.assert_allclose(yv.mean(axes), 0.0, atol=1e-9)
        xv = case.view(x)[0]
        expected = xv.var(axes) / (xv.var(axes) + case.epsilon)
        np.testing.assert_allclose(yv.var(axes), expected, rtol=1e-9)
    else:
        xv = case.view(x)[0]
        ms = (xv**2).mean(axes)
        np.testing.assert_allclose((yv**2).mean(axes), ms / (ms + case.epsilon), rtol=1e-9)
