"""The registry's tests: every public normalization, its float64 oracle, jit/vmap/grad, bad
arguments and its modules, plus the coverage test that fails for a public name the registry
does not know (see tests/registry.py)."""

from __future__ import annotations

import importlib
import inspect
import pathlib
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jnorm
import jnorm.linen as jnn
from tests.helpers import rel_err
from tests.registry import REGISTRY, SUPPORT, Entry

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODULE_CASES = [(e, mc) for e in REGISTRY for mc in e.linen]


def _y(out):
    return out[0] if isinstance(out, tuple) else out


def _with(flag: str) -> list[Entry]:
    return [e for e in REGISTRY if flag in e.flags]


# ----------------------------------------------------------------------------------- coverage


def _public_classes(module, base) -> set[str]:
    return {n for n, obj in vars(module).items()
            if not n.startswith("_") and inspect.isclass(obj) and issubclass(obj, base)
            and obj.__module__ == module.__name__}


def test_every_public_name_is_registered():
    covered = {e.name for e in REGISTRY} | set(SUPPORT)
    covered |= {c for e in REGISTRY for c in e.companions}
    missing = set(jnorm.__all__) - covered
    assert not missing, f"public names without a tests/registry.py entry: {sorted(missing)}"
    stale = covered - set(jnorm.__all__)
    assert not stale, f"registry names that jnorm does not export: {sorted(stale)}"
    for name, path in SUPPORT.items():  # the named test module really calls it
        assert re.search(rf"\b{name}\(", (ROOT / path).read_text()), (name, path)


def test_every_linen_module_is_registered():
    covered = {mc.cls for e in REGISTRY for mc in e.linen}
    missing = _public_classes(jnn, nn.Module) - covered
    assert not missing, f"jnorm.linen modules without a registry module case: {sorted(missing)}"


def test_every_nnx_module_is_registered():
    from flax import nnx

    import jnorm.nnx as jnnx

    covered = {c for e in REGISTRY for c in e.nnx}
    missing = _public_classes(jnnx, nnx.Module) - covered
    assert not missing, f"jnorm.nnx modules without a registry entry: {sorted(missing)}"


def _flax_twins(ours, theirs, base) -> set[str]:
    """Public module classes of `ours` whose class name `theirs` (flax) also has."""
    return {n for n in _public_classes(ours, base)
            if inspect.isclass(getattr(theirs, n, None)) and issubclass(getattr(theirs, n), base)}


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_every_module_flax_also_has_is_compared_with_flax(api: str):
    """A jnorm module whose class name flax.<api> also has needs a ModuleCase.flax (linen) or
    ModuleCase.flax_nnx (nnx) comparison in tests/registry.py."""
    ours, theirs = importlib.import_module(f"jnorm.{api}"), importlib.import_module(f"flax.{api}")
    field = "flax" if api == "linen" else "flax_nnx"
    compared = {mc.cls for e in REGISTRY for mc in e.linen if getattr(mc, field)}
    missing = _flax_twins(ours, theirs, theirs.Module) - compared
    assert not missing, (f"jnorm.{api} modules that flax.{api} also has, without a "
                         f"ModuleCase.{field} comparison in tests/registry.py: {sorted(missing)}")
    assert compared <= set(dir(theirs)), sorted(compared - set(dir(theirs)))


# ------------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("entry", REGISTRY, ids=repr)
def test_float32_matches_float64_oracle(entry: Entry):
    x, p = entry.data(), entry.args()
    y = _y(entry.call(jnp.asarray(x), p))
    assert y.shape == x.shape and y.dtype == jnp.float32
    ref = entry.ref(x.astype(np.float64), {k: np.asarray(v, np.float64) for k, v in p.items()})
    assert rel_err(y, ref) <= entry.rtol
    if entry.core:  # and without scale and bias
        assert rel_err(entry.apply(jnp.asarray(x)), entry.oracle(x)) <= entry.rtol


@pytest.mark.parametrize("entry", _with("half"), ids=repr)
def test_bfloat16_returns_bfloat16_close_to_oracle(entry: Entry):
    x = entry.data().astype(jnp.bfloat16)
    p = entry.args()
    y = _y(entry.call(jnp.asarray(x), p))
    assert y.dtype == jnp.bfloat16
    x64 = np.asarray(x.astype(np.float32), np.float64)
    assert rel_err(y.astype(jnp.float32), entry.ref(x64, p)) <= 8e-3  # one bf16 ulp; seen 3.4e-3


# ------------------------------------------------------------------------ transformations


def _reordered_tol(x, p) -> float:
    """How far two float32 evaluations of a core layer's output may differ when XLA orders the
    sums differently (jit vs eager, vmap vs loop): the statistics are exact to a few ulps of the
    input's magnitude, which the output sees divided by the spread and times the scale, plus a
    few ulps of the output itself. 16 ulps each: the exact-statistics bound with margin."""
    x = np.asarray(x, np.float64)
    u = float(np.finfo(np.float32).eps)
    z = np.abs(x).max() / x.std() + 1  # |x|/sigma and the standardized output
    s, b = (np.abs(np.asarray(p.get(k, 0.0))).max() for k in ("scale", "bias"))
    return 16 * u * (z * s + b)


@pytest.mark.parametrize("entry", REGISTRY, ids=repr)
def test_jit_and_vmap_equal_eager(entry: Entry):
    """Core layers' outputs agree within :func:`_reordered_tol`; the other layers and every
    state within 1e-5."""
    p = entry.args()
    xs = jnp.stack([jnp.asarray(entry.data(seed)) for seed in (0, 1)])
    f = lambda x: entry.call(x, p)  # noqa: E731
    eager = [f(x) for x in xs]
    jitted = jax.jit(f)(xs[0])
    batched = jax.vmap(f)(xs)

    def check(got, ref, x):
        tols = [(0.0, _reordered_tol(x, p))] if entry.core else []
        tols += [(1e-5, 1e-5)] * (len(jax.tree.leaves(ref)) - len(tols))
        for a, b, (rtol, atol) in zip(jax.tree.leaves(got), jax.tree.leaves(ref), tols,
                                      strict=True):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)

    for i in range(2):
        check(jax.tree.map(lambda a, i=i: a[i], batched), eager[i], xs[i])
    check(jitted, eager[0], xs[0])


@pytest.mark.parametrize("entry", _with("grad"), ids=repr)
def test_gradients_match_finite_differences_float64(entry: Entry):
    """First derivatives (reverse mode) in the input; for the core layers, whose derivative
    rule is jnorm's own, second derivatives in both modes in the input, scale and bias."""
    with jax.enable_x64(True):
        x = jnp.asarray(entry.data(), jnp.float64)
        p = {k: jnp.asarray(v, jnp.float64) for k, v in entry.args().items()}
        w = jnp.asarray(np.random.default_rng(7).standard_normal(entry.shape))
        if entry.core:
            names = tuple(p)  # scale and bias (RMS norm: scale)
            check_grads(jax.jit(lambda x, *a: jnp.sum(entry.apply(x, *a) * w)),
                        (x, *(p[n] for n in names)), order=2, modes=("fwd", "rev"),
                        atol=1e-5, rtol=1e-5)
        else:
            check_grads(jax.jit(lambda x: jnp.sum(_y(entry.call(x, p)) * w)), (x,), order=1,
                        modes=("rev",), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------- errors


def _error_cases(entry: Entry):
    x = jnp.asarray(entry.data())
    p = entry.args()
    scalar = x[(0,) * x.ndim]
    if "stateful" in entry.flags:
        cases = [(lambda: entry.fn(scalar, entry.state(x), training=True), r"`x`")]
    else:
        cases = [(lambda: entry.call(scalar, p), r"`(x|kernel)`")]
    if "epsilon" in entry.flags:
        cases += [(lambda: entry.call(x, {**p, "epsilon": -1.0}), r"`epsilon` must be finite"),
                  (lambda: entry.call(x, {**p, "epsilon": float("inf")}), r"`epsilon`")]
    if "momentum" in entry.flags:
        cases += [(lambda: entry.call(x, {**p, "momentum": 5.0}), r"`momentum` must lie"),
                  (lambda: entry.call(x, {**p, "momentum": True}), r"`momentum`=True")]
    if "dtype" in entry.flags:
        cases.append((lambda: entry.call(x, {**p, "dtype": jnp.int32}), r"`dtype`=.*floating"))
    if "mask" in entry.flags:
        cases.append((lambda: entry.call(x, {**p, "mask": jnp.ones((7,), bool)}), r"`mask`"))
    if "training" in entry.flags:
        state = entry.state(x)
        cases.append((lambda: jax.jit(lambda t: entry.fn(x, state, training=t))(True),
                      r"`training` must be a Python bool.*static"))
    return cases + [(lambda f=f: f(x), m) for f, m in entry.errors]


@pytest.mark.parametrize("entry", REGISTRY, ids=repr)
def test_bad_arguments_fail_at_trace_time_naming_the_argument(entry: Entry):
    for call, match in _error_cases(entry):
        with pytest.raises((ValueError, TypeError), match=match):
            jax.eval_shape(call)


# -------------------------------------------------------------------------------- modules


@pytest.mark.parametrize(("entry", "mc"), MODULE_CASES,
                         ids=[f"{e.name}-{mc.cls}" for e, mc in MODULE_CASES])
def test_linen_module_equals_function(entry: Entry, mc):
    cls = getattr(jnn, mc.cls)
    module = cls(nn.Dense(5), **mc.kwargs) if mc.wraps_dense else cls(**mc.kwargs)
    x = jnp.asarray(np.random.default_rng(3).standard_normal((3, 4)), jnp.float32) \
        if mc.wraps_dense else jnp.asarray(entry.data())
    v = module.init(jax.random.key(0), x, **mc.call_kwargs)
    leaves, treedef = jax.tree.flatten(v.get("params", {}))
    rng = np.random.default_rng(4)  # move the params off their initial values
    v = {**v, "params": jax.tree.unflatten(treedef, [
        a + jnp.asarray(0.2 * rng.standard_normal(a.shape), a.dtype) for a in leaves])}
    if mc.mutable:
        y, updates = module.apply(v, x, **mc.call_kwargs, mutable=["batch_stats"])
        y_ref, state_ref = mc.fn(v, x)
        for key, value in updates["batch_stats"].items():
            np.testing.assert_allclose(value, state_ref[key], rtol=1e-6, atol=1e-6)
    else:
        y, y_ref = module.apply(v, x, **mc.call_kwargs), mc.fn(v, x)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
