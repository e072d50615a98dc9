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
from jnorm._normalize import normalize_over
from jnorm._pallas import _dispatch

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
    b = None if not center or bias is None else bias[None]
    y, m = normalize_over(  # parameters broadcast to x, as the layers pass them
        x, (1,), scale[None], b, epsilon=1e-6, center=center, mask=None, axis_name=None,
        axis_index_groups=None, dtype=None, implementation="xla",
    )
    return y, m


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("center", [True, False], ids=["layer", "rms"])
@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_forward_matches_xla(shape, center, offset):
    x, scale, bias, _ = _data(shape, offset)
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
    x, scale, bias, g = _data(shape, offset, seed=1)
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


@pytest.mark.parametrize("layer", ["layer_norm", "rms_norm"])
def test_layers_use_kernels_and_keep_transforms(layer):
    """``implementation="pallas"`` (interpret mode on CPU) gives the XLA path's values under
    jit and vmap (the kernel runs there). grad and jvp go through XLA's derivative rule by
    design (the next test asserts it), so their comparison only shows they still work."""
    x, scale, bias, g = _data((4, 8, 128), 1e4 if layer == "layer_norm" else 0.0, seed=2)

    def f(x, scale, implementation="pallas"):
        if layer == "layer_norm":
            return jnorm.layer_norm(x, scale, bias, implementation=implementation)
        return jnorm.rms_norm(x, scale, implementation=implementation)

    def ref(x, scale):
        return f(x, scale, "xla")

    assert "pallas_call" in str(jax.make_jaxpr(f)(x, scale))
    assert "pallas_call" not in str(jax.make_jaxpr(ref)(x, scale))
    y = jax.jit(f)(x, scale)
    gx, gs = jax.grad(lambda x, s: jnp.sum(f(x, s) * g), argnums=(0, 1))(x, scale)
    _, ty = jax.jvp(f, (x, scale), (g, scale))
    y_ref = ref(x, scale)
    gx_ref, gs_ref = jax.grad(lambda x, s: jnp.sum(ref(x, s) * g), argnums=(0, 1))(x, scale)
    _, ty_ref = jax.jvp(ref, (x, scale), (g, scale))
    np.testing.assert_allclose(y, y_ref, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(gx, gx_ref, atol=5e-5, rtol=1e-4)
    np.testing.assert_allclose(gs, gs_ref, atol=5e-4, rtol=1e-4)
    np.testing.assert_allclose(ty, ty_ref, atol=5e-5, rtol=1e-4)
    np.testing.assert_allclose(jax.vmap(f, in_axes=(0, None))(x, scale), y_ref, atol=2e-5,
                               rtol=1e-5)


def test_kernel_serves_the_forward_and_xla_the_derivative():
    """Plain evaluation uses the kernel; grad and jvp use the XLA path, which XLA fuses with
    the derivative's loops (the kernel's separate output measured slower in training)."""
    x, scale, bias, g = _data((16, 128), 0.0)

    def f(x):
        return jnorm.layer_norm(x, scale, bias, implementation="pallas")

    assert "pallas_call" in str(jax.make_jaxpr(f)(x))
    assert "pallas_call" not in str(jax.make_jaxpr(jax.grad(lambda x: jnp.sum(f(x) * g)))(x))
    assert "pallas_call" not in str(jax.make_jaxpr(lambda x: jax.jvp(f, (x,), (g,)))(x))


def test_constant_rows_give_the_bias():
    x = jnp.full((16, 128), 10000.1, jnp.float32)
    bias = jnp.arange(128.0, dtype=jnp.float32)
    y = jnorm.layer_norm(x, jnp.ones(128, jnp.float32), bias, implementation="pallas")
    np.testing.assert_array_equal(y, jnp.broadcast_to(bias, y.shape))


@pytest.mark.parametrize(
    ("kwargs", "shape", "scale_shape", "why"),
    [
        ({"reduction_axes": 0, "feature_axes": 1}, (16, 128), (128,),
         r"statistics are over axes \(0,\)"),
        ({}, (16, 100), (100,), r"last axis has size 100.*power of two in \[128, 16384\]"),
        ({"mask": jnp.ones((16, 128), bool)}, (16, 128), (128,), r"a `mask`"),
        ({"epsilon": jnp.float32(1e-6)}, (16, 128), (128,), None),  # concrete: fine
        ({"feature_axes": (0, 1)}, (16, 128), (16, 128), r"parameters vary along other axes"),
    ],
)
def test_pallas_refuses_what_it_cannot_serve(kwargs, shape, scale_shape, why):
    x = jnp.ones(shape, jnp.float32)
    scale = jnp.ones(scale_shape, jnp.float32)
    if why is None:
        jnorm.layer_norm(x, scale, implementation="pallas", **kwargs)
        return
    with pytest.raises(ValueError, match=rf"implementation='pallas'.*{why}.*Pass "
                                         r"implementation=None \(automatic\) or 'xla'"):
        jnorm.layer_norm(x, scale, implementation="pallas", **kwargs)
    jnorm.layer_norm(x, scale, implementation="xla", **kwargs)  # XLA serves every call
    jnorm.layer_norm(x, scale, **kwargs)  # and the automatic choice falls back to it


def test_implementation_is_checked():
    with pytest.raises(ValueError, match=r"rms_norm: `implementation`='triton' is not one of"):
        jnorm.rms_norm(jnp.ones((2, 128)), implementation="triton")


def test_xla_never_uses_the_kernel(monkeypatch):
    """``implementation="xla"`` keeps XLA even where the automatic choice takes the kernel
    (a GPU host, faked: the automatic program then stages the kernel for CUDA)."""
    x = jnp.ones((8, 256), jnp.float32)
    monkeypatch.setattr(_dispatch, "gpu_present", lambda: True)
    assert "pallas_call" in str(jax.make_jaxpr(jnorm.layer_norm)(x))
    assert "pallas_call" not in str(jax.make_jaxpr(
        lambda x: jnorm.layer_norm(x, implementation="xla"))(x))


def test_suits_only_kernel_shapes(monkeypatch):
    x = jnp.zeros((8, 4096), jnp.float32)
    assert _pallas.suits(x, (1,))
    assert not _pallas.suits(x, (1,), center=False)  # RMS: XLA measured faster
    assert _pallas.suits(jnp.zeros((8, 256)), (1,))
    assert not _pallas.suits(jnp.zeros((8, 128)), (1,))  # below AUTO_MIN_D
    assert not _pallas.suits(jnp.zeros((8, 5000)), (1,))  # not a power of two
    assert not _pallas.suits(jnp.zeros((0, 4096)), (1,))  # an empty batch
    assert not _pallas.suits(x, (0,))  # not the last axis
    assert not _pallas.suits(x.astype(jnp.int32), (1,))
    monkeypatch.setenv("JNORM_PALLAS", "0")
    assert not _pallas.suits(x, (1,))


def test_a_host_without_gpu_never_stages_the_kernel():
    """Without a CUDA backend the automatic choice is XLA, whatever the shape."""
    if _dispatch.gpu_present():
        pytest.skip("this host has a GPU")
    x = jnp.zeros((8, 4096), jnp.float32)
    assert "pallas_call" not in str(jax.make_jaxpr(jnorm.layer_norm)(x))


def _nonfinite_rows(dtype=jnp.float32):
    """Rows with a NaN, +inf, -inf, both infinities, all NaN; then ordinary rows."""
    x = np.random.default_rng(3).normal(size=(8, 256)).astype(np.float32) + 3.0
    x[0, 5] = np.nan
    x[1, 0] = np.inf
    x[2, 255] = -np.inf
    x[3, 7], x[3, 9] = np.inf, -np.inf
    x[4] = np.nan
    return jnp.asarray(x, dtype)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("layer", ["layer_norm", "rms_norm"])
def test_nonfinite_rows_match_xla(layer, dtype):
    """A NaN or inf row gives what XLA gives (NaN where XLA has NaN), the other rows are
    untouched; the kernel's statistics carry the NaN too (Triton's max would drop it)."""
    x = _nonfinite_rows(dtype)
    scale = jnp.linspace(0.5, 1.5, 256, dtype=jnp.float32)
    fn = getattr(jnorm, layer)
    y = fn(x, scale, implementation="pallas")
    y_ref = fn(x, scale, implementation="xla")
    y, y_ref = np.asarray(y, np.float32), np.asarray(y_ref, np.float32)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y_ref))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(y_ref))
    assert np.isnan(y[:5] if layer == "layer_norm" else y[[0, 4]]).all()  # NaN rows: NaN
    tol = 2e-5 if dtype == jnp.float32 else 2 ** -7
    np.testing.assert_allclose(y[5:], y_ref[5:], atol=tol * 4, rtol=tol)
    _, _, _, var = _pallas.row_norm_forward(
        x, scale, None, epsilon=1e-6, center=layer == "layer_norm", interpret=INTERPRET)
    _, m = _oracle(x, scale, None, layer == "layer_norm")
    np.testing.assert_array_equal(np.isnan(var), np.isnan(m.var[:, 0]))


def test_kernels_use_no_nan_dropping_max():
    """Triton lowers ``max`` (jnp.maximum, jnp.clip) to a NaN-dropping max: the kernels'
    bodies must not contain one, or a NaN row's statistics differ between GPU and XLA."""
    x, scale, bias, g = _data((16, 256), 0.0)
    for center in (True, False):
        kw = {"epsilon": 1e-6, "center": center, "interpret": True}

        def fwd_bwd(x, g, kw=kw):
            stats = _pallas.row_norm_forward(x, scale, bias, **kw)[1:]
            return _pallas.row_norm_backward(x, g, scale, *stats, **kw)

        jaxpr = jax.make_jaxpr(fwd_bwd)(x, g)
        kernels = [e.params["jaxpr"] for e in jaxpr.eqns if e.primitive.name == "pallas_call"]
        assert len(kernels) == 2
        names = {e.primitive.name for k in kernels for e in _all_eqns(k)}
        assert "sqrt" in names or "rsqrt" in names  # the walk sees the kernels' bodies
        assert not names & {"max", "min", "clamp"}, names


def _all_eqns(jaxpr):
    """Every equation of `jaxpr` and of the jaxprs in its equations' parameters."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for e in jaxpr.eqns:
        yield e
        for v in e.params.values():
            for sub in v if isinstance(v, (tuple, list)) else (v,):
                if hasattr(getattr(sub, "jaxpr", sub), "eqns"):
                    yield from _all_eqns(sub)


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


def test_modules_pass_implementation_through():
    """jnorm's LayerNorm/RMSNorm (linen and nnx) take ``implementation`` like the functions."""
    from flax import nnx

    import jnorm.linen as jnn
    import jnorm.nnx as jnx

    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 128)), jnp.float32)
    for cls in (jnn.LayerNorm, jnn.RMSNorm):
        for impl, has_kernel in (("pallas", True), ("xla", False), (None, False)):
            m = cls(implementation=impl)
            v = m.init(jax.random.key(0), x)
            assert ("pallas_call" in str(jax.make_jaxpr(m.apply)(v, x))) == has_kernel
            np.testing.assert_allclose(m.apply(v, x), cls().apply(v, x), atol=2e-5, rtol=1e-5)
    for cls in (jnx.LayerNorm, jnx.RMSNorm):
        m = cls(128, implementation="pallas", rngs=nnx.Rngs(0))
        assert "pallas_call" in str(jax.make_jaxpr(m.__call__)(x))
        np.testing.assert_allclose(m(x), cls(128, rngs=nnx.Rngs(0))(x), atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="`implementation`='cuda'"):
        jnn.LayerNorm(implementation="cuda").init(jax.random.key(0), x)
