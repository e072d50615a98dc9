"""The fused Pallas row-norm kernels against the pure-JAX path (their oracle).

On CPU the kernels run in Pallas interpret mode; on a GPU the same tests run them compiled.
Shapes are small so the interpret mode stays fast.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnorm
from jnorm import _pallas
from jnorm._normalize import _normalize_with_moments
from jnorm._pallas import _row_norm

INTERPRET = jax.default_backend() != "gpu"
SHAPES = [(256, 128), (24, 512)]  # several row blocks; a row count that halves the block


def _data(shape, offset, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    x = (offset + rng.standard_normal(shape)).astype(np.float32)
    scale = rng.standard_normal(shape[-1]).astype(np.float32)
    bias = rng.standard_normal(shape[-1]).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    return jnp.asarray(x, dtype), jnp.asarray(scale), jnp.asarray(bias), jnp.asarray(g, dtype)


def _oracle(x, scale, bias, center):
    y, m = _normalize_with_moments(
        x, scale, None if not center else bias, axes=(1,), epsilon=1e-6, center=center
    )
    return y, m


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("center", [True, False], ids=["layer", "rms"])
@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_forward_matches_xla(shape, center, offset):
    x, scale, bias, _ = _data(shape, offset if center else 0.0)
    b = bias if center else None
    y, shift, mean, var = _pallas.row_norm_forward(
        x, scale, b, epsilon=1e-6, center=center, interpret=INTERPRET
    )
    y_ref, m = _oracle(x, scale, bias, center)
    np.testing.assert_allclose(y, y_ref, atol=2e-5, rtol=1e-5)
    # The shift is each row's rounded mean (sums in another order than XLA's): the means agree
    # to float32 rounding, and both residuals are rounding errors of the mean.
    np.testing.assert_allclose(shift + mean, m.mean[:, 0], atol=1e-6, rtol=1e-6)
    bound = 1e-6 * (1 + np.abs(np.asarray(m.mean[:, 0])))
    assert np.all(np.abs(mean) <= bound) and np.all(np.abs(m.mean_shifted[:, 0]) <= bound)
    np.testing.assert_allclose(var, m.var[:, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("center", [True, False], ids=["layer", "rms"])
@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_backward_matches_xla(shape, center, offset):
    x, scale, bias, g = _data(shape, offset if center else 0.0, seed=1)
    b = bias if center else None

    def f(x, scale, bias):
        return _oracle(x, scale, bias, center)[0]

    _, vjp = jax.vjp(f, x, scale, bias)
    dx_ref, ds_ref, db_ref = vjp(g)
    _, m = _oracle(x, scale, bias, center)
    dx, ds, db = _pallas.row_norm_backward(
        x, g, scale, m.shift[:, 0], m.mean_shifted[:, 0], m.var[:, 0], epsilon=1e-6,
        center=center, interpret=INTERPRET,
    )
    np.testing.assert_allclose(dx, dx_ref, atol=5e-5, rtol=1e-4)
    np.testing.assert_allclose(ds, ds_ref, atol=5e-4, rtol=1e-4)
    if center:
        np.testing.assert_allclose(db, db_ref, atol=5e-4, rtol=1e-4)
    del b


def test_half_precision_forward():
    x, scale, bias, _ = _data((64, 256), 3.0, dtype=jnp.bfloat16)
    y, *_ = _pallas.row_norm_forward(x, scale, bias, epsilon=1e-6, interpret=INTERPRET)
    y_ref, _ = _oracle(x, scale, bias, True)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        np.asarray(y, np.float32), np.asarray(y_ref, np.float32), atol=3e-2, rtol=2e-2
    )


@pytest.fixture
def forced(monkeypatch):
    """Routes the layers through the kernels (interpret mode on CPU)."""
    monkeypatch.setattr(_row_norm, "FORCE", True)


@pytest.mark.parametrize("layer", ["layer_norm", "rms_norm"])
def test_layers_use_kernels_and_keep_transforms(layer, forced):
    x, scale, bias, g = _data((4, 8, 128), 1e4 if layer == "layer_norm" else 0.0, seed=2)
    assert _pallas.suits(x, (2,), scale.reshape(1, 1, -1), center=layer == "layer_norm")

    def f(x, scale):
        if layer == "layer_norm":
            return jnorm.layer_norm(x, scale, bias)
        return jnorm.rms_norm(x, scale)

    y = jax.jit(f)(x, scale)
    gx, gs = jax.grad(lambda x, s: jnp.sum(f(x, s) * g), argnums=(0, 1))(x, scale)
    _, ty = jax.jvp(f, (x, scale), (g, scale))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_row_norm, "FORCE", False)
        y_ref = f(x, scale)
        gx_ref, gs_ref = jax.grad(lambda x, s: jnp.sum(f(x, s) * g), argnums=(0, 1))(x, scale)
        _, ty_ref = jax.jvp(f, (x, scale), (g, scale))
    np.testing.assert_allclose(y, y_ref, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(gx, gx_ref, atol=5e-5, rtol=1e-4)
    np.testing.assert_allclose(gs, gs_ref, atol=5e-4, rtol=1e-4)
    np.testing.assert_allclose(ty, ty_ref, atol=5e-5, rtol=1e-4)
    assert jax.vmap(f, in_axes=(0, None))(x, scale).shape == x.shape


def test_kernel_serves_the_forward_and_xla_the_derivative(forced):
    """Plain evaluation uses the kernel; grad and jvp use the XLA path, which XLA fuses with
    the derivative's loops (the kernel's separate output measured slower in training)."""
    x, scale, bias, g = _data((16, 128), 0.0)

    def f(x):
        return jnorm.layer_norm(x, scale, bias)

    assert "pallas_call" in str(jax.make_jaxpr(f)(x))
    assert "pallas_call" not in str(jax.make_jaxpr(jax.grad(lambda x: jnp.sum(f(x) * g)))(x))
    assert "pallas_call" not in str(jax.make_jaxpr(lambda x: jax.jvp(f, (x,), (g,)))(x))


def test_constant_rows_give_the_bias(forced):
    x = jnp.full((16, 128), 10000.1, jnp.float32)
    bias = jnp.arange(128.0, dtype=jnp.float32)
    y = jnorm.layer_norm(x, jnp.ones(128, jnp.float32), bias)
    np.testing.assert_array_equal(y, jnp.broadcast_to(bias, y.shape))


def test_suits_only_kernel_shapes(monkeypatch):
    x = jnp.zeros((8, 4096), jnp.float32)
    assert _pallas.suits(x, (1,), backend="gpu")
    assert not _pallas.suits(x, (1,), center=False, backend="gpu")  # RMS: XLA measured faster
    assert _pallas.suits(jnp.zeros((8, 256)), (1,), backend="gpu")
    assert not _pallas.suits(jnp.zeros((8, 128)), (1,), backend="gpu")  # below AUTO_MIN_D
    assert not _pallas.suits(jnp.zeros((8, 5000)), (1,), backend="gpu")  # not a power of two
    assert not _pallas.suits(x, (0,), backend="gpu")  # not the last axis
    assert not _pallas.suits(x.astype(jnp.int32), (1,), backend="gpu")
    if jax.default_backend() != "gpu":
        assert not _pallas.suits(x, (1,))  # CPU keeps the XLA path
    monkeypatch.setenv("JNORM_PALLAS", "0")
    assert not _pallas.suits(x, (1,), backend="gpu")


def test_block_rows():
    assert _pallas.block_rows(256, 128, 8192) == 64
    assert _pallas.block_rows(24, 512, 8192) == 8
    assert _pallas.block_rows(7, 1024, 8192) == 1
    assert _pallas.block_rows(256, 128, 1024) == 8
    assert _pallas.block_rows(256, 128, 3000) == 16  # rounded down to a power of two
    assert _pallas.block_rows(256, 1024, 512) == 1


@pytest.mark.parametrize("config", [(1024, 2, 4), (16384, 16, 1), (2048, 4, 64)])
def test_launch_configs_agree(config):
    """Other row blocks and warp counts (as ``bench --tune`` times them) give the same result."""
    x, scale, bias, g = _data((256, 128), 1e4, seed=2)
    ref = _pallas.row_norm_forward(x, scale, bias, epsilon=1e-6, interpret=INTERPRET)
    out = _pallas.row_norm_forward(x, scale, bias, epsilon=1e-6, interpret=INTERPRET,
                                   config=config[:2])
    for a, b in zip(out, ref, strict=True):  # the sums' order may differ: float32 rounding
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)
    stats = ref[1:]
    dref = _pallas.row_norm_backward(x, g, scale, *stats, epsilon=1e-6, interpret=INTERPRET)
    dout = _pallas.row_norm_backward(x, g, scale, *stats, epsilon=1e-6, interpret=INTERPRET,
                                     config=config)
    for a, b in zip(dout, dref, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)


def test_bad_warp_count_names_the_argument():
    x, scale, bias, _ = _data((16, 128), 0.0)
    with pytest.raises(ValueError, match="num_warps must be a power of two"):
        _pallas.row_norm_forward(x, scale, bias, epsilon=1e-6, interpret=INTERPRET,
                                 config=(1024, 3))
