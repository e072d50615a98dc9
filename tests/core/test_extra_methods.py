"""Whitening BN, IterNorm, batch renorm, FRN/TLU, EvoNorm and weight transforms.

Each method is checked against a float64 NumPy transcription of its paper's equations, then for
float32/bfloat16 under jit, vmap and grad; gradients against finite differences in float64.
"""

from __future__ import annotations

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jnorm
import jnorm.linen as jnn


def _data(shape, seed=0, mix=True):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape)
    if mix:  # correlated features with different scales and offsets
        c = shape[-1]
        x = x @ (np.eye(c) + 0.7 * rng.normal(size=(c, c))) + rng.normal(size=c) * 3
    return x


def _whitened_atol(x2d, y, group_size=None):
    """Elementwise float32 tolerance of a whitened output from jnorm.iter_norm's bound.

    The output covariance is within b = (d + sqrt(m)) u / s of the float64 one (s: smallest
    eigenvalue over trace of the group's covariance). With U's error dU nearly symmetric, the
    error F = dU Sigma^{1/2} of a whitened row obeys ||F||_F <= ||C - C_T||_F <= sqrt(d) b, so an
    element of a row y_r is off by at most ||F||_2 ||y_r||_2 <= d b max|y|.
    """
    x = np.asarray(x2d, np.float64)
    m, c = x.shape
    g = group_size or c
    worst = 0.0
    for k in range(c // g):
        xg = x[:, k * g:(k + 1) * g]
        xc = xg - xg.mean(0)
        lam = np.linalg.eigvalsh(xc.T @ xc / m)
        worst = max(worst, g * (g + np.sqrt(m)) * 2.0**-24 * lam.sum() / lam[0])
    return worst * float(np.abs(np.asarray(y, np.float64)).max())


# ------------------------------------------------------------------ float64 paper references


def ref_zca(x2d, eps, group_size):
    """Huang et al. 2018, Algorithm 1, per group (rows are examples)."""
    m, c = x2d.shape
    g = group_size or c
    out = np.empty_like(x2d)
    us = []
    mu = x2d.mean(0)
    for k in range(c // g):
        xc = (x2d[:, k * g:(k + 1) * g] - mu[k * g:(k + 1) * g]).T  # [G, m]
        sigma = xc @ xc.T / m + eps * np.eye(g)
        lam, d = np.linalg.eigh(sigma)
        u = d @ np.diag(lam ** -0.5) @ d.T
        out[:, k * g:(k + 1) * g] = (u @ xc).T
        us.append(u)
    return out, mu, np.stack(us)


def ref_iternorm(x2d, eps, iterations):
    """Huang et al. 2019, Algorithm 1, the paper's (uncoupled) iteration."""
    m, c = x2d.shape
    xc = (x2d - x2d.mean(0)).T
    sigma = xc @ xc.T / m + eps * np.eye(c)
    tr = np.trace(sigma)
    sn = sigma / tr
    p = np.eye(c)
    for _ in range(iterations):
        p = 0.5 * (3 * p - np.linalg.matrix_power(p, 3) @ sn)
    return ((p / np.sqrt(tr)) @ xc).T


def ref_renorm(x2d, run_mean, run_var, gamma, beta, eps, r_max, d_max):
    """Ioffe 2017, Algorithm 1 (training output)."""
    mu_b = x2d.mean(0)
    sig_b = np.sqrt(x2d.var(0) + eps)
    sig = np.sqrt(run_var + eps)
    r = np.clip(sig_b / sig, 1 / r_max, r_max)
    d = np.clip((mu_b - run_mean) / sig, -d_max, d_max)
    return gamma * ((x2d - mu_b) / sig_b * r + d) + beta, r, d


# ------------------------------------------------------------------------------- whitening


@pytest.mark.parametrize("group_size", [None, 2])
def test_zca_matches_float64_reference_and_whitens(group_size):
    x = _data((64, 6))
    with jax.enable_x64(True):
        y, state = jnorm.decorrelated_batch_norm(
            jnp.asarray(x), jnorm.WhiteningStats.init(6, group_size=group_size, dtype=jnp.float64),
            training=True, group_size=group_size, epsilon=0.0, momentum=0.0,
        )
        ref, mu, us = ref_zca(x, 0.0, group_size)
        np.testing.assert_allclose(y, ref, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(state.mean, mu, rtol=1e-12)
        np.testing.assert_allclose(state.whitening, us, rtol=1e-9, atol=1e-9)
    g = group_size or 6
    cov = np.cov(np.asarray(y).T, bias=True)
    for k in range(6 // g):
        blk = cov[k * g:(k + 1) * g, k * g:(k + 1) * g]
        np.testing.assert_allclose(blk, np.eye(g), atol=1e-10)
    if group_size is not None:  # groups are whitened separately: cross-group terms remain
        assert np.abs(cov[:2, 2:]).max() > 0.05


def test_zca_float32_with_spatial_axes_and_nchw():
    x = _data((8, 3, 3, 4), seed=1).astype(np.float32)
    y, _ = jnorm.decorrelated_batch_norm(jnp.asarray(x), jnorm.WhiteningStats.init(4),
                                         training=True, epsilon=0.0)
    ref, _, _ = ref_zca(x.reshape(-1, 4).astype(np.float64), 0.0, None)
    atol = _whitened_atol(x.reshape(-1, 4), ref)
    np.testing.assert_allclose(y.reshape(-1, 4), ref, atol=atol)
    # channels on axis 1: same result, transposed (another layout may sum in another order)
    y1, _ = jnorm.decorrelated_batch_norm(jnp.asarray(np.moveaxis(x, -1, 1)),
                                          jnorm.WhiteningStats.init(4), training=True,
                                          epsilon=0.0, feature_axes=1)
    np.testing.assert_allclose(np.moveaxis(np.asarray(y1), 1, -1), y, atol=2 * atol)


def test_iternorm_matches_paper_iteration_and_converges_to_zca():
    x = _data((128, 5), seed=2)
    with jax.enable_x64(True):
        xj = jnp.asarray(x)
        s = jnorm.WhiteningStats.init(5, dtype=jnp.float64)
        y5, _ = jnorm.iter_norm(xj, s, training=True, iterations=5, epsilon=1e-3)
        np.testing.assert_allclose(y5, ref_iternorm(x, 1e-3, 5), rtol=1e-9, atol=1e-9)
        zca, _ = jnorm.decorrelated_batch_norm(xj, s, training=True, epsilon=1e-3)
        errs = [float(jnp.abs(jnorm.iter_norm(xj, s, training=True, iterations=t,
                                              epsilon=1e-3)[0] - zca).max())
                for t in (1, 3, 6, 12, 40)]
    assert all(b < a for a, b in itertools.pairwise(errs[:4])), errs
    assert errs[-1] < 1e-8, errs
    assert errs[0] > 0.1  # T=1 is far from white: the test can tell them apart


# IterNorm's float32 accuracy (the bound in jnorm.whitening_matrix's docstring). With s the
# smallest eigenvalue of the covariance over its trace (s >= 1 / (1 + (d - 1) kappa)) and u the
# unit roundoff, the output covariance C = U Sigma U^T obeys
#     ||C - C_T||_2 <= d u / s              (rounding of the iteration, Sigma given),
#     ||C - C_T||_2 <= (d + sqrt(m)) u / s  (iter_norm: Sigma formed from m float32 rows),
#     ||C_T - I||_2 =  tau_T(s)             (truncation after T steps, exact arithmetic),
# where C_T is the same algorithm in float64 and I what exact ZCA gives. The tolerances below are
# these bounds, not measurements: over d <= 16, kappa <= 1e5, T <= 60 the measured ratio
# ||C - C_T||_2 / (u / s) was <= 0.8 with XLA's, BLAS's and sequential float32 matmuls (forward
# and reverse order), and <= 4.5 with sequential covariance sums of 4096 rows (d = 4).

U32 = 2.0**-24  # float32 unit roundoff


def _ns_truncation(s, iterations):
    """tau_T(s) = 1 - e_T^2, e_0 = sqrt(s), e_k+1 = e_k (3 - e_k^2) / 2 (exact arithmetic)."""
    e = np.sqrt(s)
    for _ in range(iterations):
        e = e * (3 - e * e) / 2
    return 1 - e * e


def _ns_float64(cov, iterations, dtype=np.float64, matmul=np.matmul):
    """IterNorm's coupled Newton-Schulz iteration in NumPy (float64 reference by default)."""
    cov = cov.astype(dtype)
    tr = np.trace(cov)
    y, eye = cov / tr, np.eye(len(cov), dtype=dtype)
    z = eye
    for _ in range(iterations):
        t = (dtype(1.5) * eye - dtype(0.5) * matmul(z, y)).astype(dtype)
        y, z = matmul(y, t), matmul(t, z)
    return z / np.sqrt(tr)


def _sequential_matmul(a, b, reverse=False):
    """float32 product summed one term at a time, in a fixed order (another CPU's kernel)."""
    out = np.zeros((a.shape[0], b.shape[1]), np.float32)
    ks = range(a.shape[1] - 1, -1, -1) if reverse else range(a.shape[1])
    for k in ks:
        out = (out + np.outer(a[:, k], b[k]).astype(np.float32)).astype(np.float32)
    return out


def _spd(d, kappa, seed):
    """A float32 covariance with condition number kappa (eigenvalues log-spaced 1 .. 1/kappa)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    c = (q * np.geomspace(1.0, 1.0 / kappa, d)) @ q.T
    return ((c + c.T) / 2).astype(np.float32)


@pytest.mark.parametrize("d", [4, 16])
@pytest.mark.parametrize("kappa", [1e1, 1e3, 1e5])
@pytest.mark.parametrize("iterations", [3, 8, 30])
def test_newton_schulz_float32_error_within_truncation_plus_rounding_bound(d, kappa, iterations):
    """whitening_matrix(newton_schulz) in float32 against the same algorithm in float64 and
    exact ZCA (identity output covariance), on the same float32 covariance, also perturbed by
    one ulp (a different rounding path, as another CPU's kernels would take)."""
    rng = np.random.default_rng(int(kappa) + d + iterations)
    c0 = _spd(d, kappa, seed=d)
    for trial in range(3):
        c32 = c0 if trial == 0 else np.nextafter(
            c0, np.where(rng.random(c0.shape) < 0.5, -np.inf, np.inf)).astype(np.float32)
        c32 = np.triu(c32) + np.triu(c32, 1).T  # symmetric again
        cov = c32.astype(np.float64)
        lam = np.linalg.eigvalsh(cov)
        s = lam[0] / lam.sum()
        assert s >= 1 / (1 + (d - 1) * np.linalg.cond(cov)) * (1 - 1e-9)
        u_t = _ns_float64(cov, iterations)
        c_t = u_t @ cov @ u_t.T  # float64 reference: C_T
        tau = _ns_truncation(s, iterations)
        # truncation: the float64 iteration's distance from ZCA's identity is tau_T(s)
        assert abs(np.linalg.norm(c_t - np.eye(d), 2) - tau) <= d * 2.0**-53 / s
        got = jnorm.whitening_matrix(jnp.asarray(c32), method="newton_schulz",
                                     iterations=iterations)
        assert got.dtype == jnp.float32 and np.isfinite(np.asarray(got)).all()
        c = np.asarray(got, np.float64) @ cov @ np.asarray(got, np.float64).T
        bound = d * U32 / s
        assert np.linalg.norm(c - c_t, 2) <= bound, (np.linalg.norm(c - c_t, 2), bound)
        assert np.linalg.norm(c - np.eye(d), 2) <= tau + bound
    if iterations == 3 and kappa >= 1e3:  # far from white: the test sees the truncation
        assert tau > 0.5


@pytest.mark.parametrize("kappa", [1e1, 1e3, 1e5])
@pytest.mark.parametrize("order", ["blas", "forward", "reverse"])
def test_newton_schulz_bound_holds_for_other_summation_orders(kappa, order):
    """The documented bound is a property of the algorithm, not of this CPU's matmul kernel:
    the same iteration in float32 with BLAS's product and with products summed one term at a
    time (forward, reverse) meets it too."""
    matmul = {"blas": np.matmul, "forward": _sequential_matmul,
              "reverse": lambda a, b: _sequential_matmul(a, b, reverse=True)}[order]
    d, iterations = 6, 40
    for seed in range(3):
        c32 = _spd(d, kappa, seed)
        cov = c32.astype(np.float64)
        lam = np.linalg.eigvalsh(cov)
        s = lam[0] / lam.sum()
        u_t = _ns_float64(cov, iterations)
        u32 = _ns_float64(c32, iterations, dtype=np.float32, matmul=matmul).astype(np.float64)
        err = np.linalg.norm(u32 @ cov @ u32.T - u_t @ cov @ u_t.T, 2)
        assert err <= d * U32 / s, (err, d * U32 / s)


def _data_with_condition(m, d, kappa, seed):
    """m float32 rows whose covariance has condition number ~kappa, offset from zero."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    z = rng.normal(size=(m, d)) * np.geomspace(1.0, kappa**-0.5, d)
    return (z @ q.T + 3 * rng.normal(size=d)).astype(np.float32)


@pytest.mark.parametrize(("kappa", "iterations"),
                         [(1e1, 5), (1e3, 10), (1e3, 30), (1e5, 30), (None, 60)])
def test_iternorm_float32_output_covariance_within_bound(kappa, iterations):
    """iter_norm end to end in float32 (covariance formed from m rows) against the float64
    iteration on the same input; kappa=None is the data of the failure report (256 x 6,
    kappa 1.5e4, 60 iterations), where float32 ZCA measured 1.9e-4 from identity on one CPU and
    2e-5 on another: both are within the bound, which compared with a float32 ZCA is not."""
    m, d = 256, 6
    if kappa is None:
        x32 = _data((m, d), seed=3).astype(np.float32)
    else:
        x32 = _data_with_condition(m, d, kappa, seed=int(np.log10(kappa)))
    x = x32.astype(np.float64)
    xc = x - x.mean(0)
    cov = xc.T @ xc / m
    lam = np.linalg.eigvalsh(cov)
    s = lam[0] / lam.sum()
    u_t = _ns_float64(cov, iterations)
    c_t = np.cov((xc @ u_t.T).T, bias=True)
    bound = (d + np.sqrt(m)) * U32 / s
    tau = _ns_truncation(s, iterations)
    for fn in (jnorm.iter_norm, jnorm.decorrelated_batch_norm):
        kw = {"iterations": iterations} if fn is jnorm.iter_norm else {}
        y, _ = fn(jnp.asarray(x32), jnorm.WhiteningStats.init(d), training=True, epsilon=0.0,
                  **kw)
        assert np.isfinite(np.asarray(y)).all()
        c = np.cov(np.asarray(y, np.float64).T, bias=True)
        if fn is jnorm.iter_norm:
            assert np.linalg.norm(c - c_t, 2) <= bound, (np.linalg.norm(c - c_t, 2), bound)
            assert np.linalg.norm(c - np.eye(d), 2) <= tau + bound
        else:  # ZCA: the same rounding bound, no truncation
            assert np.linalg.norm(c - np.eye(d), 2) <= bound


@pytest.mark.parametrize("fn", [jnorm.decorrelated_batch_norm, jnorm.iter_norm])
def test_whitening_gradients_match_finite_differences(fn):
    x = _data((12, 3), seed=4)
    with jax.enable_x64(True):
        s = jnorm.WhiteningStats.init(3, dtype=jnp.float64)
        w = jnp.asarray(np.random.default_rng(5).normal(size=(12, 3)))

        def loss(x, scale, bias):
            y, _ = fn(x, s, scale, bias, training=True, epsilon=1e-3)
            return jnp.sum(jnp.sin(y) * w)

        check_grads(loss, (jnp.asarray(x), jnp.ones(3) * 1.3, jnp.zeros(3) + 0.2), order=1,
                    modes=["rev"], atol=1e-6, rtol=1e-6)


def test_whitening_running_state_and_eval():
    x = jnp.asarray(_data((32, 4), seed=6), jnp.float32)
    s0 = jnorm.WhiteningStats.init(4, group_size=2)
    y, s1 = jnorm.decorrelated_batch_norm(x, s0, training=True, group_size=2, momentum=0.9)
    _, sb = jnorm.decorrelated_batch_norm(x, s0, training=True, group_size=2, momentum=0.0)
    np.testing.assert_allclose(s1.mean, 0.1 * sb.mean, rtol=1e-6)
    np.testing.assert_allclose(s1.whitening, 0.9 * s0.whitening + 0.1 * sb.whitening, rtol=1e-5)
    assert int(s1.count) == 1
    # eval with the batch's own statistics reproduces the training output: the same U, on x
    # centred in another way (x - mean vs (x - shift) - mean_shifted, the shift one of the
    # values). Each is off by <= (g + 3) u |U| (|x| + max|x|) (the centring's roundings, a
    # g-term product).
    y_eval, same = jnorm.decorrelated_batch_norm(x, sb, training=False, group_size=2)
    assert same is sb
    u_blocks = np.abs(np.asarray(sb.whitening, np.float64))  # [K, g, g]
    mag = np.abs(np.asarray(x, np.float64))
    mag = mag + mag.max(0)
    spread = np.einsum("kij,mkj->mki", u_blocks, mag.reshape(-1, 2, 2)).max()
    np.testing.assert_allclose(y_eval, y, atol=2 * (2 + 3) * 2.0**-24 * spread)


def test_whitening_jit_vmap_bf16():
    x = jnp.asarray(_data((3, 16, 4), seed=7), jnp.float32)
    s = jnorm.WhiteningStats.init(4)
    f = jax.jit(lambda x: jnorm.iter_norm(x, s, training=True)[0])
    looped = jnp.stack([jnorm.iter_norm(xi, s, training=True)[0] for xi in x])
    # batched and single products may sum in different orders: twice the rounding bound
    atol = max(_whitened_atol(np.asarray(xi), yi) for xi, yi in zip(x, looped))
    np.testing.assert_allclose(jax.vmap(f)(x), looped, atol=2 * atol)
    yb, sb = jnorm.decorrelated_batch_norm(x[0].astype(jnp.bfloat16), s, training=True)
    assert yb.dtype == jnp.bfloat16 and sb.whitening.dtype == jnp.float32
    y32, _ = jnorm.decorrelated_batch_norm(x[0].astype(jnp.bfloat16).astype(jnp.float32), s,
                                           training=True)
    # the project's bfloat16 target: output rounding only, <= 8e-3 relative (measured 3.7e-3)
    err = np.abs(np.asarray(yb.astype(jnp.float32)) - np.asarray(y32))
    assert np.max(err / np.maximum(np.abs(np.asarray(y32)), 1.0)) <= 8e-3


def test_whitening_errors():
    x = jnp.ones((8, 6))
    with pytest.raises(ValueError, match="group_size"):
        jnorm.decorrelated_batch_norm(x, jnorm.WhiteningStats.init(6), training=True,
                                      group_size=4)
    with pytest.raises(ValueError, match=r"WhiteningStats\.init"):
        jnorm.iter_norm(x, jnorm.WhiteningStats.init(6, group_size=3), training=True)
    with pytest.raises(TypeError, match="WhiteningStats"):
        jnorm.iter_norm(x, jnorm.BatchStats.init(6), training=True)
    with pytest.raises(ValueError, match="iterations"):
        jnorm.iter_norm(x, jnorm.WhiteningStats.init(6), training=True, iterations=0)


def test_whitening_linen_matches_function():
    x = jnp.asarray(_data((16, 4), seed=8), jnp.float32)
    for mod, fn, kw in ((jnn.DecorrelatedBatchNorm, jnorm.decorrelated_batch_norm, {}),
                        (jnn.IterNorm, jnorm.iter_norm, {"iterations": 5})):
        m = mod(use_running_average=False, group_size=2)
        v = m.init(jax.random.key(0), x)
        y, upd = m.apply(v, x, mutable=["batch_stats"])
        yf, sf = fn(x, jnorm.WhiteningStats.init(4, group_size=2), v["params"]["scale"],
                    v["params"]["bias"], training=True, group_size=2, **kw)
        np.testing.assert_array_equal(y, yf)
        np.testing.assert_array_equal(upd["batch_stats"]["whitening"], sf.whitening)


# ---------------------------------------------------------------------------- batch renorm


def test_batch_renorm_matches_algorithm_1_with_clipping():
    x = _data((16, 3), seed=9)
    run_mean, run_var = np.array([0.0, 5.0, -1.0]), np.array([1.0, 0.01, 50.0])
    gamma, beta = np.array([1.5, 0.5, 2.0]), np.array([0.1, -0.2, 0.3])
    ref, r, d = ref_renorm(x, run_mean, run_var, gamma, beta, 1e-3, 2.0, 1.0)
    assert np.any(np.abs(d) == 1.0) and np.any((r == 2.0) | (r == 0.5))  # clipping is active
    with jax.enable_x64(True):
        state = jnorm.BatchStats(jnp.asarray(run_mean), jnp.asarray(run_var), jnp.asarray(3))
        y, new = jnorm.batch_renorm(jnp.asarray(x), state, jnp.asarray(gamma),
                                    jnp.asarray(beta), training=True, r_max=2.0, d_max=1.0,
                                    epsilon=1e-3, momentum=0.9)
        np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(new.mean, 0.9 * run_mean + 0.1 * x.mean(0), rtol=1e-12)
        np.testing.assert_allclose(new.var, 0.9 * run_var + 0.1 * x.var(0), rtol=1e-12)


def test_batch_renorm_reduces_to_batch_norm_and_to_inference():
    x = jnp.asarray(_data((8, 2, 2, 3), seed=10), jnp.float32)
    s = jnorm.BatchStats.init(3)
    y, sr = jnorm.batch_renorm(x, s, training=True, r_max=1.0, d_max=0.0)
    yb, sb = jnorm.batch_norm(x, s, training=True)
    # same formula, possibly different float32 evaluation order than batch_norm's kernel
    np.testing.assert_allclose(y, yb, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sr.mean, sb.mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(sr.var, sb.var, rtol=1e-6)
    # unclipped, the training output equals the inference output with the running stats
    s2 = jnorm.BatchStats(jnp.array([0.5, -1.0, 2.0]), jnp.array([2.0, 0.5, 4.0]),
                          jnp.asarray(1))
    yt, _ = jnorm.batch_renorm(x, s2, training=True, r_max=1e3, d_max=1e3)
    ye, _ = jnorm.batch_renorm(x, s2, training=False)
    # equal in exact arithmetic; in float32 each term of x_hat r + d is off by a few roundings
    # of its own size, which the sum can exceed: 8 u (|x_hat r| + |d|) bounds both outputs
    x64 = np.asarray(x, np.float64).reshape(-1, 3)
    sig = np.sqrt(np.asarray(s2.var, np.float64) + 1e-5)
    terms = np.abs(x64 - x64.mean(0)) / sig + np.abs(x64.mean(0) - np.asarray(s2.mean)) / sig
    np.testing.assert_allclose(yt, ye, atol=2 * 8 * 2.0**-24 * terms.max())


def test_batch_renorm_gradient_treats_r_and_d_as_constants():
    x = _data((10, 3), seed=11)
    with jax.enable_x64(True):
        state = jnorm.BatchStats(jnp.array([0.3, 1.0, -2.0]), jnp.array([0.2, 3.0, 9.0]),
                                 jnp.asarray(2))
        w = jnp.asarray(np.random.default_rng(0).normal(size=x.shape))
        _, r, d = ref_renorm(x, np.asarray(state.mean), np.asarray(state.var), 1.0, 0.0, 1e-5,
                             1.5, 0.5)

        def ref_loss(x):  # Algorithm 1 with r, d constants, in jnp for autodiff
            mu, var = x.mean(0, keepdims=True), x.var(0, keepdims=True)
            return jnp.sum(w * (((x - mu) / jnp.sqrt(var + 1e-5)) * r[None] + d[None]))

        def loss(x):
            y, _ = jnorm.batch_renorm(x, state, training=True, r_max=1.5, d_max=0.5)
            return jnp.sum(w * y)

        xj = jnp.asarray(x)
        np.testing.assert_allclose(jax.grad(loss)(xj), jax.grad(ref_loss)(xj), rtol=1e-10,
                                   atol=1e-12)
        assert np.any(r != 1.0)  # r really differs from 1, so a wrong rule would show


def test_batch_renorm_traced_schedule_bf16_and_linen():
    x = jnp.asarray(_data((8, 4), seed=12), jnp.float32)
    s = jnorm.BatchStats.init(4)

    @jax.jit
    def step(x, t):
        r_max, d_max = jnorm.batch_renorm_schedule(t)
        return jnorm.batch_renorm(x, s, training=True, r_max=r_max, d_max=d_max)[0]

    np.testing.assert_allclose(step(x, 0), jnorm.batch_norm(x, s, training=True)[0], rtol=1e-6,
                               atol=1e-6)
    assert not np.allclose(step(x, 40000), step(x, 0))
    yb, _ = jnorm.batch_renorm(x.astype(jnp.bfloat16), s, training=True)
    assert yb.dtype == jnp.bfloat16
    m = jnn.BatchRenorm(use_running_average=False)
    v = m.init(jax.random.key(0), x)
    y, upd = m.apply(v, x, r_max=2.0, d_max=1.0, mutable=["batch_stats"])
    yf, sf = jnorm.batch_renorm(x, s, v["params"]["scale"], v["params"]["bias"], training=True,
                                r_max=2.0, d_max=1.0)
    np.testing.assert_array_equal(y, yf)
    np.testing.assert_array_equal(upd["batch_stats"]["var"], sf.var)
    with pytest.raises(ValueError, match="r_max"):
        jnorm.batch_renorm(x, s, training=True, r_max=0.5)


# ------------------------------------------------------------------------- FRN, TLU, EvoNorm


def test_frn_tlu_match_paper_equations():
    x = _data((2, 3, 4, 5), seed=13, mix=False) + 0.5
    gamma, beta, tau = np.linspace(0.5, 2, 5), np.linspace(-1, 1, 5), np.full(5, -0.1)
    nu2 = (x ** 2).mean(axis=(1, 2), keepdims=True)
    ref = np.maximum(gamma * x / np.sqrt(nu2 + 1e-6) + beta, tau)
    with jax.enable_x64(True):
        y = jnorm.tlu(jnorm.filter_response_norm(jnp.asarray(x), jnp.asarray(gamma),
                                                 jnp.asarray(beta)), jnp.asarray(tau))
        np.testing.assert_allclose(y, ref, rtol=1e-12)
        check_grads(lambda x: jnorm.filter_response_norm(x, epsilon=1e-3), (jnp.asarray(x),),
                    order=2, modes=["fwd", "rev"], atol=1e-5, rtol=1e-5)
    m = jnn.FilterResponseNorm(learned_epsilon=True)
    v = m.init(jax.random.key(0), jnp.asarray(x, jnp.float32))
    assert sorted(v["params"]) == ["bias", "eps", "scale", "tau"]
    y32 = m.apply(v, jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(y32, np.maximum(x / np.sqrt(nu2 + 1e-6), 0.0), atol=1e-5)
    yb = jax.jit(jnorm.filter_response_norm)(jnp.asarray(x, jnp.bfloat16))
    assert yb.dtype == jnp.bfloat16


def test_evonorm_match_paper_equations():
    x = _data((4, 3, 3, 6), seed=14, mix=False) * 2 + 1
    v = np.linspace(0.5, 1.5, 6)
    gamma, beta = np.linspace(0.5, 2, 6), np.linspace(-1, 1, 6)
    eps = 1e-5
    # S0 with 2 groups of 3 channels
    xs = x.reshape(4, 3, 3, 2, 3)
    gvar = xs.var(axis=(1, 2, 4), keepdims=True)
    s0 = (xs * (1 / (1 + np.exp(-v.reshape(2, 3) * xs))) / np.sqrt(gvar + eps)).reshape(x.shape)
    s0 = s0 * gamma + beta
    # B0
    bvar = x.var(axis=(0, 1, 2))
    ivar = x.var(axis=(1, 2), keepdims=True)
    b0 = x / np.maximum(np.sqrt(bvar + eps), v * x + np.sqrt(ivar + eps)) * gamma + beta
    with jax.enable_x64(True):
        args = (jnp.asarray(gamma), jnp.asarray(beta), jnp.asarray(v))
        ys0 = jnorm.evonorm_s0(jnp.asarray(x), *args, num_groups=2)
        np.testing.assert_allclose(ys0, s0, rtol=1e-10, atol=1e-12)
        yb0, st = jnorm.evonorm_b0(jnp.asarray(x), jnorm.BatchStats.init(6, jnp.float64),
                                   *args, training=True, momentum=0.0)
        np.testing.assert_allclose(yb0, b0, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(st.var, bvar, rtol=1e-12)
        ye, _ = jnorm.evonorm_b0(jnp.asarray(x), st, *args, training=False)
        np.testing.assert_allclose(ye, b0, rtol=1e-10, atol=1e-12)
        check_grads(lambda x: jnorm.evonorm_s0(x, v=jnp.asarray(v), num_groups=2),
                    (jnp.asarray(x),), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)
    xf = jnp.asarray(x, jnp.float32)
    for mod in (jnn.EvoNormS0(num_groups=2), jnn.EvoNormB0(use_running_average=False)):
        vs = mod.init(jax.random.key(0), xf)
        out = mod.apply(vs, xf, mutable=["batch_stats"])[0]
        assert out.shape == xf.shape and np.isfinite(np.asarray(out)).all()


def test_evonorm_b0_training_needs_more_than_one_value_per_channel():
    """A batch variance of one value is 0 (y = x / sqrt(eps)): refused at trace time, as
    batch_norm refuses it; eval (running variance) and a spatial extent are fine."""
    s = jnorm.BatchStats.init(3)
    for shape in ((1, 1, 1, 3), (1, 1, 3)):
        with pytest.raises(ValueError, match=r"evonorm_b0 in training needs more than one value "
                                             r"per channel.*training=False"):
            jax.eval_shape(lambda shape=shape: jnorm.evonorm_b0(jnp.ones(shape), s,
                                                                training=True))
    one = jnp.asarray(_data((1, 1, 1, 3), seed=15, mix=False), jnp.float32)
    assert np.isfinite(np.asarray(jnorm.evonorm_b0(one, s, training=False)[0])).all()
    y, _ = jnorm.evonorm_b0(jnp.ones((1, 2, 1, 3)), s, training=True)  # 2 values per channel
    assert y.shape == (1, 2, 1, 3)


# -------------------------------------------------------------------------- weight transforms


def test_weight_standardization_references():
    w = _data((3, 3, 4, 5), seed=15, mix=False) * 0.3 + 0.1
    flat = w.reshape(-1, 5)
    n = flat.shape[0]
    mu, var = flat.mean(0), flat.var(0)
    ws = (w - mu) / np.sqrt(var + 1e-5)
    gain = np.linspace(0.5, 1.5, 5)
    sws = 1.7 * gain * (w - mu) / np.sqrt(n * var + 1e-4)
    wn = gain * w / np.sqrt((flat ** 2).sum(0))
    with jax.enable_x64(True):
        wj = jnp.asarray(w)
        np.testing.assert_allclose(jnorm.standardize_weight(wj), ws, rtol=1e-12)
        np.testing.assert_allclose(
            jnorm.scaled_standardize_weight(wj, jnp.asarray(gain), nonlinearity_gain=1.7), sws,
            rtol=1e-12)
        np.testing.assert_allclose(jnorm.weight_norm(wj, jnp.asarray(gain)), wn, rtol=1e-12)
        np.testing.assert_allclose(jnorm.weight_norm(wj, jnorm.kernel_norm(wj)), w, rtol=1e-12)
        check_grads(jnorm.standardize_weight, (wj,), order=1, modes=["rev"], atol=1e-6,
                    rtol=1e-6)
    wb = jnorm.standardize_weight(jnp.asarray(w, jnp.bfloat16))
    assert wb.dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        jnorm.standardize_weight(jnp.ones(3))


def test_weight_transforms_as_linen_wrappers():
    x = jnp.asarray(_data((2, 6, 6, 3), seed=16, mix=False), jnp.float32)
    conv = nn.Conv(4, (3, 3))
    # weight norm: the function is unchanged at init (g = ||v||), and changes with g
    wn = jnn.WeightNorm(conv)
    v = wn.init(jax.random.key(0), x)
    plain = conv.apply({"params": v["params"]["layer_instance"]}, x)
    np.testing.assert_allclose(wn.apply(v, x), plain, rtol=1e-5, atol=1e-6)
    p2 = jax.tree.map(lambda a: a, v)
    p2["params"]["layer_instance/kernel/scale"] = 2 * v["params"]["layer_instance/kernel/scale"]
    b = v["params"]["layer_instance"]["bias"].reshape(1, 1, 1, 4)
    np.testing.assert_allclose(wn.apply(p2, x) - b, 2 * (plain - b), rtol=1e-5, atol=1e-5)
    # weight standardization: the conv runs with the standardized kernel
    ws = jnn.WeightStandardization(conv)
    v = ws.init(jax.random.key(1), x)
    k = v["params"]["layer_instance"]["kernel"]
    expect = conv.apply({"params": {"kernel": jnorm.standardize_weight(k),
                                    "bias": v["params"]["layer_instance"]["bias"]}}, x)
    np.testing.assert_allclose(ws.apply(v, x), expect, rtol=1e-6)
    sws = jnn.WeightStandardization(nn.Dense(3), scaled=True, nonlinearity_gain=1.5)
    v = sws.init(jax.random.key(2), x)
    assert v["params"]["layer_instance/kernel/gain"].shape == (3,)
    g = jax.grad(lambda p: jnp.sum(sws.apply({"params": p}, x) ** 2))(v["params"])
    assert np.abs(np.asarray(g["layer_instance/kernel/gain"])).sum() > 0
