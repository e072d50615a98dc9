"""Local response normalization and spectral normalization.

LRN is checked against float64 loops written from each convention's formula (PyTorch's and
TensorFlow's) and against a transcription of PyTorch's pad + average-pool implementation;
spectral norm against ``np.linalg.svd`` and a float64 transcription of the power iteration, and
its linen wrapper against ``flax.linen.SpectralNorm``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jnorm
import jnorm.linen as jnn

# ------------------------------------------------------------------ float64 references: LRN


def ref_lrn_torch(x, size, alpha, beta, k, axis=-1):
    """torch.nn.LocalResponseNorm: window c - size//2 .. c + (size-1)//2, alpha / size."""
    x = np.moveaxis(x, axis, -1)
    c = x.shape[-1]
    out = np.empty_like(x)
    for i in range(c):
        lo, hi = max(0, i - size // 2), min(c - 1, i + (size - 1) // 2)
        s = (x[..., lo:hi + 1] ** 2).sum(-1)
        out[..., i] = x[..., i] / (k + alpha / size * s) ** beta
    return np.moveaxis(out, -1, axis)


def ref_lrn_tensorflow(x, depth_radius, bias, alpha, beta):
    """tf.nn.local_response_normalization: window c - r .. c + r, alpha not divided."""
    c = x.shape[-1]
    out = np.empty_like(x)
    for i in range(c):
        lo, hi = max(0, i - depth_radius), min(c - 1, i + depth_radius)
        s = (x[..., lo:hi + 1] ** 2).sum(-1)
        out[..., i] = x[..., i] / (bias + alpha * s) ** beta
    return out


def torch_lrn_transcribed(x_nc, size, alpha, beta, k):
    """torch.nn.functional.local_response_norm, line by line: zero-pad the squared input by
    (size // 2, (size - 1) // 2) along C, average-pool a window of `size` (count_include_pad)."""
    div = x_nc * x_nc
    pad = [(0, 0)] * x_nc.ndim
    pad[1] = (size // 2, (size - 1) // 2)
    div = np.pad(div, pad)
    c = x_nc.shape[1]
    div = np.stack([div[:, i:i + size].mean(1) for i in range(c)], 1)
    return x_nc / (div * alpha + k) ** beta


def _x(shape, seed=0, scale=1.0):
    return np.random.default_rng(seed).normal(size=shape) * scale


# ----------------------------------------------------------------------------------- LRN


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 9])
def test_lrn_torch_convention_matches_float64_reference(size):
    x = _x((2, 3, 3, 6), scale=3.0)
    ref = ref_lrn_torch(x, size, 0.5, 0.75, 1.5)
    with jax.enable_x64(True):
        y = jnorm.local_response_norm(jnp.asarray(x), size=size, alpha=0.5, beta=0.75, k=1.5)
        assert y.dtype == jnp.float64
        np.testing.assert_allclose(y, ref, rtol=1e-13)
    # the loop is PyTorch's implementation (even sizes included: one more channel before c)
    x_nc = np.moveaxis(x, -1, 1)
    np.testing.assert_allclose(
        np.moveaxis(torch_lrn_transcribed(x_nc, size, 0.5, 0.75, 1.5), 1, -1), ref, rtol=1e-13
    )


@pytest.mark.parametrize("depth_radius", [0, 1, 2, 5])
def test_lrn_tensorflow_convention_matches_float64_reference(depth_radius):
    x = _x((4, 7), seed=1, scale=2.0)
    with jax.enable_x64(True):
        xj = jnp.asarray(x)
        y = jnorm.local_response_norm(xj, **jnorm.lrn_tensorflow_args(depth_radius))  # TF dflt
        np.testing.assert_allclose(y, ref_lrn_tensorflow(x, depth_radius, 1.0, 1.0, 0.5),
                                   rtol=1e-13)
        y = jnorm.local_response_norm(
            xj, size=2 * depth_radius + 1, alpha=1e-2, beta=0.75, k=2.0, convention="tensorflow")
        np.testing.assert_allclose(y, ref_lrn_tensorflow(x, depth_radius, 2.0, 1e-2, 0.75),
                                   rtol=1e-13)
        # the two conventions differ only by alpha / size (odd sizes: same window)
        s = 2 * depth_radius + 1
        yt = jnorm.local_response_norm(xj, size=s, alpha=0.3 * s, convention="torch")
        yf = jnorm.local_response_norm(xj, size=s, alpha=0.3, convention="tensorflow")
        np.testing.assert_allclose(yt, yf, rtol=1e-13)
    # the paper (Krizhevsky et al. 2012, Sec. 3.3): k=2, n=5, alpha=1e-4, beta=0.75
    assert jnorm.lrn_tensorflow_args(2, bias=2.0, alpha=1e-4, beta=0.75) == {
        "size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0, "convention": "tensorflow"}


def test_lrn_float32_bfloat16_accumulate_in_float32():
    x = _x((2, 5, 5, 16), seed=2, scale=30.0)
    ref = ref_lrn_torch(x, 5, 1e-2, 0.75, 1.0)
    y32 = jnorm.local_response_norm(jnp.asarray(x, jnp.float32), alpha=1e-2)
    assert y32.dtype == jnp.float32
    np.testing.assert_allclose(y32, ref, rtol=2e-6, atol=1e-6)
    xb = jnp.asarray(x, jnp.bfloat16)
    yb = jnorm.local_response_norm(xb, alpha=1e-2)
    assert yb.dtype == jnp.bfloat16
    # reference from the rounded input: the only error left is the final rounding to bf16
    refb = ref_lrn_torch(np.asarray(xb, np.float64), 5, 1e-2, 0.75, 1.0)
    np.testing.assert_allclose(np.asarray(yb, np.float64), refb, rtol=2 ** -8, atol=1e-6)
    yi = jnorm.local_response_norm(jnp.arange(6).reshape(1, 6), size=3)
    assert yi.dtype == jnp.float32


def test_lrn_channel_first_jit_vmap():
    x = jnp.asarray(_x((3, 8, 4, 4), seed=3), jnp.float32)  # [N, C, H, W]
    f = jax.jit(lambda x: jnorm.local_response_norm(x, size=3, alpha=0.1, feature_axes=1))
    y = f(x)
    y_last = jnorm.local_response_norm(jnp.moveaxis(x, 1, -1), size=3, alpha=0.1)
    np.testing.assert_allclose(y, jnp.moveaxis(y_last, -1, 1), rtol=1e-6)
    np.testing.assert_allclose(
        y, ref_lrn_torch(np.asarray(x, np.float64), 3, 0.1, 0.75, 1.0, axis=1), rtol=1e-5)
    yv = jax.vmap(lambda xi: jnorm.local_response_norm(xi, size=3, alpha=0.1, feature_axes=0))(x)
    np.testing.assert_allclose(yv, y, rtol=1e-6)


def test_lrn_gradients_match_finite_differences():
    x = _x((2, 3, 5), seed=4)
    with jax.enable_x64(True):
        for conv in ("torch", "tensorflow"):
            def f(x, conv=conv):
                return jnorm.local_response_norm(x, size=3, alpha=0.7, beta=0.75, k=1.0,
                                                 convention=conv)

            check_grads(f, (jnp.asarray(x),), order=2, modes=["fwd", "rev"], atol=1e-6,
                        rtol=1e-6)
        # the derivative of the reference formula, by autodiff of a jnp transcription
        w = jnp.asarray(_x((2, 3, 5), seed=5))

        def ref(x):
            sq = jnp.pad(x * x, ((0, 0), (0, 0), (1, 1)))
            s = sq[..., :-2] + sq[..., 1:-1] + sq[..., 2:]
            return jnp.sum(w * x / (1.0 + 0.7 / 3 * s) ** 0.75)

        g = jax.grad(lambda x: jnp.sum(w * jnorm.local_response_norm(x, size=3, alpha=0.7)))
        np.testing.assert_allclose(g(jnp.asarray(x)), jax.grad(ref)(jnp.asarray(x)), rtol=1e-12)


def test_lrn_errors_and_linen():
    x = jnp.ones((2, 4))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="`size`"):
            jnorm.local_response_norm(x, size=bad)
    with pytest.raises(ValueError, match="`size`=4 is even"):
        jnorm.local_response_norm(x, size=4, convention="tensorflow")
    for name in ("beta", "alpha", "k"):
        with pytest.raises(ValueError, match=f"`{name}`"):
            jnorm.local_response_norm(x, **{name: -1.0})
    with pytest.raises(ValueError, match="`beta`"):
        jnorm.local_response_norm(x, beta=float("nan"))
    with pytest.raises(ValueError, match="`convention`"):
        jnorm.local_response_norm(x, convention="caffe")
    with pytest.raises(ValueError, match="feature_axes"):
        jnorm.local_response_norm(x, feature_axes=2)
    with pytest.raises(ValueError, match="depth_radius"):
        jnorm.lrn_tensorflow_args(-1)
    xs = jnp.asarray(_x((2, 6, 3, 3), seed=6), jnp.float32)
    m = jnn.LocalResponseNorm(size=4, alpha=0.2, beta=0.6, k=2.0, feature_axes=1)
    assert m.init(jax.random.key(0), xs) == {}
    np.testing.assert_array_equal(
        m.apply({}, xs),
        jnorm.local_response_norm(xs, size=4, alpha=0.2, beta=0.6, k=2.0, feature_axes=1))
    mt = jnn.LocalResponseNorm(**jnorm.lrn_tensorflow_args(1), dtype=jnp.bfloat16)
    assert mt.apply({}, xs).dtype == jnp.bfloat16


@pytest.mark.parametrize("dtype", [jnp.complex64, jnp.complex128])
def test_lrn_refuses_complex_input(dtype):
    """A complex input was cast to float32 (imaginary part dropped, a real result returned as
    complex): it is refused at trace time, naming `x` and the alternatives."""
    x = jnp.ones((2, 4), jnp.complex64) * (1 + 1j)
    with jax.enable_x64(dtype == jnp.complex128):
        with pytest.raises(TypeError, match=r"local_response_norm: `x` is complex.*jnp\.abs"):
            jax.eval_shape(lambda: jnorm.local_response_norm(x.astype(dtype), size=3))
        with pytest.raises(TypeError, match=r"`x` is complex"):
            jnn.LocalResponseNorm(size=3).apply({}, x.astype(dtype))


# ----------------------------------------------------------------------- spectral norm


def ref_power_iteration(w2d, u, n_steps, eps=1e-12):
    """Miyato et al. 2018, Algorithm 1, in flax's [fan-in, O] layout (W_paper = w2d.T)."""

    def nrm(z):
        return z / np.sqrt((z * z).sum() + eps)

    v = nrm(w2d @ u)
    for t in range(n_steps):
        u = nrm(w2d.T @ v)
        if t < n_steps - 1:
            v = nrm(w2d @ u)
    return u, v, v @ w2d @ u


def test_spectral_norm_matches_power_iteration_and_svd():
    w = _x((3, 3, 4, 8), seed=10)
    w2d = w.reshape(-1, 8)
    smax = np.linalg.svd(w2d, compute_uv=False)[0]
    u0 = _x((8,), seed=11)
    u0 = u0 / np.linalg.norm(u0)
    with jax.enable_x64(True):
        for n in (0, 1, 3):
            w_sn, u, sigma = jnorm.spectral_norm(jnp.asarray(w), jnp.asarray(u0), n_steps=n)
            ru, _, rs = ref_power_iteration(w2d, u0, n)
            np.testing.assert_allclose(u, ru if n else u0, rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(sigma, rs, rtol=1e-12)
            np.testing.assert_allclose(w_sn, w / rs, rtol=1e-12)
        assert abs(float(sigma) - smax) / smax > 1e-4  # a few steps from random u: not there
        # carried state converges to the largest singular value
        u = jnp.asarray(u0)
        step = jax.jit(lambda w, u: jnorm.spectral_norm(w, u))
        for _ in range(300):
            w_sn, u, sigma = step(jnp.asarray(w), u)
        np.testing.assert_allclose(sigma, smax, rtol=1e-12)
        np.testing.assert_allclose(np.linalg.svd(np.asarray(w_sn).reshape(-1, 8),
                                                 compute_uv=False)[0], 1.0, rtol=1e-12)
        # spectral_norm_init: exact at step 0, and a fixed point of the iteration
        ui = jnorm.spectral_norm_init(jnp.asarray(w))
        _, u1, s1 = jnorm.spectral_norm(jnp.asarray(w), ui)
        np.testing.assert_allclose(s1, smax, rtol=1e-13)
        np.testing.assert_allclose(jnp.abs(u1 @ ui), 1.0, rtol=1e-13)


def test_spectral_norm_gradient_treats_u_v_as_constants():
    w = _x((6, 4), seed=12)
    r = _x((6, 4), seed=13)
    with jax.enable_x64(True):
        wj, rj = jnp.asarray(w), jnp.asarray(r)
        u0 = jnorm.spectral_norm_init(wj)
        ru, rv, _ = ref_power_iteration(w, np.asarray(u0), 1)

        def loss(w):
            return jnp.sum(jnp.sin(jnorm.spectral_norm(w, u0)[0]) * rj)

        def ref_loss(w):  # the paper's W / (v^T W u) with u, v constants
            return jnp.sum(jnp.sin(w / (jnp.asarray(rv) @ w @ jnp.asarray(ru))) * rj)

        def exact_loss(w):  # W / sigma_max(W), differentiated through the SVD
            return jnp.sum(jnp.sin(w / jnp.linalg.svd(w, compute_uv=False)[0]) * rj)

        g = jax.grad(loss)(wj)
        np.testing.assert_allclose(g, jax.grad(ref_loss)(wj), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(g, jax.grad(exact_loss)(wj), rtol=1e-9, atol=1e-12)
        # u is state, not a differentiable input; forward mode works too
        assert float(jnp.abs(jax.grad(lambda u: jnp.sum(jnorm.spectral_norm(wj, u)[0]))(u0))
                     .max()) == 0.0
        jax.jvp(lambda w: jnorm.spectral_norm(w, u0)[0], (wj,), (rj,))


def test_spectral_norm_dtypes_zero_kernel_and_errors():
    w = jnp.asarray(_x((5, 3), seed=14), jnp.bfloat16)
    w_sn, u, sigma = jnorm.spectral_norm(w, jnorm.spectral_norm_init(w))
    assert (w_sn.dtype, u.dtype, sigma.dtype) == (jnp.bfloat16, jnp.float32, jnp.float32)
    smax = np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)[0]
    np.testing.assert_allclose(sigma, smax, rtol=1e-5)
    z, _, sz = jnorm.spectral_norm(jnp.zeros((4, 3)), jnp.ones(3) / np.sqrt(3))
    assert float(sz) == 0.0 and not np.isnan(np.asarray(z)).any()
    assert not np.isnan(np.asarray(jax.grad(
        lambda k: jnp.sum(jnorm.spectral_norm(k, jnp.ones(3))[0]))(jnp.zeros((4, 3))))).any()
    with pytest.raises(ValueError, match=r"`u` has shape \(4,\)"):
        jnorm.spectral_norm(jnp.ones((4, 3)), jnp.ones(4))
    with pytest.raises(ValueError, match="n_steps"):
        jnorm.spectral_norm(jnp.ones((4, 3)), jnp.ones(3), n_steps=-1)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        jnorm.spectral_norm(jnp.ones(3), jnp.ones(3))


@pytest.mark.parametrize("layer", [nn.Dense(5), nn.Conv(6, (3, 3))],
                         ids=["dense", "conv"])
def test_spectral_norm_linen_wrapper(layer):
    x = jnp.asarray(_x((2, 5, 5, 3), seed=15), jnp.float32)
    m = jnn.SpectralNorm(layer)
    y0, v = m.init_with_output(jax.random.key(0), x, update_stats=False)
    k = v["params"]["layer_instance"]["kernel"]
    k2d = np.asarray(k, np.float64).reshape(-1, k.shape[-1])
    smax = np.linalg.svd(k2d, compute_uv=False)[0]
    stats = v["batch_stats"]
    assert stats["layer_instance/kernel/u"].shape == (1, k.shape[-1])  # flax's variables
    # exact from step 0; params hold the layer's own (unnormalized) kernel
    np.testing.assert_allclose(stats["layer_instance/kernel/sigma"], smax, rtol=1e-5)
    plain = {"kernel": k / smax, "bias": v["params"]["layer_instance"]["bias"]}
    # Two float32 layers whose kernels differ by the factor sigma / smax (relative error
    # <= 1e-5, asserted above) differ by <= 1e-5 |y - b| plus both sums' rounding, at most
    # fan_in * u * sum |k / sigma| |x| each (any summation order): the tolerances below.
    fan_in = k2d.shape[0]
    absolute = {"kernel": jnp.abs(k) / smax, "bias": jnp.zeros_like(plain["bias"])}
    atol = 2 * fan_in * 2.0**-24 * float(jnp.max(layer.apply({"params": absolute}, jnp.abs(x))))
    np.testing.assert_allclose(y0, layer.apply({"params": plain}, x), rtol=1e-5, atol=atol)
    y, upd = jax.jit(lambda v: m.apply(v, x, update_stats=True, mutable=["batch_stats"]))(v)
    np.testing.assert_allclose(y, y0, rtol=1e-5, atol=atol)
    np.testing.assert_allclose(upd["batch_stats"]["layer_instance/kernel/sigma"], smax,
                               rtol=1e-5)
    # update_stats=False leaves the state as it was
    _, same = m.apply(v, x, update_stats=False, mutable=["batch_stats"])
    np.testing.assert_array_equal(same["batch_stats"]["layer_instance/kernel/u"],
                                  stats["layer_instance/kernel/u"])
    # same iteration as flax's: flax's variables (random u) give flax's outputs and updates
    fm = nn.SpectralNorm(layer)
    fv = fm.init(jax.random.key(1), x, update_stats=False)
    fy, fupd = fm.apply(fv, x, update_stats=True, mutable=["batch_stats"])
    jy, jupd = m.apply(fv, x, update_stats=True, mutable=["batch_stats"])
    np.testing.assert_allclose(jy, fy, rtol=1e-5, atol=atol)
    for name in ("u", "sigma"):
        key = f"layer_instance/kernel/{name}"
        np.testing.assert_allclose(jupd["batch_stats"][key], fupd["batch_stats"][key],
                                   rtol=1e-5, atol=1e-6)
    # ... and flax's random start leaves its normalized kernel's spectral norm away from 1
    fk = np.asarray(fv["params"]["layer_instance"]["kernel"], np.float64)
    f_norm = np.linalg.svd(fk.reshape(-1, fk.shape[-1]) / float(fupd["batch_stats"][
        "layer_instance/kernel/sigma"]), compute_uv=False)[0]
    ours = np.linalg.svd(k2d / float(upd["batch_stats"]["layer_instance/kernel/sigma"]),
                         compute_uv=False)[0]
    assert abs(ours - 1) < 1e-5 < abs(f_norm - 1), (ours, f_norm)
    # gradients reach the layer's params
    g = jax.grad(lambda p: jnp.sum(m.apply({"params": p, "batch_stats": stats}, x,
                                           update_stats=False) ** 2))(v["params"])
    assert float(jnp.abs(g["layer_instance"]["kernel"]).sum()) > 0
