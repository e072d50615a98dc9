"""jnorm.nnx against flax.nnx, jnorm.linen and jnorm's functions; NNX transforms; orbax."""

from __future__ import annotations

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jnorm
import jnorm.linen as jnn
import jnorm.nnx as jnx
from tests.helpers import data
from tests.registry import FLAX_NNX_CASES, NNX_TWIN_CASES

X = data((6, 3, 3, 8), offset=1.5, spread=2.0)
STANDARD = jax.numpy_dtype_promotion("standard")  # flax itself mixes dtypes implicitly



def _pair(name, kw, wraps_dense=False):
    if wraps_dense:  # separate, identical layers: flax's wrappers write into theirs
        return tuple(getattr(ns, name)(nnx.Linear(8, 5, rngs=nnx.Rngs(1)), rngs=nnx.Rngs(0),
                                       **kw) for ns in (nnx, jnx))
    theirs = getattr(nnx, name)(8, rngs=nnx.Rngs(0), **kw)
    ours = getattr(jnx, name)(8, rngs=nnx.Rngs(0), **kw)
    return theirs, ours


def _shapes(state, types=True):
    return jax.tree.map(lambda v: (type(v).__name__ if types else "", v.shape, v.dtype), state,
                        is_leaf=lambda v: isinstance(v, nnx.Variable))


@pytest.mark.parametrize(("mc", "kw"), FLAX_NNX_CASES,
                         ids=[f"{mc.cls}-{i}" for i, (mc, _) in enumerate(FLAX_NNX_CASES)])
def test_same_variables_outputs_and_state_swaps_as_flax(mc, kw):
    """Each flax.nnx comparison of tests/registry.py (``ModuleCase.flax_nnx``).

    Wrappers: flax.nnx.WeightNorm keeps its scales as plain arrays (jnorm's are Params) and
    flax's wrappers write the normalized kernel into the wrapped layer (jnorm's leave it, see
    test_wrappers), so there the variable types and the layer's kernel after a call are not
    compared."""
    theirs, ours = _pair(mc.cls, kw, mc.wraps_dense)
    assert _shapes(nnx.state(ours), not mc.wraps_dense) == _shapes(nnx.state(theirs),
                                                                    not mc.wraps_dense)
    nnx.update(ours, nnx.state(theirs))  # flax's state loads into jnorm's ...
    x = jnp.asarray(X)
    with STANDARD:
        y_theirs = theirs(x)
    y_ours = ours(x)
    assert y_ours.dtype == y_theirs.dtype
    np.testing.assert_allclose(y_ours, y_theirs, atol=5e-6, rtol=0)  # seen 2.4e-6; 10x eps: 1.7e-5
    for (p, a), (q, b) in zip(nnx.to_flat_state(nnx.state(ours)),
                              nnx.to_flat_state(nnx.state(theirs)), strict=True):
        assert p == q
        if not (mc.wraps_dense and p == ("layer_instance", "kernel")):
            np.testing.assert_allclose(a[...], b[...], rtol=1e-5, atol=1e-6, err_msg=str(p))
    nnx.update(theirs, nnx.state(ours))  # ... and back


def test_train_eval_and_call_override_as_flax():
    theirs, ours = _pair("BatchNorm", {})
    x = jnp.asarray(X)
    ours(x)
    mean = ours.mean[...]
    ours.eval()
    assert ours.use_running_average and theirs.use_running_average is False
    ours(x)
    np.testing.assert_array_equal(ours.mean[...], mean)  # eval: no update
    ours(x, use_running_average=False)  # the call overrides the attribute
    assert not np.array_equal(ours.mean[...], mean)
    ours.train()
    assert ours.use_running_average is False
    view = nnx.view(ours, use_running_average=True)
    assert view.use_running_average and not ours.use_running_average
    with pytest.raises(ValueError, match="use_running_average"):
        jnx.BatchNorm(8, use_running_average=None, rngs=nnx.Rngs(0))(x)


def test_mask_and_custom_promote_dtype_as_flax():
    mask = jnp.asarray(np.arange(6) % 3 != 0)[:, None, None, None]
    x = jnp.asarray(X)
    for name in ("BatchNorm", "LayerNorm", "InstanceNorm"):
        theirs, ours = _pair(name, {"promote_dtype": lambda a, **_: a})
        with STANDARD:
            y_theirs = theirs(x, mask=mask)
        keep = np.arange(6) % 3 != 0  # flax returns NaN for the examples the mask hides
        np.testing.assert_allclose(ours(x, mask=mask)[keep], y_theirs[keep], atol=5e-6,
                                   rtol=0)
    # flax.nnx's default promotion: half input with float32 statistics returns float32
    theirs, ours = _pair("BatchNorm", {})
    with STANDARD:
        assert ours(x.astype(jnp.float16)).dtype == theirs(x.astype(jnp.float16)).dtype


# flax.nnx writes the complex mean into its float32 variable; JAX warns about that scatter
# (a FutureWarning from flax's code, not jnorm's: jnorm's own call below runs unfiltered).
@pytest.mark.filterwarnings("ignore:scatter inputs have incompatible types:FutureWarning")
def test_complex_input_as_flax_nnx():
    """flax.nnx keeps float32 statistics (the imaginary part of the mean is dropped)."""
    x = jnp.asarray(X[:, 0, 0, :], jnp.complex64) * jnp.complex64(1 - 0.5j)
    theirs, ours = _pair("BatchNorm", {"dtype": jnp.complex64})
    with STANDARD, pytest.warns(np.exceptions.ComplexWarning):
        y_theirs = theirs(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # jnorm's call warns about nothing
        y_ours = ours(x)
    assert y_ours.dtype == y_theirs.dtype == jnp.complex64
    np.testing.assert_allclose(y_ours, y_theirs, atol=2e-6)
    for k in ("mean", "var"):
        assert getattr(ours, k)[...].dtype == getattr(theirs, k)[...].dtype == jnp.float32
        np.testing.assert_allclose(getattr(ours, k)[...], getattr(theirs, k)[...], rtol=3e-6)


# Every nnx module beside its linen twin and its function: bitwise equal on the same variables.
#: (ModuleCase, nnx constructor keywords) compared bitwise with the linen twin, which is
#: built with the case's linen keywords (e.g. use_running_average=False) plus the same ones
#: (the registry's ModuleCase.nnx_twin).
EVERY = NNX_TWIN_CASES


@pytest.mark.parametrize(("mc", "kw"), EVERY, ids=[f"{mc.cls}-{i}" for i, (mc, _) in
                                                    enumerate(EVERY)])
def test_bitwise_equal_to_linen_on_the_same_variables(mc, kw):
    x = jnp.asarray(X)
    ours = getattr(jnx, mc.cls)(8, rngs=nnx.Rngs(0), **kw)
    twin = getattr(jnn, mc.cls)(**{**mc.kwargs, **kw})
    variables = twin.init(jax.random.key(0), x)
    variables = jax.tree.map(lambda a: a + 0.25 if a.dtype == jnp.float32 else a, variables)
    flat = {".".join(str(k.key) for k in path[1:]): value
            for path, value in jax.tree_util.tree_leaves_with_path(variables)}
    for path, var in nnx.to_flat_state(nnx.state(ours)):
        var[...] = flat.pop(".".join(map(str, path)))
    assert not flat  # the same names, one for one
    y_linen, updates = twin.apply(variables, x, mutable=["batch_stats"])
    y_nnx = ours(x)
    np.testing.assert_array_equal(y_nnx, y_linen)
    for path, var in nnx.to_flat_state(nnx.state(ours, nnx.BatchStat)):
        np.testing.assert_array_equal(var[...], updates["batch_stats"][path[-1]])


def test_bitwise_equal_to_the_functions():
    x = jnp.asarray(X)
    bn = jnx.BatchNorm(8, rngs=nnx.Rngs(0))
    y, state = jnorm.batch_norm(x, jnorm.BatchStats.init(8), jnp.ones(8), jnp.zeros(8),
                                training=True)
    np.testing.assert_array_equal(bn(x), y)
    np.testing.assert_array_equal(bn.var[...], state.var)
    ln = jnx.LayerNorm(8, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(ln(x), jnorm.layer_norm(x, jnp.ones(8), jnp.zeros(8),
                                                          epsilon=1e-6))
    gn = jnx.GroupNorm(8, num_groups=2, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(gn(x), jnorm.group_norm(x, jnp.ones(8), jnp.zeros(8),
                                                          num_groups=2, epsilon=1e-6))


def test_flax_degenerate_inputs_return_flax_values():
    """One value per statistic: flax returns the bias; so do the modules (the functions raise)."""
    x = jnp.asarray(X[:, 0, 0, :])  # (N, C)
    theirs, ours = _pair("InstanceNorm", {"bias_init": nnx.initializers.constant(0.5)})
    with STANDARD:
        np.testing.assert_array_equal(ours(x), theirs(x))
    with pytest.raises(ValueError, match="no spatial axis"):
        jnorm.instance_norm(x)
    one = jnp.asarray(X[:1, :1, :1, :])  # flax's ResNet init: (1, 1, 1, C) at the last stage
    theirs, ours = _pair("BatchNorm", {})
    with STANDARD:
        np.testing.assert_array_equal(ours(one), theirs(one))
    np.testing.assert_allclose(ours.mean[...], theirs.mean[...], rtol=3e-6)
    with pytest.raises(ValueError, match="more than one value per channel"):
        jnorm.batch_norm(one, jnorm.BatchStats.init(8), training=True)
    with pytest.raises(ValueError, match="The channel axes cannot include the leading"):
        jnx.InstanceNorm(8, feature_axes=0, rngs=nnx.Rngs(0))(jnp.asarray(X))


def test_wrappers():
    x = jnp.asarray(X[:, 0, 0, :])
    dense = nnx.Linear(8, 5, rngs=nnx.Rngs(1))
    plain = dense(x)
    wn = jnx.WeightNorm(dense, rngs=nnx.Rngs(2))
    np.testing.assert_allclose(wn(x), plain, rtol=2e-5, atol=1e-5)  # g = ||v|| at init
    kernel = dense.kernel[...]
    wn.scales[("kernel",)][...] = 2.0 * wn.scales[("kernel",)][...]
    np.testing.assert_array_equal(dense.kernel[...], kernel)  # the layer's kernel is untouched
    ws = jnx.WeightStandardization(dense, scaled=True)
    np.testing.assert_array_equal(
        ws(x), x @ jnorm.scaled_standardize_weight(kernel, jnp.ones(5)) + dense.bias[...][None]
    )
    sn = jnx.SpectralNorm(dense, rngs=nnx.Rngs(3))
    sigma = sn.batch_stats[("kernel", "sigma")][...]
    np.testing.assert_allclose(sigma, np.linalg.svd(kernel, compute_uv=False)[0], rtol=1e-5)
    np.testing.assert_allclose(sn(x), x @ (kernel / sigma) + dense.bias[...][None], rtol=1e-5,
                               atol=1e-6)
    u = sn.batch_stats[("kernel", "u")][...]
    sn.eval()
    sn(x)
    np.testing.assert_array_equal(sn.batch_stats[("kernel", "u")][...], u)
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(wn)
    assert float(jnp.abs(grads["layer_instance"]["kernel"][...]).sum()) > 0
    assert float(jnp.abs(grads["scales"][("kernel",)][...]).sum()) > 0
    lrn = jnx.LocalResponseNorm(size=3)
    np.testing.assert_array_equal(lrn(jnp.asarray(X)), jnorm.local_response_norm(
        jnp.asarray(X), size=3))


# ------------------------------------------------------------------------ NNX transformations


class CNN(nnx.Module):
    """Conv -> norm -> relu -> conv -> norm -> mean -> linear, with `norms` (flax.nnx or ours)."""

    def __init__(self, norms, *, rngs):
        self.conv1 = nnx.Conv(3, 8, (3, 3), rngs=rngs)
        self.bn1 = norms.BatchNorm(8, rngs=rngs)
        self.conv2 = nnx.Conv(8, 8, (3, 3), rngs=rngs)
        self.gn = norms.GroupNorm(8, num_groups=4, rngs=rngs)
        self.ln = norms.LayerNorm(8, rngs=rngs)
        self.head = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.relu(self.gn(self.conv2(x)))
        return self.head(self.ln(x.mean((1, 2))))


def _train(model, xs, ys, steps):
    opt = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, x, y):
        def loss(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        value, grads = nnx.value_and_grad(loss)(model)
        opt.update(model, grads)
        return value

    with STANDARD:
        return [float(step(model, opt, xs[i], ys[i])) for i in range(steps)]


def test_cnn_trains_like_flax_and_swaps_state_and_orbax_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.normal(1.0, 2.0, (3, 8, 6, 6, 3)), jnp.float32)
    ys = jnp.asarray(rng.integers(0, 4, (3, 8)))
    theirs = CNN(nnx, rngs=nnx.Rngs(0))
    ours = CNN(jnx, rngs=nnx.Rngs(0))
    nnx.update(ours, nnx.state(theirs))  # the same state
    loss_theirs, loss_ours = _train(theirs, xs, ys, 3), _train(ours, xs, ys, 3)
    np.testing.assert_allclose(loss_ours, loss_theirs, rtol=1e-5)
    for (p, a), (q, b) in zip(nnx.to_flat_state(nnx.state(ours)),
                              nnx.to_flat_state(nnx.state(theirs)), strict=True):
        assert p == q
        np.testing.assert_allclose(a[...], b[...], rtol=2e-5, atol=2e-6, err_msg=str(p))
    ours.eval(), theirs.eval()
    with STANDARD:
        np.testing.assert_allclose(ours(xs[0]), theirs(xs[0]), rtol=2e-5, atol=2e-5)
        nnx.update(theirs, nnx.state(ours))  # jnorm's state loads into flax's model
        np.testing.assert_allclose(ours(xs[0]), theirs(xs[0]), rtol=2e-5, atol=2e-5)
    # orbax: save jnorm's state, restore into a fresh abstract model, same outputs
    import orbax.checkpoint as ocp

    graphdef, state = nnx.split(ours)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "ckpt", state)
        ckpt.wait_until_finished()
        abstract = nnx.eval_shape(lambda: CNN(jnx, rngs=nnx.Rngs(1)))
        _, abstract_state = nnx.split(abstract)
        restored = ckpt.restore(tmp_path / "ckpt", abstract_state)
    again = nnx.merge(graphdef, restored)
    np.testing.assert_array_equal(again(xs[0]), ours(xs[0]))


def test_split_merge_vmap_and_scan():
    x = jnp.asarray(X[:, 0, 0, :])

    @nnx.split_rngs(splits=3)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs):
        return jnx.LayerNorm(8, rngs=rngs)

    stack = make(nnx.Rngs(0))  # a stack of 3 layers, scanned over
    assert stack.scale[...].shape == (3, 8)
    stack.scale[...] = stack.scale[...] * jnp.arange(1.0, 4.0)[:, None]

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def forward(h, layer):
        return layer(h) + 1.0

    y = forward(x, stack)
    h = x
    for i in range(3):
        h = jnorm.layer_norm(h, jnp.full(8, i + 1.0), jnp.zeros(8)) + 1.0
    np.testing.assert_allclose(y, h, rtol=1e-6, atol=1e-6)
    # vmap over a batch of inputs through one BatchNorm (state broadcast), and split/merge
    bn = jnx.BatchNorm(8, rngs=nnx.Rngs(0))
    graphdef, params, stats = nnx.split(bn, nnx.Param, nnx.BatchStat)
    again = nnx.merge(graphdef, params, stats)
    np.testing.assert_array_equal(again(x), jnx.BatchNorm(8, rngs=nnx.Rngs(0))(x))
    out = nnx.vmap(lambda m, xb: m(xb, use_running_average=True), in_axes=(None, 0))(
        again, jnp.stack([x, 2 * x])
    )
    assert out.shape == (2, *x.shape)
    # axis_name: statistics combined over nnx.vmap's axis equal one BatchNorm on the whole batch
    xs = jnp.asarray(X[:, :2, 0, :])  # 6 "devices" of 2 examples
    synced = jnx.BatchNorm(8, axis_name="dev", rngs=nnx.Rngs(0))
    whole = jnx.BatchNorm(8, rngs=nnx.Rngs(0))
    shared = nnx.StateAxes({nnx.BatchStat: None, nnx.Param: None})
    y = nnx.vmap(lambda m, xb: m(xb), in_axes=(shared, 0), axis_name="dev")(synced, xs)
    np.testing.assert_allclose(y, whole(xs.reshape(12, 8)).reshape(6, 2, 8), atol=1e-5)
    np.testing.assert_allclose(synced.var[...], whole.var[...], rtol=1e-6)


def test_linen_complex_mean_and_stored_dtypes_as_flax():
    """Every stored statistic has the dtype flax stores (complex means included)."""
    xc = jnp.asarray(X[:, 0, 0, :], jnp.complex64) * jnp.complex64(1 + 0.5j)
    m = jnn.BatchNorm(use_running_average=False, dtype=jnp.complex64)
    with STANDARD:
        f = nn.BatchNorm(use_running_average=False, dtype=jnp.complex64)
        _, want = f.apply(f.init(jax.random.key(0), xc), xc, mutable=["batch_stats"])
    _, got = m.apply(m.init(jax.random.key(0), xc), xc, mutable=["batch_stats"])
    for k in ("mean", "var"):
        assert got["batch_stats"][k].dtype == want["batch_stats"][k].dtype
        np.testing.assert_allclose(got["batch_stats"][k], want["batch_stats"][k], rtol=1e-5)
    assert jnp.iscomplexobj(got["batch_stats"]["mean"])
    xh = jnp.asarray(X).astype(jnp.bfloat16)
    for param_dtype in (jnp.float32, jnp.bfloat16):
        for force in (True, False):
            kw = {"param_dtype": param_dtype, "force_float32_reductions": force,
                  "use_running_average": False}
            with STANDARD:
                f = nn.BatchNorm(**kw)
                _, want = f.apply(f.init(jax.random.key(0), xh), xh, mutable=["batch_stats"])
            for cls in (jnn.BatchNorm, jnn.BatchRenorm, jnn.EvoNormB0):
                m = cls(**kw)
                v = m.init(jax.random.key(0), xh)
                _, got = m.apply(v, xh, mutable=["batch_stats"])
                for k in ("mean", "var"):
                    assert v["batch_stats"][k].dtype == jnp.dtype(
                        jnp.float32 if force else param_dtype), (cls, kw)
                    assert got["batch_stats"][k].dtype == want["batch_stats"][k].dtype, (cls, kw)


def test_every_module_is_in_both_frameworks_and_tested_here():
    assert jnx.__all__ == jnn.__all__
    for name in jnx.__all__:
        assert isinstance(getattr(jnx, name), type) and isinstance(getattr(jnn, name), type)
    tested = {mc.cls for mc, _ in EVERY} | {"WeightNorm", "WeightStandardization", "SpectralNorm",
                                      "LocalResponseNorm"}
    assert set(jnx.__all__) == tested  # a new module needs ModuleCase.nnx_twin (or test_wrappers)


def test_cumulative_average_with_a_mask_counts_per_feature():
    """momentum=None keeps a count per feature, so a mask hiding a feature leaves it alone."""
    x = jnp.asarray(X[:, 0, 0, :])
    mask = jnp.ones(x.shape, bool).at[:, 0].set(False)
    ours = jnx.BatchNorm(8, momentum=None, rngs=nnx.Rngs(0))
    ours(x, mask=mask)
    twin = jnn.BatchNorm(use_running_average=False, momentum=None)
    _, upd = twin.apply(twin.init(jax.random.key(0), x), x, mask=mask, mutable=["batch_stats"])
    for stats in (upd["batch_stats"], {k: getattr(ours, k)[...] for k in ("mean", "count")}):
        np.testing.assert_array_equal(stats["count"], [0] + [1] * 7)
        assert float(stats["mean"][0]) == 0.0
        np.testing.assert_allclose(stats["mean"][1:], x[:, 1:].mean(0), rtol=1e-6)
