"""jnorm.linen against flax.linen: same variables, same outputs, checkpoints swap both ways."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnorm
import jnorm.linen as jnn
from tests.helpers import data
from tests.registry import FLAX_LINEN_CASES

X = data((8, 4, 4, 8), offset=1.5, spread=2.0)



def _init_both(name, kw, x, *, wraps_dense=False, **call_kwargs):
    if wraps_dense:
        ours, theirs = getattr(jnn, name)(nn.Dense(5), **kw), getattr(nn, name)(nn.Dense(5), **kw)
    else:
        ours, theirs = getattr(jnn, name)(**kw), getattr(nn, name)(**kw)
    key = jax.random.key(0)
    with jax.numpy_dtype_promotion("standard"):  # flax itself mixes dtypes implicitly
        v_theirs = theirs.init(key, x, **call_kwargs)
    return ours, _Standard(theirs), ours.init(key, x, **call_kwargs), v_theirs


class _Standard:
    """Runs a flax module under standard dtype promotion (the suite is strict)."""

    def __init__(self, module):
        self.module = module

    def apply(self, *args, **kwargs):
        with jax.numpy_dtype_promotion("standard"):
            return self.module.apply(*args, **kwargs)


@pytest.mark.parametrize(("mc", "kw"), FLAX_LINEN_CASES,
                         ids=[f"{mc.cls}-{i}" for i, (mc, _) in enumerate(FLAX_LINEN_CASES)])
def test_same_variables_and_outputs_as_flax(mc, kw):
    """Each flax comparison of tests/registry.py (``ModuleCase.flax``)."""
    x = jnp.asarray(X)
    ours, theirs, v_ours, v_theirs = _init_both(mc.cls, kw, x, wraps_dense=mc.wraps_dense,
                                                **mc.call_kwargs)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), v_ours) == jax.tree.map(
        lambda a: (a.shape, a.dtype), v_theirs)
    # perturb params/stats so the comparison is not at the trivial init values
    rng = np.random.default_rng(0)
    v = jax.tree.map(lambda a: a + jnp.asarray(rng.random(a.shape), a.dtype) * 0.5, v_theirs)
    y_ours, up_ours = ours.apply(v, x, **mc.call_kwargs, mutable=["batch_stats"])
    y_theirs, up_theirs = theirs.apply(v, x, **mc.call_kwargs, mutable=["batch_stats"])
    np.testing.assert_allclose(y_ours, y_theirs, atol=5e-6)
    for a, b in zip(jax.tree.leaves(up_ours), jax.tree.leaves(up_theirs), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_module_and_function_are_bitwise_equal():
    x = jnp.asarray(X)
    s = jnp.asarray(np.random.default_rng(1).random(8), jnp.float32)
    b = jnp.asarray(np.random.default_rng(2).random(8), jnp.float32)
    p = {"params": {"scale": s, "bias": b}}
    checks = [
        (jnn.LayerNorm(), p, jnorm.layer_norm(x, s, b)),
        (jnn.RMSNorm(), {"params": {"scale": s}}, jnorm.rms_norm(x, s)),
        (jnn.GroupNorm(num_groups=4), p, jnorm.group_norm(x, s, b, num_groups=4)),
        (jnn.InstanceNorm(), p, jnorm.instance_norm(x, s, b)),
    ]
    for module, variables, expected in checks:
        np.testing.assert_array_equal(module.apply(variables, x), expected)
    state = jnorm.BatchStats.init(8)
    y_fn, new = jnorm.batch_norm(x, state, s, b, training=True)
    y_mod, up = jnn.BatchNorm(use_running_average=False).apply(
        {**p, "batch_stats": {"mean": state.mean, "var": state.var}}, x, mutable=["batch_stats"])
    np.testing.assert_array_equal(y_mod, y_fn)
    np.testing.assert_array_equal(up["batch_stats"]["mean"], new.mean)
    np.testing.assert_array_equal(up["batch_stats"]["var"], new.var)


def test_init_does_not_update_running_statistics():
    v = jnn.BatchNorm(use_running_average=False).init(jax.random.key(0), jnp.asarray(X) + 5)
    np.testing.assert_array_equal(v["batch_stats"]["mean"], 0.0)
    np.testing.assert_array_equal(v["batch_stats"]["var"], 1.0)


def test_momentum_none_tracks_count():
    m = jnn.BatchNorm(use_running_average=False, momentum=None)
    v = m.init(jax.random.key(0), jnp.asarray(X))
    np.testing.assert_array_equal(v["batch_stats"]["count"], np.zeros(8))  # one per feature
    for i in range(3):
        _, up = m.apply(v, jnp.asarray(X) + i, mutable=["batch_stats"])
        v = {**v, **up}
    np.testing.assert_array_equal(v["batch_stats"]["count"], np.full(8, 3))
    np.testing.assert_allclose(v["batch_stats"]["mean"],
                               X.astype(np.float64).reshape(-1, 8).mean(0) + 1.0, rtol=1e-5)


def test_mask_matches_flax():
    x = jnp.asarray(X)
    mask = jnp.asarray(np.random.default_rng(3).random(X.shape) > 0.3)
    for name, kw in [("BatchNorm", {"use_running_average": False}), ("LayerNorm", {}),
                     ("GroupNorm", {"num_groups": 4}), ("InstanceNorm", {})]:
        ours, theirs, v, _ = _init_both(name, kw, x)
        a = ours.apply(v, x, mask=mask, mutable=["batch_stats"])[0]
        b = theirs.apply(v, x, mask=mask, mutable=["batch_stats"])[0]
        # flax computes E[x^2] - E[x]^2 in float32: compare at float32 precision (the float64
        # oracle tests of jnorm itself are in tests/core/test_registry.py).
        np.testing.assert_allclose(a, b, rtol=5e-6, atol=5e-6, err_msg=name)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_dtype_rules_match_flax(dtype):
    x = jnp.asarray(X).astype(dtype)
    for name, kw in [("LayerNorm", {}), ("LayerNorm", {"dtype": dtype}),
                     ("BatchNorm", {"use_running_average": False, "param_dtype": dtype})]:
        ours, theirs, v, _ = _init_both(name, kw, x)
        a = ours.apply(v, x, mutable=["batch_stats"])[0]
        b = theirs.apply(v, x, mutable=["batch_stats"])[0]
        assert a.dtype == b.dtype, (name, kw)
        # float32 outputs: flax's float32 error (seen 4.8e-7); half outputs: one ulp of the
        # output's dtype (seen bitwise equal), for other summation orders
        b32 = np.asarray(b, np.float32)
        tol = 5e-6 if a.dtype == jnp.float32 else float(jnp.finfo(a.dtype).eps) * np.abs(
            b32).max()
        np.testing.assert_allclose(np.asarray(a, np.float32), b32, atol=tol, rtol=0)


def test_complex_input_matches_flax():
    rng = np.random.default_rng(0)
    x = jnp.asarray((rng.standard_normal((4, 6)) + 1j * rng.standard_normal((4, 6)) + 2)
                    .astype(np.complex64))
    for name in ["LayerNorm", "RMSNorm"]:
        ours, theirs, v, _ = _init_both(name, {}, x)
        np.testing.assert_allclose(ours.apply(v, x), theirs.apply(v, x), atol=2e-6)


class _CNN(nn.Module):
    norms: object  # the module namespace: flax.linen or jnorm.linen

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(8, (3, 3))(x)
        x = self.norms.BatchNorm(use_running_average=not train)(x)
        x = nn.relu(x)
        x = nn.Conv(8, (3, 3))(x)
        x = self.norms.GroupNorm(num_groups=4)(x)
        x = nn.relu(x).mean((1, 2))
        x = self.norms.LayerNorm()(x)
        return nn.Dense(3)(x)


def test_checkpoints_swap_between_flax_and_jnorm():
    x = jnp.asarray(X)
    flax_model, jnorm_model = _CNN(nn), _CNN(jnn)
    v = flax_model.init(jax.random.key(0), x, train=False)
    _, up = flax_model.apply(v, x, train=True, mutable=["batch_stats"])
    v = {**v, **up}  # a flax checkpoint with non-trivial running statistics
    np.testing.assert_allclose(jnorm_model.apply(v, x, train=False),
                               flax_model.apply(v, x, train=False), atol=1e-5)
    v2 = jnorm_model.init(jax.random.key(0), x, train=False)
    assert jax.tree.structure(v2) == jax.tree.structure(v)
    _, up2 = jnorm_model.apply(v2, x, train=True, mutable=["batch_stats"])
    v2 = {**v2, **up2}  # and a jnorm checkpoint evaluated by flax
    np.testing.assert_allclose(flax_model.apply(v2, x, train=False),
                               jnorm_model.apply(v2, x, train=False), atol=1e-5)


def test_flax_is_inaccurate_where_jnorm_is_not():
    """The reason jnorm exists: flax's default on offset data versus jnorm's."""
    x = jnp.asarray(data((16, 512), offset=1e4))
    x64 = np.asarray(x, np.float64)
    ref = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-6)
    v = nn.LayerNorm().init(jax.random.key(0), x)
    err_flax = np.max(np.abs(np.asarray(nn.LayerNorm().apply(v, x)) - ref))
    err_ours = np.max(np.abs(np.asarray(jnn.LayerNorm().apply(v, x)) - ref))
    assert err_ours <= 1e-5 < 1e-2 < err_flax


def test_single_value_per_statistic_returns_flax_value():
    """flax's ImageNet ResNet init (a batch of 1 reaching (1, 1, 1, 512)) and InstanceNorm on
    (N, C) work in flax; the modules return flax's value (the functions raise, strict)."""
    one = jnp.asarray(X[:1, :1, :1, :])
    for ours, theirs, x in (
        (jnn.BatchNorm(use_running_average=False), nn.BatchNorm(use_running_average=False), one),
        (jnn.InstanceNorm(bias_init=nn.initializers.constant(0.5)),
         nn.InstanceNorm(bias_init=nn.initializers.constant(0.5)), jnp.asarray(X[:, 0, 0, :])),
    ):
        v = ours.init(jax.random.key(0), x)
        with jax.numpy_dtype_promotion("standard"):
            want, upd_theirs = theirs.apply(v, x, mutable=["batch_stats"])
        got, upd_ours = ours.apply(v, x, mutable=["batch_stats"])
        np.testing.assert_array_equal(got, want)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=3e-6), upd_ours,
                     upd_theirs)
    with pytest.raises(ValueError, match="The channel axes cannot include the leading"):
        jnn.InstanceNorm(feature_axes=0).init(jax.random.key(0), jnp.asarray(X))


def test_eval_with_an_unbound_axis_name_works_as_in_flax():
    """Eval uses no collective, so flax accepts an ``axis_name`` no map binds there (models
    built for data parallelism are initialised and evaluated outside the map); so do jnorm's
    module and function. Training with it is an error in both."""
    x = jnp.asarray(X)
    kw = {"use_running_average": True, "axis_name": "batch"}
    ours, theirs, v_ours, v_theirs = _init_both("BatchNorm", kw, x)
    np.testing.assert_allclose(ours.apply(v_ours, x), theirs.apply(v_theirs, x), atol=5e-6)
    state = jnorm.BatchStats.init(8)
    y, _ = jnorm.batch_norm(x, state, training=False, axis_name="batch")
    np.testing.assert_array_equal(y, jnorm.batch_norm(x, state, training=False)[0])
    with pytest.raises(ValueError, match="`axis_name`='batch' is not bound"):
        jnorm.batch_norm(x, state, training=True, axis_name="batch")
