"""jnorm._plan: which program each layer gets, and what each plan costs in passes over memory.

A pass is one read or write of an array of the input's size in the optimized HLO
(:func:`benchmarks.harness.count_passes`); the counts are those of XLA:CPU's programs for each
plan at small shapes (the test fails when a change of the plan or of the code behind it changes
the program, which then needs a new measurement in docs/benchmarks.md)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnorm
from benchmarks.harness import count_passes
from jnorm._plan import plan


def _layers():
    return {
        "batch_norm": ((64, 8, 8, 16), lambda x, s, b: jnorm.batch_norm(
            x, jnorm.BatchStats.init(16), s, b, training=True)[0]),
        "instance_norm": ((8, 16, 16, 16), jnorm.instance_norm),
        "group_norm": ((8, 16, 16, 64), lambda x, s, b: jnorm.group_norm(x, s, b, num_groups=8)),
        "layer_norm": ((256, 128), jnorm.layer_norm),
        "rms_norm": ((256, 128), lambda x, s, b: jnorm.rms_norm(x, s)),
    }


# (derivative on CPU, on GPU; passes of the forward, of forward+backward on XLA:CPU)
EXPECTED = {
    "batch_norm": ("autodiff", "per_block", 5, 11),
    "instance_norm": ("per_block", "per_block", 5, 8),
    "group_norm": ("two_stage", "two_stage", 7, 12),
    "layer_norm": ("autodiff", "rows", 5, 20),
    "rms_norm": ("rows", "rows", 3, 10),
}
# The statistics axes and the scale's broadcast shape of each layer at its shape above.
_AXES = {
    "batch_norm": ((0, 1, 2), (1, 1, 1, 16)), "instance_norm": ((1, 2), (1, 1, 1, 16)),
    "group_norm": ((1, 2, 4), (1, 1, 1, 8, 8)), "layer_norm": ((1,), (1, 128)),
    "rms_norm": ((1,), (1, 128)),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_layer_gets_its_plan(name):
    axes, scale = _AXES[name]
    center = name != "rms_norm"
    cpu, gpu = EXPECTED[name][:2]
    ndim = len(scale)
    assert plan(axes, ndim, center=center, param_shape=scale, backend="cpu").derivative == cpu
    assert plan(axes, ndim, center=center, param_shape=scale, backend="gpu").derivative == gpu
    assert plan(axes, ndim, masked=True, param_shape=scale).derivative == "autodiff"


def test_batch_norm_recomputes_its_residuals_on_cpu():
    """Batch norm's autodiff on XLA:CPU runs under ``jax.checkpoint`` (the backward recomputes
    the forward from x, so no full-size residual is kept: the ResNet-18 step needs 145 MiB of
    temporaries instead of 157, flax's 155); layer norm's does not (the transformer's step
    measured 6 ms slower recomputed)."""
    assert plan((0, 1, 2), 4, param_shape=(1, 1, 1, 16), backend="cpu").recompute
    assert not plan((0, 1, 2), 4, param_shape=(1, 1, 1, 16), backend="gpu").recompute
    assert not plan((1,), 2, param_shape=(1, 16), backend="cpu").recompute
    if jax.default_backend() != "cpu":
        return
    shape, layer = _layers()["batch_norm"]
    x, p = jnp.ones(shape), jnp.ones(shape[-1])
    assert "remat" in str(jax.make_jaxpr(layer)(x, p, p))  # jax.checkpoint's primitive
    shape, layer = _layers()["layer_norm"]
    x, p = jnp.ones(shape), jnp.ones(shape[-1])
    assert "remat" not in str(jax.make_jaxpr(layer)(x, p, p))


def _compiled(name: str) -> tuple[int, str, str]:
    """``(input size, optimized HLO of the forward, of forward+backward)`` of a layer at its
    shape above (scale and bias given; the backward of a random cotangent's dot product)."""
    shape, layer = _layers()[name]
    x = jax.random.normal(jax.random.key(0), shape)
    g = jax.random.normal(jax.random.key(1), shape)
    c = shape[-1]
    args = (x, jnp.ones(c), jnp.zeros(c))

    def loss(x, s, b):
        return jnp.sum(layer(x, s, b) * g)

    fwd = jax.jit(layer).lower(*args).compile().as_text()
    bwd = jax.jit(jax.grad(loss, (0, 1, 2))).lower(*args).compile().as_text()
    return x.size, fwd, bwd


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the counts are XLA:CPU's")
@pytest.mark.parametrize("name", list(EXPECTED))
def test_passes_of_each_plan(name):
    size, fwd, bwd = _compiled(name)
    _, _, n_fwd, n_bwd = EXPECTED[name]
    assert count_passes(fwd, size)["passes"] == n_fwd
    assert count_passes(bwd, size)["passes"] == n_bwd


def _full_size_loops(hlo: str, size: int) -> dict[str, str]:
    """The computations of `hlo` (name: body) that touch an array of `size` elements (a
    parameter or the result)."""
    found = {}
    for header, body in re.findall(r"^(%\S+ \(.*?\) -> .*?) \{\n(.*?)^\}", hlo, re.S | re.M):
        sizes = [int(np.prod([int(d) for d in dims.split(",") if d]))
                 for dims in re.findall(r"\[([\d,]*)\]", header)]
        if size in sizes:
            found[header.split(" ", 1)[0]] = body
    return found


def _loops_recomputing_the_pivot(hlo: str, size: int) -> list[str]:
    """The full-size computations that evaluate ``reduce-precision`` (jnorm._stats.settle)."""
    return [n for n, body in _full_size_loops(hlo, size).items() if "reduce-precision(" in body]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the plan of XLA:CPU")
@pytest.mark.parametrize("name", [n for n in EXPECTED if n != "rms_norm"])
def test_no_full_size_loop_recomputes_the_pivot(name):
    """``Plan.pivot_once`` on XLA:CPU: the settled shift and mean are computed once, so no
    full-size loop evaluates their ``reduce_precision`` per element (at the ResNet's batch-norm
    shapes that made the forward's output loop 1.6 times the cost of one without it; see
    docs/benchmarks.md). That holds for the forward and for forward+backward, whose
    derivative of ``settle`` is the identity (no rounding of the cotangent)."""
    assert plan((0, 1, 2), 4, backend="cpu").pivot_once
    assert not plan((0, 1, 2), 4, backend="gpu").pivot_once
    size, fwd, bwd = _compiled(name)
    for hlo in (fwd, bwd):
        # the check sees something: the pivot is settled, and full-size loops are found
        assert "reduce-precision(" in hlo and _full_size_loops(hlo, size)
        assert _loops_recomputing_the_pivot(hlo, size) == []


def test_the_pivot_check_sees_a_recomputed_pivot():
    """The HLO check above fails on a program that settles per element in a full-size loop."""
    from jnorm._stats import settle

    x = jnp.ones((64, 32))
    hlo = jax.jit(lambda v: v - settle(jnp.mean(v, 1, keepdims=True))).lower(x).compile()
    assert _loops_recomputing_the_pivot(hlo.as_text(), x.size)


def test_the_layer_norm_choice_follows_the_plan(monkeypatch):
    """On CPU layer norm is differentiated by plain autodiff (no custom rule in the jaxpr);
    on GPU it keeps the rule."""
    monkeypatch.setenv("JNORM_PALLAS", "0")
    x = jnp.ones((4, 8))

    def has_rule(backend):
        monkeypatch.setattr(jax, "default_backend", lambda: backend)
        return "name=_with_rule" in str(jax.make_jaxpr(lambda v: jnorm.layer_norm(v))(x))

    assert not has_rule("cpu")
    assert has_rule("gpu")


@pytest.mark.parametrize("name", ["batch_norm", "layer_norm"])
def test_the_rule_other_backends_get_is_exact_here(monkeypatch, request, name):
    """Batch and layer norm take plain autodiff on XLA:CPU and the derivative rule elsewhere;
    the rule is tested here by making the plan believe it runs on a GPU (the XLA path, no
    Pallas kernel): derivatives in every argument, both modes, float64 (check_grads), and in
    float32 at an offset of 1e4 against the CPU plan's autodiff within the bound of the exact
    statistics. Both are within a few ``gamma = log2(n) u`` of the exact gradient relative to
    its own scale (x - shift is exact here, n <= 36): 64 eps = 128 u leaves a factor of about
    ten, and is still a thousand times below an error of one ulp of the offset."""
    from jax.test_util import check_grads

    shape, layer = _layers()[name]
    shape = (4, 3, 3, 16) if name == "batch_norm" else (6, 16)  # _layers: 16 features
    c = shape[-1]
    monkeypatch.setenv("JNORM_PALLAS", "0")
    # Traces made under the patched backend must not serve later tests (the plan is part of
    # the trace): the caches are cleared when this test ends.
    request.addfinalizer(jax.clear_caches)

    def grads(backend, x, s, b, g):
        monkeypatch.setattr(jax, "default_backend", lambda: backend)
        jax.clear_caches()  # the plan is made at trace time; inner jits cache their traces
        jaxpr = str(jax.make_jaxpr(layer)(x, s, b))
        assert ("name=_with_rule" in jaxpr) == (backend == "gpu")
        return jax.jit(jax.grad(lambda x, s, b: jnp.sum(layer(x, s, b) * g), (0, 1, 2)))(x, s, b)

    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        x, g = (jnp.asarray(rng.standard_normal(shape)) for _ in range(2))
        s, b = jnp.asarray(1 + rng.random(c)), jnp.asarray(rng.standard_normal(c))
        monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
        jax.clear_caches()
        assert "name=_with_rule" in str(jax.make_jaxpr(layer)(x, s, b))
        check_grads(layer, (x, s, b), order=1, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)
    x = (1e4 + rng.standard_normal(shape)).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    s, b = (1 + rng.random(c)).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    rule, plain = grads("gpu", x, s, b, g), grads("cpu", x, s, b, g)
    for r, p in zip(rule, plain, strict=True):
        scale = float(jnp.max(jnp.abs(p)))
        np.testing.assert_allclose(r, p, atol=64 * np.finfo(np.float32).eps * scale)
