"""Cross-device statistics on the 8 host CPU devices that conftest.py forces.

The invariant: synced batch norm over a mapped axis (``shard_map``, ``pmap``) equals batch norm
on one device over the concatenated batch -- outputs, input gradients and running statistics --
also when masks give each device a different number of elements (one device none at all). The
single-device result is itself checked against a float64 NumPy oracle.

Shapes are tiny and each mapped function is compiled once: the whole module runs in well under
a minute on two cores.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jnorm
import jnorm.linen as jnn
from benchmarks.bench_collectives import count_collectives
from tests.helpers import rel_err

D = 8  # devices
R = 3  # rows per device
C = 3  # channels
SHAPE = (D * R, 2, C)  # (N, W, C): statistics over N and W
MOMENTUM = 0.9
EPS = 1e-5

pytestmark = pytest.mark.skipif(
    jax.device_count() < D, reason=f"needs {D} devices (conftest.py forces {D} host devices)"
)


def _mesh() -> Mesh:
    # An Auto-typed mesh: shard_map's in_specs then reshard plain arrays as needed.
    # (jax.make_mesh makes Explicit axes, which require inputs already sharded like in_specs.)
    return Mesh(np.array(jax.devices()[:D]), ("d",))


def _data(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Each device's rows sit around a different offset, so the per-device pivots differ and the
    # combination around a common pivot is exercised; channels have different scales.
    offsets = np.repeat(np.arange(D, dtype=np.float64) * 0.7, R)[:, None, None]
    x = 5.0 + offsets + rng.normal(size=SHAPE) * np.array([1.0, 3.0, 0.5])
    mask = rng.random(SHAPE) < 0.6
    mask[2 * R: 3 * R] = False  # device 2 holds no valid element
    mask[0, 0, :] = True  # every channel has data somewhere
    return dict(
        x=x.astype(np.float32),
        mask=mask,
        w=rng.normal(size=SHAPE).astype(np.float32),  # cotangent of the output
        scale=(1.0 + 0.1 * rng.normal(size=C)).astype(np.float32),
        bias=rng.normal(size=C).astype(np.float32),
    )


DATA = _data()
STATE = jnorm.BatchStats.init(C)


def _oracle(x: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 NumPy: batch-norm output (with DATA's scale/bias), batch mean and variance."""
    x = x.astype(np.float64)
    w = np.ones_like(x) if mask is None else mask.astype(np.float64)
    n = w.sum((0, 1))
    mean = (w * x).sum((0, 1)) / n
    var = (w * (x - mean) ** 2).sum((0, 1)) / n
    y = DATA["scale"] * (x - mean) / np.sqrt(var + EPS) + DATA["bias"]
    return y, mean, var


def _bn(x: jax.Array, mask: jax.Array | None, scale: jax.Array, bias: jax.Array,
        **kw: object) -> tuple[jax.Array, jnorm.BatchStats]:
    return jnorm.batch_norm(
        x, STATE, scale, bias, training=True, momentum=MOMENTUM, epsilon=EPS, mask=mask, **kw
    )


def _with_grads(forward):
    """jit of (y, state, dloss/dx, dloss/dscale) for loss = sum(y * w)."""

    def loss(x, mask, scale, bias, w):
        y, state = forward(x, mask, scale, bias)
        return jnp.sum(y * w), (y, state)

    @jax.jit
    def run(x, mask, scale, bias, w=DATA["w"]):
        (_, (y, state)), (dx, dscale) = jax.value_and_grad(loss, (0, 2), has_aux=True)(
            x, mask, scale, bias, w
        )
        return y, state, dx, dscale

    return run


def _single(x, mask, scale, bias):
    return _bn(x, mask, scale, bias)


def _shard_map(x, mask, scale, bias):
    # Default check_vma=True: the running statistics leave replicated, out_specs=P().
    return jax.shard_map(
        lambda x, m, s, b: _bn(x, m, s, b, axis_name="d"), mesh=_mesh(),
        in_specs=(P("d"), P("d"), P(), P()), out_specs=(P("d"), P()),
    )(x, mask, scale, bias)


def _pmap(x, mask, scale, bias):
    split = (D, R, *SHAPE[1:])
    y, state = jax.pmap(
        lambda x, m, s, b: _bn(x, m, s, b, axis_name="d"), axis_name="d",
        in_axes=(0, 0, None, None),
    )(x.reshape(split), None if mask is None else mask.reshape(split), scale, bias)
    # pmap returns one copy of the running statistics per device: all must be equal.
    return y.reshape(SHAPE), state


@pytest.fixture(scope="module")
def single_device() -> dict[bool, tuple]:
    run = _with_grads(_single)
    return {m: run(DATA["x"], DATA["mask"] if m else None, DATA["scale"], DATA["bias"])
            for m in (False, True)}


def test_single_device_reference_matches_float64_oracle(single_device: dict) -> None:
    for masked in (False, True):
        y, state, _, _ = single_device[masked]
        want_y, mean, var = _oracle(DATA["x"], DATA["mask"] if masked else None)
        assert rel_err(y, want_y) < 1e-5
        np.testing.assert_allclose(state.mean, MOMENTUM * 0 + (1 - MOMENTUM) * mean, rtol=1e-5)
        np.testing.assert_allclose(state.var, MOMENTUM * 1 + (1 - MOMENTUM) * var, rtol=1e-5)


@pytest.mark.parametrize("masked", [False, True], ids=["full", "masked"])
@pytest.mark.parametrize("style", ["shard_map", "pmap"])
def test_synced_batch_norm_equals_single_device(style: str, masked: bool,
                                                single_device: dict) -> None:
    mask = DATA["mask"] if masked else None
    if masked:  # the mask really gives devices different counts, one of them none
        counts = DATA["mask"].reshape(D, -1).sum(1)
        assert counts[2] == 0 and len(set(counts.tolist())) > 2
    forward = {"shard_map": _shard_map, "pmap": _pmap}[style]
    y, state, dx, dscale = _with_grads(forward)(DATA["x"], mask, DATA["scale"], DATA["bias"])
    want_y, want_state, want_dx, want_dscale = single_device[masked]
    assert rel_err(y, want_y) <= 1e-6
    assert rel_err(dx, want_dx) <= 1e-6
    assert rel_err(dscale, want_dscale) <= 1e-6
    mean, var = np.asarray(state.mean), np.asarray(state.var)
    if style == "pmap":  # one copy per device, bitwise identical
        assert mean.shape == (D, C)
        assert (mean == mean[:1]).all() and (var == var[:1]).all()
        assert (np.asarray(state.count) == 1).all()
        mean, var = mean[0], var[0]
    assert rel_err(mean, want_state.mean) <= 1e-6
    assert rel_err(var, want_state.var) <= 1e-6


def test_linen_batch_norm_synced_under_shard_map() -> None:
    """The linen module with axis_name: outputs, param/input grads and batch_stats."""
    model = jnn.BatchNorm(use_running_average=False, momentum=MOMENTUM, epsilon=EPS)
    synced = model.clone(axis_name="d")
    x, mask, w = (jnp.asarray(DATA[k]) for k in ("x", "mask", "w"))
    stats0 = model.init(jax.random.key(0), x[:R])["batch_stats"]
    params = {"scale": jnp.asarray(DATA["scale"]), "bias": jnp.asarray(DATA["bias"])}

    def grads(mdl: jnn.BatchNorm):
        def loss(params, x, m, w):
            y, upd = mdl.apply({"params": params, "batch_stats": stats0}, x, mask=m,
                               mutable=["batch_stats"])
            return jnp.sum(y * w), (y, upd["batch_stats"])

        return jax.value_and_grad(loss, (0, 1), has_aux=True)

    def body(params, x, m, w):
        (_, aux), (dparams, dx) = grads(synced)(params, x, m, w)
        # With check_vma (the default) the gradient of the replicated params is already the
        # sum over devices, as data-parallel training needs.
        return aux, (dparams, dx)

    run = jax.jit(jax.shard_map(
        body, mesh=_mesh(), in_specs=(P(), P("d"), P("d"), P("d")),
        out_specs=((P("d"), P()), (P(), P("d"))),
    ))
    (y, stats), (dparams, dx) = run(params, x, mask, w)
    (_, (want_y, want_stats)), (want_dparams, want_dx) = jax.jit(grads(model))(
        params, x, mask, w
    )
    assert rel_err(y, want_y) <= 1e-6
    assert rel_err(dx, want_dx) <= 1e-6
    for k in ("scale", "bias"):
        assert rel_err(dparams[k], want_dparams[k]) <= 1e-6
    for k in ("mean", "var"):
        assert rel_err(stats[k], want_stats[k]) <= 1e-6
    _, mean, _ = _oracle(DATA["x"], DATA["mask"])
    np.testing.assert_allclose(stats["mean"], (1 - MOMENTUM) * mean, rtol=1e-5)


def test_sharded_jit_equals_single_device(single_device: dict) -> None:
    """No axis_name: jit with NamedSharding inputs; XLA inserts the collectives."""
    mesh = _mesh()
    rows = NamedSharding(mesh, P("d"))
    x = jax.device_put(DATA["x"], rows)
    mask = jax.device_put(DATA["mask"], rows)
    y, state, dx, dscale = _with_grads(_single)(x, mask, DATA["scale"], DATA["bias"])
    assert y.sharding.is_equivalent_to(rows, y.ndim)  # the output stays sharded by rows
    want_y, want_state, want_dx, want_dscale = single_device[True]
    assert rel_err(y, want_y) <= 1e-6
    assert rel_err(dx, want_dx) <= 1e-6
    assert rel_err(dscale, want_dscale) <= 1e-6
    assert rel_err(state.mean, want_state.mean) <= 1e-6
    assert rel_err(state.var, want_state.var) <= 1e-6


GROUPS = [[0, 2, 4, 6], [1, 3, 5, 7]]  # interleaved, so a wrong device order shows


@pytest.mark.parametrize("style", ["shard_map", "pmap"])
def test_axis_index_groups_give_per_group_statistics(style: str) -> None:
    x, mask = DATA["x"], DATA["mask"]
    split = (D, R, *SHAPE[1:])

    def local(x, m, s, b):
        y, st = _bn(x, m, s, b, axis_name="d", axis_index_groups=GROUPS)
        return y, jax.tree.map(lambda a: a[None], st)  # per-device copy (groups differ)

    if style == "shard_map":
        mapped = jax.shard_map(local, mesh=_mesh(), in_specs=(P("d"), P("d"), P(), P()),
                               out_specs=(P("d"), P("d")))
        fwd = lambda x, m, s, b: mapped(x, m, s, b)  # noqa: E731
    else:
        pm = jax.pmap(local, axis_name="d", in_axes=(0, 0, None, None))

        def fwd(x, m, s, b):
            y, st = pm(x.reshape(split), m.reshape(split), s, b)
            return y.reshape(SHAPE), jax.tree.map(lambda a: a[:, 0], st)

    y, state, dx, _ = _with_grads(fwd)(x, mask, DATA["scale"], DATA["bias"])
    ref = _with_grads(_single)
    for group in GROUPS:
        rows = np.concatenate([np.arange(d * R, (d + 1) * R) for d in group])
        want_y, want_state, want_dx, _ = ref(
            x[rows], mask[rows], DATA["scale"], DATA["bias"], DATA["w"][rows]
        )
        assert rel_err(np.asarray(y)[rows], want_y) <= 1e-6
        assert rel_err(np.asarray(dx)[rows], want_dx) <= 1e-6
        for d in group:
            assert rel_err(state.mean[d], want_state.mean) <= 1e-6
            assert rel_err(state.var[d], want_state.var) <= 1e-6
    assert not np.allclose(state.mean[0], state.mean[1])  # the two groups really differ


@pytest.mark.parametrize("center", [True, False])
def test_moments_with_axis_name_match_float64(center: bool) -> None:
    """Far from zero (1e4), unequal counts, a device without data, with and without groups."""
    rng = np.random.default_rng(1)
    x = (1e4 + np.repeat(np.arange(D), R)[:, None] * 0.5
         + rng.normal(size=(D * R, C))).astype(np.float32)
    mask = DATA["mask"][:, 0, :]

    def local(x, m):
        full = jnorm.moments(x, 0, mask=m, axis_name="d", center=center)
        grouped = jnorm.moments(x, 0, mask=m, axis_name="d", axis_index_groups=GROUPS,
                                center=center)
        return full, jax.tree.map(lambda a: a[None], grouped)

    (mean, var), (gmean, gvar) = jax.jit(jax.shard_map(
        local, mesh=_mesh(), in_specs=(P("d"), P("d")), out_specs=((P(), P()), (P("d"), P("d")))
    ))(x, mask)

    def oracle(rows):
        x64, w = x[rows].astype(np.float64), mask[rows].astype(np.float64)
        n = w.sum(0)
        mu = (w * x64).sum(0) / n if center else np.zeros(C)
        return mu, (w * (x64 - mu) ** 2).sum(0) / n

    want_mean, want_var = oracle(np.arange(D * R))
    np.testing.assert_allclose(mean, want_mean, rtol=1e-6)
    np.testing.assert_allclose(var, want_var, rtol=1e-5 if center else 1e-6)
    for group in GROUPS:
        rows = np.concatenate([np.arange(d * R, (d + 1) * R) for d in group])
        want_mean, want_var = oracle(rows)
        for d in group:
            np.testing.assert_allclose(gmean[d], want_mean, rtol=1e-6)
            np.testing.assert_allclose(gvar[d], want_var, rtol=1e-5 if center else 1e-6)


def test_gradients_through_the_collective_float64() -> None:
    """check_grads (forward and reverse mode) of synced batch norm and rms norm, in float64."""
    from jax.test_util import check_grads

    with jax.enable_x64(True):
        x = jnp.asarray(DATA["x"][:, 0, :], jnp.float64)
        mask = jnp.asarray(DATA["mask"][:, 0, :])
        w = jnp.asarray(DATA["w"][:, 0, :], jnp.float64)
        state = jnorm.BatchStats.init(C, jnp.float64)

        def local(x, m, w):
            y, st = jnorm.batch_norm(x, state, training=True, mask=m, axis_name="d")
            rms = jnorm.rms_norm(x, reduction_axes=0, axis_name="d")  # the center=False collective
            return lax.psum(jnp.sum(y * w) + jnp.sum(jnp.sin(rms) * w) + jnp.sum(st.var), "d")

        f = jax.jit(jax.shard_map(local, mesh=_mesh(), in_specs=(P("d"), P("d"), P("d")),
                                  out_specs=P()))
        check_grads(lambda x: f(x, mask, w), (x,), order=1, modes=("fwd", "rev"),
                    atol=1e-6, rtol=1e-6)


def test_one_collective_per_training_batch_norm_call() -> None:
    """Structural: the compiled HLO of one synced call has exactly one collective."""
    x = jnp.zeros((D * 4, 4, 4, 16), jnp.float32)
    mask = jnp.ones((D * 4, 1, 1, 1), bool)
    state = jnorm.BatchStats.init(16)
    for kw in ({}, {"axis_index_groups": GROUPS}):
        f = jax.jit(jax.shard_map(
            lambda x, m, kw=kw: jax.tree.map(
                lambda a: a[None], jnorm.batch_norm(x, state, training=True, mask=m,
                                                    axis_name="d", **kw)),
            mesh=_mesh(), in_specs=(P("d"), P("d")), out_specs=P("d"),
        ))
        hlo = f.lower(x, mask).compile().as_text()
        counts = count_collectives(hlo)
        assert sum(counts.values()) == 1, counts
