"""Bad input fails at trace time with a message that names the argument and the fix."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnorm
import jnorm.linen as jnn

X = jnp.ones((2, 3, 3, 4))


def _trace(f):
    """Errors must come at trace time: eval_shape runs no computation."""
    return jax.eval_shape(f)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: jnorm.layer_norm(X, reduction_axes=4),
         r"`reduction_axes`=4 is out of range .* \[-4, 3\]"),
        (lambda: jnorm.layer_norm(X, reduction_axes=-5), r"`reduction_axes`=-5 is out of range"),
        (lambda: jnorm.layer_norm(X, reduction_axes=(1, -3)), r"names the same axis twice"),
        (lambda: jnorm.moments(X, reduction_axes=7), r"`reduction_axes`=7 is out of range"),
        (lambda: jnorm.layer_norm(X, reduction_axes="a"), r"must be an int or a sequence of ints"),
        (lambda: jnorm.instance_norm(X, feature_axes=-9), r"`feature_axes`=-9 is out of range"),
        (lambda: jnorm.group_norm(X, num_groups=3), r"`num_groups`=3 does not divide the 4 "
                                                    r"channels. Pick one of \[1, 2, 4\]"),
        (lambda: jnorm.group_norm(X, num_groups=None, group_size=3), r"`group_size`=3 does not "
                                                                     r"divide"),
        (lambda: jnorm.group_norm(X, num_groups=2, group_size=2), r"exactly one of `num_groups`"),
        (lambda: jnorm.group_norm(X, num_groups=2, reduction_axes=(1, 3)),
         r"must not include the channel axis"),
        (lambda: jnorm.layer_norm(X, jnp.ones(3)), r"`scale` has shape \(3,\).*feature shape "
                                                   r"\(4,\)"),
        (lambda: jnorm.layer_norm(X, None, jnp.ones((4, 1))), r"`bias` has shape \(4, 1\)"),
        (lambda: jnorm.group_norm(X, jnp.ones(2), num_groups=2), r"`scale` has shape \(2,\), "
                                                                 r"expected \(4,\)"),
        (lambda: jnorm.layer_norm(X, mask=jnp.ones((3, 3), bool)), r"`mask` has shape \(3, 3\), "
                                                                    r"which does not broadcast"),
        (lambda: jnorm.layer_norm(X, mask=jnp.ones((5, 2, 3, 3, 4), bool)), r"would enlarge"),
        (lambda: jnorm.batch_norm(X, jnorm.BatchStats.init(3), training=True),
         r"`state.mean` has shape \(3,\).*BatchStats.init\(4\)"),
        (lambda: jnorm.batch_norm(jnp.ones((1, 4)), jnorm.BatchStats.init(4), training=True),
         r"more than one value per channel"),
        (lambda: jnorm.batch_norm(X, jnorm.BatchStats.init(4), training=True, momentum=1.5),
         r"`momentum` must lie in \[0, 1\].*PyTorch"),
        (lambda: jnorm.batch_norm(X, (jnp.zeros(4), jnp.ones(4)), training=True),
         r"`state` must be a jnorm.BatchStats"),
        (lambda: jnorm.instance_norm(jnp.ones((2, 4))), r"no spatial axis.*use layer_norm"),
        (lambda: jnorm.instance_norm(X, feature_axes=0), r"includes axis 0, which is the batch"),
        (lambda: jnorm.group_norm(jnp.ones((2, 4)), num_groups=4), r"groups of one channel and "
                                                                   r"no spatial axis"),
        (lambda: jnorm.normalize(X, jnp.ones(3), 1.0, epsilon=1e-5),
         r"`mean` of shape \(1, 1, 1, 3\) does not broadcast"),
        (lambda: jnorm.normalize(X, 0.0, 1.0, epsilon=-1.0), r"`epsilon` must be finite and >= 0"),
        (lambda: jnorm.moments(X, 1, axis_index_groups=[[0]]), r"without `axis_name`"),
        (lambda: jnorm.layer_norm(jnp.float32(1.0)), r"at least one dimension"),
        (lambda: jnorm.BatchStats.init(0), r"`num_features`=0 must be a positive int"),
    ],
)
def test_error_names_argument_and_fix(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        _trace(call)


def test_training_must_be_static():
    state = jnorm.BatchStats.init(4)
    f = jax.jit(lambda x, t: jnorm.batch_norm(x, state, training=t))
    with pytest.raises(TypeError, match=r"`training` must be a Python bool.*static"):
        f(X, True)


def test_linen_errors():
    with pytest.raises(ValueError, match=r"must include the last axis"):
        jnn.GroupNorm(num_groups=2, reduction_axes=(1, 2)).init(jax.random.key(0), X)
    with pytest.raises(ValueError, match=r"`num_groups`=3 does not divide"):
        jnn.GroupNorm(num_groups=3).init(jax.random.key(0), X)
    with pytest.raises(ValueError, match=r"`axis`=5 is out of range"):
        jnn.BatchNorm(axis=5, use_running_average=False).init(jax.random.key(0), X)


def test_torch_conversion_errors():
    with pytest.raises(ValueError, match=r"must be vectors of the same length"):
        jnorm.from_torch_batch_norm([0.0, 0.0], [1.0])
    with pytest.raises(ValueError, match=r"torch `weight` has shape"):
        jnorm.from_torch_batch_norm([0.0, 0.0], [1.0, 1.0], weight=[1.0])


# Bad arguments: each fails at trace time with an error that names the argument.
S4 = jnorm.BatchStats.init(4)
BN = dict(training=True)
M15 = jnp.array(1.5)  # concrete arrays, made outside the traced function as a user would
NEG = jnp.array(-1.0)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: jnorm.batch_norm(X, S4, momentum=np.float32(1.5), **BN), r"`momentum` must lie"),
        (lambda: jnorm.batch_norm(X, S4, momentum=M15, **BN), r"`momentum` must lie"),
        (lambda: jnorm.batch_norm(X, S4, momentum=True, **BN), r"`momentum`=True is a bool"),
        (lambda: jnorm.evonorm_b0(X, S4, momentum=5.0, **BN), r"evonorm_b0: `momentum` must lie"),
        (lambda: jnorm.batch_renorm(X, S4, momentum=-0.1, **BN), r"`momentum` must lie"),
        (lambda: jnorm.update_batch_stats(S4, jnp.zeros(4), jnp.ones(4), jnp.ones(4),
                                          momentum=2.0), r"`momentum` must lie"),
        (lambda: jnorm.layer_norm(X, epsilon=NEG), r"`epsilon` must be finite"),
        (lambda: jnorm.layer_norm(X, epsilon=float("inf")), r"`epsilon` must be finite"),
        (lambda: jnorm.batch_norm(X, S4, epsilon=float("nan"), **BN), r"`epsilon` must be finite"),
        (lambda: jnorm.group_norm(X, epsilon=-1.0, num_groups=2), r"`epsilon` must be finite"),
        (lambda: jnorm.standardize_weight(jnp.ones((3, 4)), epsilon=-1.0),
         r"standardize_weight: `epsilon`"),
        (lambda: jnorm.layer_norm(X, reduction_axes=[1.5]),
         r"`reduction_axes`=\[1.5\] must be an int"),
        (lambda: jnorm.layer_norm(X, reduction_axes=()), r"`reduction_axes`=\(\) names no axis"),
        (lambda: jnorm.layer_norm(X, reduction_axes=True), r"`reduction_axes` must be an int"),
        (lambda: jnorm.group_norm(X, num_groups=True), r"`num_groups`=True does not divide"),
        (lambda: jnorm.group_norm(X, num_groups=2.0), r"`num_groups`=2.0 does not divide"),
        (lambda: jnorm.evonorm_s0(X, num_groups=2.0), r"evonorm_s0: `num_groups`=2.0"),
        (lambda: jnorm.batch_norm(X, jnorm.BatchStats(jnp.zeros(4, jnp.int32),
                                                      jnp.ones(4, jnp.int32), jnp.array(0)),
                                  **BN), r"`state.mean` has dtype int32"),
        (lambda: jnorm.batch_norm(X, S4._replace(count=jnp.zeros(3, jnp.int32)), **BN),
         r"`state.count` must be an integer scalar"),
        (lambda: jnorm.layer_norm(X, dtype=jnp.int32), r"`dtype`=.*int32.* is not a floating"),
        (lambda: jnorm.batch_norm(X, S4, dtype=jnp.int8, **BN), r"`dtype`=.* is not a floating"),
        (lambda: jnorm.update_batch_stats(S4, jnp.zeros(1), jnp.ones(1), jnp.ones(1),
                                          momentum=0.9), r"`mean` has shape \(1,\).*\(4,\)"),
        (lambda: jnorm.update_batch_stats(S4, jnp.zeros(4), jnp.ones(3), jnp.ones(4),
                                          momentum=0.9), r"`var` has shape \(3,\)"),
        (lambda: jnorm.update_batch_stats(S4, jnp.zeros(4), jnp.ones(4), jnp.ones(2),
                                          momentum=0.9), r"`count` has shape \(2,\)"),
        (lambda: jnorm.BatchStats.init(4.0), r"`num_features`=4.0 must be a positive int"),
        (lambda: jnorm.BatchStats.init(4, dtype=jnp.int32), r"`dtype`=.* is not a floating"),
        (lambda: jnorm.layer_norm(X, axis_name="batch"), r"`axis_name`='batch' is not bound"),
        (lambda: jnorm.batch_norm(X, S4, axis_name="i", **BN), r"`axis_name`='i' is not bound"),
        (lambda: jnorm.local_response_norm(X, alpha=True), r"`alpha`=True is a bool"),
        (lambda: jnorm.batch_norm(X, S4, virtual_batch_size=2.0, **BN),
         r"`virtual_batch_size` must be a positive int"),
    ],
)
def test_bad_arguments_fail_at_trace_time_naming_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        _trace(call)


def test_traced_hyperparameters_are_still_accepted():
    # A learned epsilon or a scheduled momentum is traced under jit: it cannot be checked at
    # trace time, and must not be rejected.
    f = jax.jit(lambda e, m: jnorm.batch_norm(X, S4, epsilon=e, momentum=m, **BN)[1].mean)
    assert f(1e-5, 0.9).shape == (4,)
    assert jax.jit(lambda e: jnorm.layer_norm(X, epsilon=e))(1e-3).shape == X.shape


# ----------------------------------------------------------------- axis keyword names


def test_every_public_function_uses_the_two_axis_names():
    """No public function or module constructor of jnorm takes an axis argument by another
    name than reduction_axes / feature_axes / axis_name / axis_index_groups (flax's module
    attributes are flax's, and checked against flax in tests/frontends/test_linen.py)."""
    import inspect

    allowed = {"reduction_axes", "feature_axes", "axis_name", "axis_index_groups"}
    for name in jnorm.__all__:
        obj = getattr(jnorm, name)
        if not callable(obj) or inspect.isclass(obj):
            continue
        params = set(inspect.signature(obj).parameters)
        axis_like = {p for p in params if "axis" in p or "axes" in p}
        assert axis_like <= allowed, (name, axis_like - allowed)


def test_lrn_modules_take_feature_axes():
    import jnorm.linen as jnn
    import jnorm.nnx as jnx

    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 3, 3)), jnp.float32)
    expected = jnorm.local_response_norm(x, size=3, feature_axes=1)
    np.testing.assert_array_equal(jnn.LocalResponseNorm(size=3, feature_axes=1).apply({}, x),
                                  expected)
    np.testing.assert_array_equal(jnx.LocalResponseNorm(size=3, feature_axes=1)(x), expected)
    assert not np.array_equal(jnx.LocalResponseNorm(size=3)(x), expected)  # the axis is used


# ------------------------------------------------------------------------------ mask dtype


def _mask_calls():
    """Every public function and module call of jnorm that takes `mask`, as (name, call(mask)).

    nnx modules mutate their state in place, which jax.eval_shape forbids: they run eagerly (the
    check is Python code that runs before any computation either way)."""
    import inspect

    import flax.nnx as fnnx

    import jnorm.nnx as jnx

    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 3, 4)), jnp.float32)
    extra = {"group_norm": {"num_groups": 2}, "GroupNorm": {"num_groups": 2},
             "moments": {"reduction_axes": 0}}
    calls = []
    for name in jnorm.__all__:
        fn = getattr(jnorm, name)
        if inspect.isclass(fn) or not callable(fn):
            continue
        params = inspect.signature(fn).parameters
        if "mask" not in params:
            continue
        kw = dict(extra.get(name, {}))
        if "state" in params:
            kw.update(state=jnorm.BatchStats.init(4), training=True)
        calls.append((name, lambda m, fn=fn, kw=kw: fn(x, mask=m, **kw)))
    modules = sorted(n for n in jnn.__all__ if inspect.isclass(getattr(jnn, n))
                     and "mask" in inspect.signature(getattr(jnn, n).__call__).parameters)
    for name in modules:
        kw = dict(extra.get(name, {}))
        if "Batch" in name:
            kw["use_running_average"] = False
        lin = getattr(jnn, name)(**kw)
        v = lin.init(jax.random.key(0), x)
        calls.append((f"linen.{name}", lambda m, lin=lin, v=v: lin.apply(
            v, x, mask=m, mutable=["batch_stats"])))
        mod = getattr(jnx, name)(4, rngs=fnnx.Rngs(0), **kw)
        calls.append((f"nnx.{name}", lambda m, mod=mod: mod(x, mask=m)))
    return x, [(name, call if name.startswith("nnx.") else
                (lambda m, call=call: _trace(lambda: call(m)))) for name, call in calls]


def test_non_boolean_mask_is_rejected_by_every_layer():
    """flax's masks are boolean; an int or float mask (often weights or indices) was silently
    turned into `mask != 0`. Every function and module that takes `mask` now refuses it at trace
    time, naming `mask` and the fix; the same mask as booleans is accepted."""
    x, calls = _mask_calls()
    names = {c[0] for c in calls}
    core = {"batch_norm", "layer_norm", "rms_norm", "group_norm", "instance_norm", "moments"}
    assert core <= names and {"linen.BatchNorm", "nnx.LayerNorm"} <= names, sorted(names)
    keep = np.random.default_rng(1).random(x.shape) < 0.7
    for name, call in calls:
        for bad in (keep.astype(np.int32), jnp.asarray(keep, jnp.float32)):
            with pytest.raises(TypeError, match=r"`mask` must be a boolean array.*"
                                                r"got dtype (int32|float32).*mask\.astype\(bool\)"):
                call(bad)
        assert call(jnp.asarray(keep)) is not None, name  # booleans: accepted
