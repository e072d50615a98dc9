"""Zero-centred scale (``zero_centered_scale=True``: the stored ``gamma`` applied as
``1 + gamma``, Gemma-style) in layer_norm, rms_norm and their linen/nnx modules: converting a
plain checkpoint to it and back gives identical outputs, and a wrong conversion is caught."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jnorm
import jnorm.linen as jnn
import jnorm.nnx as jnx

RNG = np.random.default_rng(0)
X = RNG.normal(1.0, 3.0, (4, 6, 16)).astype(np.float32)
# Trained scales of real checkpoints sit near 1; in [0.5, 2] both conversions are exact.
S = RNG.uniform(0.5, 2.0, 16).astype(np.float32)
B = RNG.normal(0.0, 1.0, 16).astype(np.float32)


def _same(a, b):
    """Two programs computing the same values (``s`` and ``1 + (s - 1)`` are the same float):
    equal to a few ulps of the output's dtype. XLA may fuse the extra addition differently on
    another CPU, so outputs of the two programs are not held bitwise."""
    ulp = float(jnp.finfo(jnp.asarray(b).dtype).eps)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    np.testing.assert_allclose(a, b, rtol=0, atol=4 * ulp * np.abs(b).max())


def _to_zero_centered(params):
    return {**params, "scale": params["scale"] - 1}


def _to_plain(params):
    return {**params, "scale": params["scale"] + 1}


def test_conversion_is_exact_on_the_sterbenz_range():
    s = jnp.asarray(S)
    np.testing.assert_array_equal((s - 1) + 1, s)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_functions_plain_equals_zero_centered_bitwise(dtype):
    x = jnp.asarray(X, dtype)
    gamma = jnp.asarray(S) - 1
    _same(jnorm.layer_norm(x, gamma, B, zero_centered_scale=True), jnorm.layer_norm(x, S, B))
    _same(jnorm.rms_norm(x, gamma, zero_centered_scale=True), jnorm.rms_norm(x, S))


def test_gradients_match_the_plain_form():
    x = jnp.asarray(X)
    gamma = jnp.asarray(S) - 1
    g_plain = jax.grad(lambda s, x: jnp.sum(jnp.sin(jnorm.rms_norm(x, s))), (0, 1))(S, x)
    g_zero = jax.grad(lambda g, x: jnp.sum(jnp.sin(
        jnorm.rms_norm(x, g, zero_centered_scale=True))), (0, 1))(gamma, x)
    for a, b in zip(g_zero, g_plain, strict=True):
        _same(a, b)


def test_bfloat16_gamma_is_added_in_float32():
    """1 + gamma in bf16 would round a small gamma away; jnorm adds in float32."""
    gamma = jnp.full((16,), 2.0**-10, jnp.bfloat16)  # 1 + 2**-10 is not a bf16 number
    y = jnorm.rms_norm(jnp.asarray(X), gamma, zero_centered_scale=True)
    ref = jnorm.rms_norm(jnp.asarray(X), jnp.full((16,), 1 + 2.0**-10, jnp.float32))
    _same(y, ref)


def test_errors_name_the_option():
    with pytest.raises(ValueError, match="`zero_centered_scale=True` needs a `scale`"):
        jnorm.rms_norm(X, zero_centered_scale=True)
    with pytest.raises(TypeError, match="`zero_centered_scale` must be a Python bool"):
        jnorm.layer_norm(X, S, zero_centered_scale=1)


@pytest.mark.parametrize("cls", ["LayerNorm", "RMSNorm"])
def test_linen_checkpoint_round_trip_and_wrong_conversion(cls):
    x = jnp.asarray(X)
    plain = getattr(jnn, cls)()
    zero = getattr(jnn, cls)(zero_centered_scale=True)
    fresh_plain = plain.init(jax.random.key(0), x)["params"]
    fresh_zero = zero.init(jax.random.key(0), x)["params"]
    np.testing.assert_array_equal(fresh_zero["scale"], np.zeros(16))  # init: identity
    _same(zero.apply({"params": fresh_zero}, x), plain.apply({"params": fresh_plain}, x))
    trained = {**fresh_plain, "scale": jnp.asarray(S)}
    if "bias" in trained:
        trained["bias"] = jnp.asarray(B)
    y = plain.apply({"params": trained}, x)
    converted = _to_zero_centered(trained)
    _same(zero.apply({"params": converted}, x), y)
    back = _to_plain(converted)
    np.testing.assert_array_equal(back["scale"], trained["scale"])
    _same(plain.apply({"params": back}, x), y)
    # the silent error: a plain checkpoint loaded unconverted scales the output by (1 + s) / s
    wrong = zero.apply({"params": trained}, x)
    bias = trained.get("bias", jnp.zeros(16))[None, None]
    expected = (y - bias) * jnp.asarray((1 + S) / S)[None, None]
    np.testing.assert_allclose(wrong - bias, expected, rtol=1e-5, atol=1e-6 * 8)
    assert float(jnp.max(jnp.abs(wrong - y))) > 0.5


@pytest.mark.parametrize("cls", ["LayerNorm", "RMSNorm"])
def test_nnx_checkpoint_round_trip(cls):
    x = jnp.asarray(X)
    plain = getattr(jnx, cls)(16, rngs=nnx.Rngs(0))
    zero = getattr(jnx, cls)(16, zero_centered_scale=True, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(zero.scale[...], np.zeros(16))
    _same(zero(x), plain(x))
    plain.scale[...] = jnp.asarray(S)
    zero.scale[...] = plain.scale[...] - 1
    if cls == "LayerNorm":
        plain.bias[...] = zero.bias[...] = jnp.asarray(B)
    _same(zero(x), plain(x))
    zero.scale[...] = plain.scale[...]  # the wrong conversion is visible
    assert float(jnp.max(jnp.abs(zero(x) - plain(x)))) > 0.5


def test_custom_scale_init_is_kept():
    v = jnn.RMSNorm(zero_centered_scale=True, scale_init=jax.nn.initializers.constant(0.1)).init(
        jax.random.key(0), jnp.asarray(X))
    np.testing.assert_allclose(v["params"]["scale"], np.full(16, 0.1))
    layer = jnx.LayerNorm(16, zero_centered_scale=True, rngs=nnx.Rngs(0),
                          scale_init=jax.nn.initializers.constant(0.1))
    np.testing.assert_allclose(layer.scale[...], np.full(16, 0.1))


def test_use_scale_false_ignores_the_option():
    x = jnp.asarray(X)
    m = jnn.LayerNorm(use_scale=False, zero_centered_scale=True)
    v = m.init(jax.random.key(0), x)
    np.testing.assert_array_equal(m.apply(v, x), jnorm.layer_norm(x, None, v["params"]["bias"]))
