"""Derivatives of the core layers (parameter gradients, jvp against vjp, numerical checks
without some parameters and with a mask, the hessian) and batch norm's state under scan, cond
and grad. tests/core/test_registry.py has jit, vmap and the float64 derivative check of every
layer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

import jnorm
from tests.helpers import data, params
from tests.registry import CORE

SHAPE = (4, 3, 2, 4)


@pytest.mark.parametrize("case", CORE, ids=repr)
def test_grad_wrt_params(case):
    x = data(SHAPE, offset=1.0)
    s, b = params(4)
    ct = data(SHAPE, seed=9)

    def loss(s, b):
        return jnp.sum(case.apply(jnp.asarray(x), s, b if case.has_bias else None) * ct)

    gs, gb = jax.grad(loss, argnums=(0, 1))(jnp.asarray(s), jnp.asarray(b))
    xhat = case.oracle(x)
    np.testing.assert_allclose(gs, (xhat * ct).reshape(-1, 4).sum(0), rtol=1e-5, atol=1e-5)
    if case.has_bias:
        np.testing.assert_allclose(gb, ct.astype(np.float64).reshape(-1, 4).sum(0), rtol=1e-5)


@pytest.mark.parametrize("case", CORE, ids=repr)
def test_jvp_matches_vjp(case):
    """Forward and reverse mode agree: <J t, c> == <t, J^T c>."""
    x = jnp.asarray(data(SHAPE, offset=5.0))
    t = jnp.asarray(data(SHAPE, seed=1))
    c = jnp.asarray(data(SHAPE, seed=2))
    f = case.apply
    _, jt = jax.jvp(f, (x,), (t,))
    _, vjp = jax.vjp(f, x)
    (jc,) = vjp(c)
    np.testing.assert_allclose(jnp.vdot(jt, c), jnp.vdot(t, jc), rtol=1e-4)


@pytest.mark.parametrize("case", CORE, ids=repr)
@pytest.mark.parametrize("affine", ["none", "scale", "bias"])
def test_check_grads_float64_without_some_params(case, affine):
    """The derivative rule groups its terms differently with and without a scale (and per
    layout); every grouping is checked numerically, in both modes."""
    with jax.enable_x64(True):
        x = jnp.asarray(data((3, 2, 2, 4), offset=1.0).astype(np.float64))
        s, b = (jnp.asarray(p.astype(np.float64)) for p in params(4))
        if affine == "scale":
            f = lambda x, s: case.apply(x, s, None)  # noqa: E731
            args = (x, s)
        elif affine == "bias" and case.has_bias:
            f = lambda x, b: case.apply(x, None, b)  # noqa: E731
            args = (x, b)
        else:
            f = lambda x: case.apply(x, None, None)  # noqa: E731
            args = (x,)
        check_grads(jax.jit(f), args, order=2, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", CORE, ids=repr)
def test_hessian(case):
    x = jnp.asarray(data((2, 2, 1, 4), offset=2.0))
    w = jnp.asarray(data((2, 2, 1, 4), seed=3))
    h = jax.hessian(lambda x: jnp.sum(jnp.tanh(case.apply(x, None, None)) * w))(x)
    assert h.shape == x.shape * 2 and bool(jnp.all(jnp.isfinite(h)))
    flat = h.reshape(x.size, x.size)
    np.testing.assert_allclose(flat, flat.T, atol=1e-4)


def test_batch_norm_in_scan_keeps_state_structure():
    xs = jnp.asarray(data((5,) + SHAPE, offset=1.0))
    state0 = jnorm.BatchStats.init(4)

    def step(state, x):
        y, state = jnorm.batch_norm(x, state, training=True, momentum=0.5)
        return state, y.mean()

    state, _ = lax.scan(step, state0, xs)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), state) == jax.tree.map(
        lambda a: (a.shape, a.dtype), state0)
    assert int(state.count) == 5
    ref = jnorm.BatchStats.init(4)
    for x in xs:
        _, ref = jnorm.batch_norm(x, ref, training=True, momentum=0.5)
    # Each step's batch mean is exact to a few ulps of the data's magnitude (offset 1 + N(0, 1)).
    u = float(np.finfo(np.float32).eps)
    np.testing.assert_allclose(state.mean, ref.mean, rtol=0, atol=16 * u * float(jnp.abs(xs).max()))


def test_batch_norm_state_under_cond_and_jit():
    state0 = jnorm.BatchStats.init(4)
    x = jnp.asarray(data(SHAPE))

    @jax.jit
    def f(flag, state):
        def train(state):
            return jnorm.batch_norm(x, state, training=True)

        def evaluate(state):
            return jnorm.batch_norm(x, state, training=False)

        return lax.cond(flag, train, evaluate, state)

    _, s_train = f(True, state0)
    _, s_eval = f(False, state0)
    assert int(s_train.count) == 1 and int(s_eval.count) == 0


def test_grad_through_training_and_state():
    """Differentiating through the returned state works (e.g. meta-learning)."""
    x = jnp.asarray(data(SHAPE, offset=1.0))
    g = jax.grad(lambda x: jnorm.batch_norm(x, jnorm.BatchStats.init(4), training=True)[1]
                 .mean.sum())(x)
    np.testing.assert_allclose(g, np.full(SHAPE, 0.01 / (SHAPE[0] * SHAPE[1] * SHAPE[2])),
                               rtol=1e-5)


@pytest.mark.parametrize("case", CORE, ids=repr)
def test_check_grads_with_mask_float64(case):
    """Masks take the plain-autodiff path (no fused derivative rule): check it numerically too."""
    with jax.enable_x64(True):
        x = jnp.asarray(data((3, 2, 2, 4), offset=1.0).astype(np.float64))
        mask = jnp.asarray(np.random.default_rng(5).random((3, 2, 2, 4)) > 0.3)
        s, b = (jnp.asarray(p.astype(np.float64)) for p in params(4))
        check_grads(jax.jit(lambda x, s, b: case.apply(x, s, b if case.has_bias else None, mask)),
                    (x, s, b), order=1, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)
