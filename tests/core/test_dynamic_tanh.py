"""Dynamic Tanh beyond the registry's generic tests (tests/registry.py has its float64 oracle,
jit/vmap/grad and errors): the mask's documented no-effect, scalar vs per-channel alpha, half
precision computed in float32, forward-mode and parameter derivatives, and the modules."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.test_util import check_grads

import jnorm
import jnorm.linen as jnn
import jnorm.nnx as jnx

X = np.random.default_rng(0).normal(0.3, 2.0, (3, 5, 8)).astype(np.float32)
SCALE = np.random.default_rng(1).normal(1.0, 0.3, 8).astype(np.float32)
BIAS = np.random.default_rng(2).normal(0.0, 1.0, 8).astype(np.float32)


def test_mask_is_checked_and_changes_nothing():
    mask = np.random.default_rng(3).random(X.shape) < 0.5
    f = lambda x, m=None: jnorm.dynamic_tanh(x, SCALE, BIAS, 0.7, mask=m)  # noqa: E731
    np.testing.assert_array_equal(f(X, mask), f(X))
    g = jax.grad(lambda x, m=None: jnp.sum(f(x, m) ** 2))
    np.testing.assert_array_equal(g(X, mask), g(X))
    with pytest.raises(ValueError, match="`mask`"):
        f(X, np.ones((4,), bool))


def test_scalar_alpha_equals_equal_per_channel_alpha():
    a = jnorm.dynamic_tanh(X, SCALE, BIAS, 0.7)
    b = jnorm.dynamic_tanh(X, SCALE, BIAS, jnp.full((8,), 0.7))
    np.testing.assert_array_equal(a, b)


def test_other_feature_axes():
    x = np.moveaxis(X, -1, 1)
    a = jnorm.dynamic_tanh(x, SCALE, BIAS, jnp.linspace(0.2, 1.0, 8), feature_axes=1)
    b = jnorm.dynamic_tanh(X, SCALE, BIAS, jnp.linspace(0.2, 1.0, 8))
    np.testing.assert_array_equal(a, np.moveaxis(np.asarray(b), -1, 1))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_computed_in_float32(dtype):
    """The result is the float32 computation on the rounded input, rounded once."""
    x = jnp.asarray(X, dtype)
    y = jnorm.dynamic_tanh(x, SCALE, BIAS, 0.5)
    assert y.dtype == dtype
    ref = jnorm.dynamic_tanh(x.astype(jnp.float32), SCALE, BIAS, 0.5).astype(dtype)
    np.testing.assert_array_equal(y, ref)
    assert jnorm.dynamic_tanh(x, dtype=jnp.float32).dtype == jnp.float32


def test_saturates_to_bias_plus_minus_scale_with_finite_gradients():
    x = jnp.asarray([[-1e30, 1e30, -50.0, 50.0]])
    y = jnorm.dynamic_tanh(x, jnp.full(4, 2.0), jnp.full(4, 1.0), 0.5)
    np.testing.assert_array_equal(y, [[-1.0, 3.0, -1.0, 3.0]])
    g = jax.grad(lambda x: jnp.sum(jnorm.dynamic_tanh(x, alpha=0.5)))(x)
    assert np.isfinite(np.asarray(g)).all() and float(jnp.max(jnp.abs(g))) < 1e-20


def test_derivatives_in_every_argument_both_modes_float64():
    with jax.enable_x64(True):
        x = jnp.asarray(X, jnp.float64)
        args = (x, jnp.asarray(SCALE, jnp.float64), jnp.asarray(BIAS, jnp.float64),
                jnp.asarray(0.6, jnp.float64))
        check_grads(lambda *a: jnorm.dynamic_tanh(*a), args, order=2, modes=("fwd", "rev"),
                    atol=1e-6, rtol=1e-6)
        per = jnp.linspace(0.3, 0.9, 8, dtype=jnp.float64)
        check_grads(lambda a: jnorm.dynamic_tanh(x, alpha=a), (per,), order=1,
                    modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)


def test_bad_alpha_dtype():
    with pytest.raises(TypeError, match="`alpha`"):
        jnorm.dynamic_tanh(X, alpha=jnp.asarray(0.5 + 0j))


def test_linen_module_replaces_layer_norm_in_a_model():
    """The same model code with LayerNorm or DynamicTanh: only the ``alpha`` param is new."""
    class Block(nn.Module):
        norm: type

        @nn.compact
        def __call__(self, x, mask=None):
            return nn.Dense(8)(self.norm()(x, mask=mask))

    x = jnp.asarray(X)
    ln = Block(jnn.LayerNorm).init(jax.random.key(0), x)["params"]
    dyt = Block(jnn.DynamicTanh).init(jax.random.key(0), x)["params"]
    assert sorted(dyt["DynamicTanh_0"]) == ["alpha", "bias", "scale"]
    assert sorted(ln["LayerNorm_0"]) == ["bias", "scale"]
    y = Block(jnn.DynamicTanh).apply({"params": dyt}, x, mask=x > 0)
    np.testing.assert_array_equal(y, Block(jnn.DynamicTanh).apply({"params": dyt}, x))


def test_nnx_module_alpha_trains():
    layer = jnx.DynamicTanh(8, rngs=nnx.Rngs(0), per_channel_alpha=True, alpha_init=0.2)
    assert layer.alpha[...].shape == (8,) and float(layer.alpha[...][0]) == pytest.approx(0.2)
    grads = nnx.grad(lambda m: jnp.sum(m(jnp.asarray(X)) ** 2))(layer)
    assert float(jnp.abs(grads.alpha[...]).min()) > 0


# ------------------------------------------------------------------ properties (hypothesis)

_x = hnp.arrays(np.float32, (3, 6), elements=st.floats(-1e6, 1e6, width=32))
_p = hnp.arrays(np.float32, (6,), elements=st.floats(-10, 10, width=32))


@given(x=_x, scale=_p, alpha=st.floats(-20, 20, width=32), perm=st.permutations(range(6)))
def test_elementwise_equivariant_and_bounded(x, scale, alpha, perm):
    """Each output depends on its own element only (permuting features with their params
    permutes the output, bitwise) and stays within |scale| of zero (tanh is bounded)."""
    perm = np.asarray(perm)
    y = np.asarray(jnorm.dynamic_tanh(x, scale, None, alpha))
    y_perm = np.asarray(jnorm.dynamic_tanh(x[:, perm], scale[perm], None, alpha))
    np.testing.assert_array_equal(y_perm, y[:, perm])
    assert np.all(np.abs(y) <= np.abs(scale)[None, :])
    assert np.isfinite(y).all()
