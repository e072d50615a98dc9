"""The statistics kernel `jnorm.moments` against float64 NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnorm
from tests.helpers import data


@pytest.mark.parametrize("axes", [0, 1, -1, (0, 2), (1, 2), (0, 1, 2), (1, 2, 3)])
def test_matches_float64(axes):
    x = data((4, 5, 6, 3), offset=3.0, spread=2.0)
    mean, var = jnorm.moments(jnp.asarray(x), axes)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(axes), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(var, x64.var(axes), rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("offset", [1e4, 1e6])
def test_offset_data_is_exact_enough(offset):
    x = data((16, 2048), offset=offset)
    mean, var = jnorm.moments(jnp.asarray(x), -1)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(var, x64.var(-1), rtol=1e-5)
    # The mean is rounded to float32 once: within half an ulp of the exact value.
    ulp = np.spacing(np.float32(offset))
    assert np.max(np.abs(np.asarray(mean, np.float64) - x64.mean(-1))) <= ulp


@pytest.mark.parametrize("offset", [1e4, 1e6])
def test_offset_data_is_exact_enough_in_stages(offset):
    """Instance norm's layout, reduced in stages (W, then H), keeps the accuracy."""
    x = data((3, 24, 40, 5), offset=offset)
    mean, var = jnorm.moments(jnp.asarray(x), (1, 2))
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(var, x64.var((1, 2)), rtol=1e-5)
    ulp = np.spacing(np.float32(offset))
    assert np.max(np.abs(np.asarray(mean, np.float64) - x64.mean((1, 2)))) <= ulp


def test_instance_layout_reduces_one_axis_at_a_time():
    """With kept axes on both sides (N and C of instance norm), the statistics and the
    gradient's reductions of full-size arrays each reduce one axis: the minor one (W) first.
    One reduction over (H, W) ran up to 2x slower on XLA:CPU (docs/benchmarks.md)."""
    import re

    shape = (2, 6, 5, 3)
    x = jnp.asarray(data(shape, offset=2.0))
    g = jnp.asarray(data(shape, seed=1))

    def loss(x, scale, bias):
        return jnp.sum(jnorm.instance_norm(x, scale, bias) * g)

    text = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(
        x, jnp.ones(3), jnp.zeros(3)).as_text()
    full = "x".join(map(str, shape))
    dims = re.findall(rf"across dimensions = \[([\d, ]+)\] : \(tensor<{full}xf32>", text)
    assert len(dims) >= 4, text  # two statistics, two sums of the cotangent
    assert set(dims) == {"2"}, dims


def test_naive_formula_would_fail_here():
    """Guard that the accuracy test above is meaningful: E[x^2] - E[x]^2 breaks on this data."""
    x = jnp.asarray(data((16, 2048), offset=1e4))
    naive = jnp.mean(x * x, -1) - jnp.mean(x, -1) ** 2
    exact = np.asarray(x, np.float64).var(-1)
    assert np.max(np.abs(np.asarray(naive) - exact)) > 1.0


def test_keepdims_and_center_false():
    x = data((3, 4, 5))
    mean, ms = jnorm.moments(jnp.asarray(x), (1, 2), center=False, keepdims=True)
    assert mean.shape == ms.shape == (3, 1, 1)
    np.testing.assert_array_equal(mean, 0.0)
    np.testing.assert_allclose(ms, (x.astype(np.float64) ** 2).mean((1, 2), keepdims=True),
                               rtol=1e-6)


def test_mask_counts_only_masked_in_and_ignores_nan():
    x = data((6, 10), offset=100.0)
    mask = np.random.default_rng(1).random((6, 10)) > 0.4
    mask[:, 0] = False  # the pivot must come from a masked-in element
    x_bad = np.where(mask, x, np.nan).astype(np.float32)
    mean, var = jnorm.moments(jnp.asarray(x_bad), 1, mask=jnp.asarray(mask))
    for i in range(6):
        sel = x[i][mask[i]].astype(np.float64)
        np.testing.assert_allclose(mean[i], sel.mean(), rtol=1e-6)
        np.testing.assert_allclose(var[i], sel.var(), rtol=1e-4, atol=1e-6)


def test_fully_masked_is_finite_zero():
    x = jnp.asarray(np.full((2, 3), np.nan, np.float32))
    mask = jnp.zeros((2, 3), bool)
    mean, var = jnorm.moments(x, 1, mask=mask)
    np.testing.assert_array_equal(mean, 0.0)
    np.testing.assert_array_equal(var, 0.0)
    g = jax.grad(lambda x: jnorm.moments(x, 1, mask=mask)[1].sum())(x)
    assert np.all(np.isfinite(g))


def test_mask_broadcasts():
    x = data((4, 3, 2))
    mask = np.array([True, False, True, True]).reshape(4, 1, 1)
    mean, var = jnorm.moments(jnp.asarray(x), (0, 1), mask=jnp.asarray(mask))
    sel = x[mask[:, 0, 0]].astype(np.float64)
    np.testing.assert_allclose(mean, sel.mean((0, 1)), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(var, sel.var((0, 1)), rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.int32, jnp.uint8, jnp.bool_])
def test_accumulates_in_float32(dtype):
    x = jnp.asarray(data((8, 300), offset=3.0, spread=2.0)).astype(dtype)
    mean, var = jnorm.moments(x, -1)
    assert mean.dtype == var.dtype == jnp.float32
    x64 = np.asarray(x.astype(jnp.float32), np.float64)
    np.testing.assert_allclose(mean, x64.mean(-1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(var, x64.var(-1), rtol=1e-5, atol=1e-6)


def test_float64_stays_float64():
    with jax.enable_x64(True):
        x = jnp.asarray(data((5, 7)).astype(np.float64))
        mean, var = jnorm.moments(x, 1)
        assert mean.dtype == var.dtype == jnp.float64
        np.testing.assert_allclose(var, np.asarray(x).var(1), rtol=1e-13)


def test_complex():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 50)) + 1j * rng.standard_normal((3, 50)) + 5).astype(
        np.complex64)
    mean, var = jnorm.moments(jnp.asarray(x), 1)
    assert mean.dtype == jnp.complex64 and var.dtype == jnp.float32
    x128 = x.astype(np.complex128)
    np.testing.assert_allclose(mean, x128.mean(1), rtol=1e-6)
    np.testing.assert_allclose(var, np.mean(np.abs(x128 - x128.mean(1, keepdims=True)) ** 2, 1),
                               rtol=1e-5)


def test_gradients_match_float64_formula():
    x = data((4, 64), offset=1e4)
    gm = jax.grad(lambda x: jnp.sum(jnorm.moments(x, 1)[0] * jnp.arange(4.0)))(jnp.asarray(x))
    gv = jax.grad(lambda x: jnp.sum(jnorm.moments(x, 1)[1]))(jnp.asarray(x))
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(gm, np.broadcast_to(np.arange(4.0)[:, None] / 64, x.shape),
                               rtol=1e-6)
    np.testing.assert_allclose(gv, 2 * (x64 - x64.mean(1, keepdims=True)) / 64, atol=1e-6)


def test_group_layout_is_staged_on_cpu_only(monkeypatch):
    """Group norm's two-stage sum is an XLA:CPU measure; on GPU one reduction measured faster.
    Instance norm's per-axis stages measured faster on both, so they stay everywhere."""
    from jnorm._plan import stages

    group, instance = ((1, 2, 4), 5), ((1, 2), 4)
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert stages(*group) == ((1, 2), (4,))
    assert stages(*instance) == ((2,), (1,))
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert stages(*group) == ((1, 2, 4),)
    assert stages(*instance) == ((2,), (1,))


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_group_norm_gradient_follows_the_staging(monkeypatch, backend):
    """The derivative rule's broadcasts stage exactly when the statistics do (barriers
    separate the stages), so a GPU gets group norm with no staging at all."""
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 64))
    scale = jnp.ones(64)

    def loss(x, scale):
        return jnp.sum(jnorm.group_norm(x, scale, num_groups=8) ** 2)

    text = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, scale).as_text()
    assert ("optimization_barrier" in text) == (backend == "cpu")


@pytest.mark.parametrize(
    "shape, axes",
    [((4, 6, 5, 8), (0, 1, 2)), ((4, 6, 5, 12), (3,)), ((4, 6, 5, 8), (1, 2)),
     ((4, 6, 5, 2, 4), (1, 2, 4)), ((4, 6, 5, 8), (1, 2, 3))],
    ids=["batch", "layer", "instance", "group", "per-example"],
)
def test_shifted_pair_is_exact_under_jit(shape, axes):
    """The statistics every layer keeps, ``shift + mean_shifted``, compiled, at 1e6 + 2 N(0, 1)
    in blocks whose size is no power of two: within a few ulps of the pair's small part of the
    float64 mean (rounding the mean to float32 alone errs by up to 0.03 there). XLA recomputes
    the shift in every loop and contracted its product into fused multiply-adds in some of
    them, so the pair once erred by up to half an ulp of 1e6 under jit (jnorm._stats.settle)."""
    from jnorm._stats import shifted_moments

    rng = np.random.default_rng(0)
    for _ in range(3):
        x = (1e6 + 2 * rng.standard_normal(shape)).astype(np.float32)
        m = jax.jit(lambda v: shifted_moments(v, axes))(jnp.asarray(x))
        pair = np.asarray(m.shift, np.float64) + np.asarray(m.mean_shifted, np.float64)
        err = np.abs(pair - x.astype(np.float64).mean(axes, keepdims=True))
        # The corrected two-pass mean: its relative error on the spread (2) is a few gamma.
        n = np.prod([shape[a] for a in axes])
        assert err.max() <= 2 * n * 2.0**-24 * 2, err.max()


def test_computed_once_is_the_same_value_and_derivative():
    """``computed_once`` divides by an exact 1: every float comes back bitwise (signed zeros,
    infinities, NaN, complex parts), eagerly and compiled, and the derivative is the identity.
    A subnormal may come back as a zero of its sign: XLA:CPU flushes subnormals in arithmetic
    (``v * 1.0`` does the same), as in every loop that uses the statistics."""
    from jnorm._stats import computed_once

    tiny = np.finfo(np.float32).smallest_subnormal * 7
    v = np.array([0.0, -0.0, 1.5, -3e38, np.inf, -np.inf, np.nan, 1e6 + 0.0625, tiny, -tiny],
                 np.float32)
    normal = slice(0, 8)
    for f in (computed_once, jax.jit(computed_once)):
        out = np.asarray(f(jnp.asarray(v)))
        assert out[normal].tobytes() == v[normal].tobytes()
        assert all(o in (t, 0.0) for o, t in zip(out[8:], v[8:]))
        assert np.array_equal(np.signbit(out), np.signbit(v))
        z = np.zeros(4, np.complex64)
        z.real, z.imag = v[:4], v[4:8]
        oz = np.asarray(f(jnp.asarray(z)))
        assert oz.tobytes() == z.tobytes()
    w = jnp.asarray([0.5, -2.0, 3.0])
    assert np.array_equal(jax.grad(lambda u: jnp.sum(computed_once(u) * w))(w), w)
    assert np.array_equal(jax.jvp(computed_once, (w,), (w,))[1], w)


def test_settle_rounds_the_value_and_passes_the_derivative_unrounded():
    """``settle`` rounds a pivot to one mantissa bit less; its derivative is the identity, so a
    gradient through the relative mean keeps every bit (``reduce_precision``'s own rule would
    round the tangent too)."""
    from jnorm._stats import settle

    v = jnp.asarray([1.0 + 2.0**-23, 3.0, -7.0 - 2.0**-20], jnp.float32)  # odd last bit first
    t = jnp.asarray([1.0 + 2.0**-23, -1.0 - 2.0**-23, 0.25 + 2.0**-25], jnp.float32)
    out, tangent = jax.jvp(settle, (v,), (t,))
    assert np.asarray(out)[0] != np.asarray(v)[0]  # the odd last bit is rounded away
    np.testing.assert_array_equal(np.asarray(out)[1:], np.asarray(v)[1:])
    assert np.asarray(tangent).tobytes() == np.asarray(t).tobytes()
    assert np.asarray(jax.grad(lambda u: jnp.sum(settle(u) * t))(v)).tobytes() == \
        np.asarray(t).tobytes()
    for f in (settle, jax.jit(settle)):
        z = jnp.asarray([1.0 + 2.0**-23 + 3j], jnp.complex64)
        assert np.asarray(f(z)).real[0] == 1.0 and np.asarray(f(z)).imag[0] == 3.0
