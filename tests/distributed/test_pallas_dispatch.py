"""Where the fused Pallas kernel runs, and that its path never breaks a program XLA runs.

The automatic choice (``implementation=None``) and ``implementation="pallas"`` against
sharded inputs (8 forced host devices, see conftest), the platform a computation lowers for
(not ``jax.default_backend()``), empty batches, and a jax whose Pallas cannot be imported.
A GPU host is faked by :func:`jnorm._pallas._dispatch.gpu_present`; the CUDA program is
checked by lowering for CUDA from this host (:mod:`jax.export`), the CPU program by running
it. On CPU the kernel runs in Pallas' interpret mode.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jnorm
from jnorm._pallas import _dispatch

TRITON = "__gpu$xla.gpu.triton"
TOL = {"atol": 2e-5, "rtol": 1e-5}  # float32 rounding of the same two-pass statistics


@pytest.fixture
def gpu_host(monkeypatch):
    """A host with a CUDA backend, as the dispatch sees it."""
    monkeypatch.setattr(_dispatch, "gpu_present", lambda: True)


def _custom_calls(f, *args, platform):
    """The custom-call targets of `f`'s program lowered for `platform` (no device needed)."""
    exp = export.export(jax.jit(f), platforms=[platform],
                        disabled_checks=[export.DisabledSafetyCheck.custom_call(TRITON)])(*args)
    text = exp.mlir_module()
    return set(re.findall(r"stablehlo\.custom_call @([^\(\s]+)\(", text)), text


def _x(shape=(64, 1024), seed=0):
    return jnp.asarray(3 + np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _layer(implementation=None):
    return lambda x: jnorm.layer_norm(x, implementation=implementation)


# --- the platform of the computation, not the default backend -------------------------------

def test_automatic_choice_lowers_the_kernel_for_cuda_only(gpu_host, monkeypatch):
    """On a GPU host the automatic program holds both: CUDA gets the Triton kernel, a CPU
    computation XLA (and runs), even if the default backend says GPU."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    x = _x()
    assert TRITON in _custom_calls(jnorm.layer_norm, x, platform="cuda")[0]
    assert TRITON not in _custom_calls(jnorm.layer_norm, x, platform="cpu")[0]
    cpu = jax.devices("cpu")[0]
    assert TRITON not in jax.jit(jnorm.layer_norm).lower(jax.device_put(x, cpu)).as_text()
    with jax.default_device(cpu):
        y = jax.jit(jnorm.layer_norm)(x)
    assert y.devices() == {cpu}
    np.testing.assert_allclose(y, jax.jit(_layer("xla"))(x), **TOL)
    # what the automatic choice leaves to XLA stays XLA on CUDA too
    assert TRITON not in _custom_calls(jnorm.rms_norm, x, platform="cuda")[0]
    assert TRITON not in _custom_calls(_layer("xla"), x, platform="cuda")[0]
    # derivatives use XLA's rule by design
    grad = jax.grad(lambda x: jnp.sum(jnorm.layer_norm(x) ** 3))
    assert TRITON not in _custom_calls(grad, x, platform="cuda")[0]


def test_requested_kernel_is_compiled_on_gpus_and_interpreted_elsewhere(gpu_host):
    x = _x()
    f = _layer("pallas")
    assert TRITON in _custom_calls(f, x, platform="cuda")[0]
    assert TRITON in _custom_calls(f, x, platform="rocm")[0]
    assert TRITON not in _custom_calls(f, x, platform="cpu")[0]
    np.testing.assert_allclose(jax.jit(f)(x), _layer("xla")(x), **TOL)


def test_requested_kernel_on_a_host_without_gpu():
    """``"pallas"`` is decided at lowering too: interpreted here, compiled for CUDA."""
    x = _x()
    f = _layer("pallas")
    assert TRITON in _custom_calls(f, x, platform="cuda")[0]
    assert "platform_index" in str(jax.make_jaxpr(f)(x))
    np.testing.assert_allclose(f(x), _layer("xla")(x), **TOL)


# --- sharded inputs --------------------------------------------------------------------------

def _sharded(shape, spec, mesh_shape=(4,), names=("data",), axis_types=None):
    """`_x(shape)` over a mesh of host CPU devices (on a GPU host too: a CPU computation)."""
    devices = np.array(jax.devices("cpu")[: math.prod(mesh_shape)]).reshape(mesh_shape)
    mesh = Mesh(devices, names, axis_types=axis_types or (AxisType.Explicit,) * len(names))
    return jax.device_put(_x(shape), NamedSharding(mesh, spec))


@pytest.mark.parametrize("implementation", [None, "pallas"])
def test_rows_sharded_run_the_kernel_per_shard(gpu_host, implementation):
    """(64, 1024) split over 4 devices by rows, under jit: the kernel runs
    per shard (each row's statistics are local), values and sharding as XLA's."""
    x = _sharded((64, 1024), P("data", None))
    f = _layer(implementation)
    y = jax.jit(f)(x)
    ref = jax.jit(_layer("xla"))(x)
    assert y.sharding == ref.sharding and y.sharding.spec == P("data", None)
    np.testing.assert_allclose(y, ref, **TOL)
    assert "shard_map" in str(jax.make_jaxpr(f)(x))
    calls, text = _custom_calls(f, x, platform="cuda")
    assert TRITON in calls and "manual_computation" in text  # the kernel inside shard_map


def test_rows_sharded_over_two_mesh_axes():
    x = _sharded((8, 8, 256), P("a", "b", None), (2, 4), ("a", "b"))
    y = jax.jit(_layer("pallas"))(x)
    assert y.sharding.spec == P("a", "b", None)
    np.testing.assert_allclose(y, jax.jit(_layer("xla"))(x), **TOL)


def test_split_features_take_xla_or_name_the_fix(gpu_host):
    """A sharded last axis: the kernel cannot run per shard (a row spans devices)."""
    x = _sharded((16, 1024), P("a", "b"), (2, 4), ("a", "b"))
    assert "pallas_call" not in str(jax.make_jaxpr(jnorm.layer_norm)(x))
    y = jax.jit(jnorm.layer_norm)(x)
    assert y.sharding.spec == P("a", "b")
    np.testing.assert_allclose(y, jax.jit(_layer("xla"))(x), **TOL)
    with pytest.raises(ValueError, match=r"implementation='pallas'.*last axis is sharded over "
                                         r"mesh axes \('b',\).*jax\.sharding\.reshard\(x, "
                                         r"P\('a', None\)\).*or 'xla'"):
        jax.jit(_layer("pallas"))(x)


def test_partitioner_sharded_inputs_take_xla(gpu_host):
    """Auto mesh axes: the sharding is the partitioner's, unknown when tracing, and it would
    gather a custom call's operands: the automatic choice keeps XLA."""
    x = _sharded((64, 1024), P("data", None), axis_types=(AxisType.Auto,))
    assert "pallas_call" not in str(jax.make_jaxpr(jnorm.layer_norm)(x))
    np.testing.assert_allclose(jax.jit(jnorm.layer_norm)(x), jax.jit(_layer("xla"))(x), **TOL)
    np.testing.assert_allclose(jax.jit(_layer("pallas"))(x), _layer("xla")(x), **TOL)


@pytest.mark.parametrize("check_vma", [True, False])
def test_inside_a_users_shard_map(gpu_host, check_vma):
    """Manual axes (the user's own shard_map): each device's block is local to the kernel,
    whose outputs vary over the same axes. (jax's Pallas interpreter fails on varying inputs,
    so there ``"pallas"`` off GPU computes with XLA.)"""
    x = _sharded((64, 1024), P("data", None))
    mesh = x.sharding.mesh

    def body(x):
        return jnorm.layer_norm(x), jnorm.layer_norm(x, implementation="pallas")

    f = jax.shard_map(body, mesh=mesh, in_specs=P("data", None),
                      out_specs=(P("data", None), P("data", None)), check_vma=check_vma)
    auto, pallas = jax.jit(f)(x)
    ref = jax.jit(_layer("xla"))(x)
    np.testing.assert_allclose(auto, ref, **TOL)
    np.testing.assert_allclose(pallas, ref, **TOL)
    assert _custom_calls(f, x, platform="cuda")[1].count(f"custom_call @{TRITON}(") == 2


# --- empty batches ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(0, 1024), (3, 0, 256)])
@pytest.mark.parametrize("implementation", [None, "pallas"])
def test_empty_batches_take_xla(gpu_host, shape, implementation):
    x = jnp.zeros(shape, jnp.float32)
    f = _layer(implementation)
    assert "pallas_call" not in str(jax.make_jaxpr(f)(x))
    assert jax.jit(f)(x).shape == shape
    assert jax.grad(lambda x: jnp.sum(f(x)))(x).shape == shape


# --- a jax whose Pallas cannot be imported ---------------------------------------------------

def _run(code):
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_no_pallas_import_where_no_kernel_runs():
    """On a host without GPU, layers (automatic or XLA) never import jax's Pallas."""
    out = _run("""
        import sys
        import jax.numpy as jnp
        import jnorm
        x = jnp.ones((8, 1024))
        jnorm.layer_norm(x), jnorm.rms_norm(x), jnorm.layer_norm(x, implementation="xla")
        print(sorted(m for m in sys.modules if "pallas" in m and not m.startswith("jnorm")))
    """)
    assert out.strip() == "[]"


def test_broken_pallas_falls_back_to_xla_with_one_warning():
    """jax without (a working) Pallas Triton module: the automatic choice warns once and uses
    XLA; ``implementation="pallas"`` says why and what to pass instead."""
    out = _run("""
        import sys, warnings
        sys.modules["jax.experimental.pallas.triton"] = None  # makes its import fail
        import jax.numpy as jnp
        import jnorm
        from jnorm._pallas import _dispatch
        _dispatch.gpu_present = lambda: True
        x = jnp.arange(8 * 1024.0).reshape(8, 1024)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            ys = [jnorm.layer_norm(x), jnorm.layer_norm(x), jnorm.layer_norm(2 * x)]
        print(len(seen), seen[0].category.__name__, "|", seen[0].message)
        ref = jnorm.layer_norm(x, implementation="xla")
        print(bool((ys[0] == ref).all()))
        try:
            jnorm.layer_norm(x, implementation="pallas")
        except ValueError as e:
            print(e)
    """).splitlines()
    assert re.match(r"1 RuntimeWarning \| jnorm: the fused Pallas kernel cannot be imported "
                    r"with jax .* layer_norm uses XLA", out[0]), out
    assert out[1] == "True"
    assert re.match(r"implementation='pallas': the fused Pallas kernel cannot be imported with "
                    r"jax .*(Module|Import).*Error.*Pass implementation=None \(automatic\) or "
                    r"'xla'", out[2])


def test_a_kernel_that_fails_to_trace_falls_back_with_one_warning(gpu_host, monkeypatch):
    """API drift that shows only when the kernel is traced (a changed pallas_call keyword):
    the automatic choice warns once and computes with XLA."""
    from jnorm._pallas import _row_norm

    def drifted(*args, **kwargs):
        raise TypeError("pallas_call() got an unexpected keyword argument 'compiler_params'")

    monkeypatch.setattr(_row_norm, "row_norm_forward", drifted)
    monkeypatch.setattr(_dispatch, "_warned", set())
    x = _x((3, 2048))  # a shape no other test traces (jax caches traces)
    with pytest.warns(RuntimeWarning, match=r"failed to trace with jax .*TypeError.*uses XLA"):
        y = jax.jit(jnorm.layer_norm)(x)
    assert "pallas_call" not in str(jax.make_jaxpr(jnorm.layer_norm)(x))
    np.testing.assert_allclose(y, jax.jit(_layer("xla"))(x), **TOL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jax.jit(jnorm.layer_norm)(x[:1])  # traced again: no second warning
