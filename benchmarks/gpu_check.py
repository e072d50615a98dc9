"""``python -m benchmarks.gpu_check``: the one command for the first run on a GPU.

Whoever has a GPU runs it first and pastes its output into ``docs/benchmarks.md``. In about
5-10 minutes on one GPU it prints the versions (jax, jaxlib, Triton, the CUDA plugin) and
the card's name, then runs each check and says ``PASS``/``FAIL`` (the exit status is the
number of failed checks, capped at 100):

1. ``pytest``: ``tests/core/test_pallas.py`` and ``tests/distributed/test_pallas_dispatch.py``
   (compiled kernels on a GPU).
2. ``values``: automatic ``layer_norm`` / ``rms_norm`` and ``implementation="pallas"``
   against ``implementation="xla"`` and float64, for ``D`` in 256, 1024, 4096, 16384,
   float32 / bfloat16 / float16, at 1 row, an odd row count and many rows, on rows offset by
   1e4 and 1e6, rows with an outlier, heavy-tailed rows, constant rows (exactly the bias),
   NaN and inf rows, and a ``(0, 1024)`` input. Every output is within the statistics' error
   bound of float64 (see :func:`bound`), NaN exactly where XLA has NaN.
3. ``program``: the compiled automatic layer norm holds the Triton kernel on the GPU, and a
   computation placed on the host CPU of the same process does not (and runs).
4. ``sharded``: the (64, 1024) input split by rows over explicit mesh axes, automatic and
   ``"pallas"``, under ``jit`` — over the GPUs if there are several, and always over 4 host
   CPU devices of a GPU process (a subprocess), with the CUDA lowering of the per-shard
   program checked for the kernel.
5. ``bench``: ``python -m benchmarks.bench`` (the layer table) and ``python -m
   benchmarks.models`` (whole models; reported as missing if that module is not there).

``--cpu`` runs everything on a host without GPU, the kernel in Pallas' interpret mode;
``--quick`` uses small sizes (a test runs ``--cpu --quick``). Only jnorm's public API is used.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import importlib.util
import math
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jnorm

TRITON = "__gpu$xla.gpu.triton"  # the custom call of a Pallas Triton kernel
KINDS = ("normal", "offset 1e4", "offset 1e6", "outlier", "heavy", "constant", "nan", "inf")
LAYERS = ("layer_norm", "rms_norm")
EPSILON = 1e-6


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def header() -> str:
    """Versions and devices, one line each."""
    plugins = sorted({d.metadata["Name"] for d in importlib.metadata.distributions()
                      if re.match(r"jax[-_]cuda\d+", d.metadata["Name"] or "")})
    devs = jax.devices()
    lines = [
        f"python {sys.version.split()[0]}, jax {jax.__version__}, jaxlib "
        f"{_version('jaxlib')}, jnorm {jnorm.__version__}, flax {_version('flax')}",
        f"triton (python package) {_version('triton')}; Pallas lowers through jaxlib's own "
        f"Triton; CUDA plugins: "
        + (", ".join(f"{p} {_version(p)}" for p in plugins) or "none"),
        f"backend {jax.default_backend()}: {len(devs)} x {devs[0].device_kind} "
        f"({devs[0].platform})",
    ]
    return "\n".join(lines)


# --- values ---------------------------------------------------------------------------------

def rows_of(kind: str, n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` rows of ``d`` float64 values of one adversarial kind."""
    z = rng.standard_normal((n, d))
    if kind == "offset 1e4":
        return 1e4 + z
    if kind == "offset 1e6":
        return 1e6 + z
    if kind == "outlier":  # one element 1e3 standard deviations out, anywhere (first too)
        z[np.arange(n), rng.integers(0, d, n) if n > 1 else 0] = 1e3
        return 3.0 + z
    if kind == "heavy":  # Student t with 1.5 degrees of freedom: infinite variance
        return rng.standard_t(1.5, (n, d))
    if kind == "constant":
        return np.broadcast_to(rng.uniform(-1e4, 1e4, (n, 1)), (n, d)).copy()
    if kind == "nan":
        z[:, rng.integers(0, d)] = np.nan
        return z
    if kind == "inf":
        z[:, 0] = np.inf
        z[:, -1] = -np.inf if n % 2 else np.inf
        return z
    return z


def bound(x64: np.ndarray, d: int, out_dtype: Any, center: bool) -> np.ndarray:
    """Per-row bound on ``|y - y64| / (1 + |y64|)`` (``y64``: float64 on the same input).

    From the statistics' bound (:mod:`jnorm._stats`' docstring, public in
    ``docs/concepts``): with ``gamma = c u`` (``u = 2^-24``) the relative error of a sum of
    ``d`` float32 terms, the variance's relative error is at most ``2 gamma (1 + gamma^2
    kappa^2)`` and the mean's error (of the corrected pair) ``gamma (1 + gamma kappa)`` standard
    deviations, ``kappa = E|x| / std``; the normalized value inherits both, plus the few
    roundings of the affine step, plus two ulps of the output's dtype. ``c = log2 d + d/256``:
    the worst case of a reduction that sums up to ``d/256`` terms in order in each of at most
    256 lanes and combines the lanes as a tree (how XLA's and Triton's row reductions go).
    """
    u = 2.0**-24
    gamma = (math.log2(d) + d / 256) * u
    with np.errstate(all="ignore"):
        spread = np.std(x64, axis=1) if center else np.sqrt(np.mean(x64 * x64, axis=1))
        kappa = np.mean(np.abs(x64), axis=1) / np.where(spread > 0, spread, 1.0)
    kappa = np.where(np.isfinite(kappa), kappa, 0.0)
    stats = 2 * gamma * (1 + (gamma * kappa) ** 2) + gamma * (1 + gamma * kappa)
    return 2 * stats + 8 * u + 2 * float(jnp.finfo(out_dtype).eps)


def _reference(x64: np.ndarray, scale: np.ndarray, bias: np.ndarray, center: bool) -> np.ndarray:
    with np.errstate(all="ignore"):
        mean = x64.mean(1, keepdims=True) if center else 0.0
        var = ((x64 - mean) ** 2).mean(1, keepdims=True)
        return (x64 - mean) / np.sqrt(var + EPSILON) * scale + (bias if center else 0.0)


@functools.cache
def _jitted(layer: str, impl: Any) -> Callable[..., jax.Array]:
    """One jitted function per layer and implementation: same shapes compile once."""
    fn = getattr(jnorm, layer)
    return jax.jit(lambda x, *p: fn(x, *p, epsilon=EPSILON, implementation=impl))


def check_values(d: int, n: int, dtype: Any, kinds: Sequence[str], impls: Sequence[Any],
                 rng: np.random.Generator) -> list[str]:
    """One batch of ``n`` rows cycling through `kinds`; failures as text (empty: all pass)."""
    kind_of = [kinds[i % len(kinds)] for i in range(n)]
    x64 = np.concatenate([rows_of(k, 1, d, rng) for k in kind_of]) if n else np.zeros((0, d))
    with np.errstate(over="ignore"):  # 1e6 is inf in float16: those rows check NaN only
        x = jnp.asarray(x64, dtype)
    x64 = np.asarray(x, np.float64)  # the rounded input is the problem both solve
    scale = rng.uniform(0.5, 2.0, d).astype(np.float32)
    bias = rng.standard_normal(d).astype(np.float32)
    bias_out = np.asarray(jnp.asarray(bias).astype(dtype).astype(jnp.float32), np.float64)
    fails = []
    for layer in LAYERS:
        center = layer == "layer_norm"
        fn = getattr(jnorm, layer)
        args = (jnp.asarray(scale), jnp.asarray(bias)) if center else (jnp.asarray(scale),)
        y64 = _reference(x64, scale.astype(np.float64), bias.astype(np.float64), center)
        tol = bound(x64, d, dtype, center)[:, None]
        ys = {}
        for impl in ("xla", *impls):
            y = _jitted(layer, impl)(x, *args)
            ys[impl] = y = np.asarray(y.astype(jnp.float32), np.float64)
            name = f"{layer} {impl or 'auto'} D={d} rows={n} {jnp.dtype(dtype).name}"
            if y.shape != x.shape or jnp.dtype(dtype) != fn(x[:0], *args).dtype:
                fails.append(f"{name}: shape/dtype {y.shape}")
                continue
            for i, kind in enumerate(kind_of):
                row, ref = y[i], y64[i]
                if not np.array_equal(np.isnan(row), np.isnan(ys["xla"][i])):
                    fails.append(f"{name} {kind} row {i}: NaN where XLA has none or vice versa")
                elif kind == "constant" and center and not np.array_equal(row, bias_out):
                    fails.append(f"{name} constant row {i}: not exactly the bias "
                                 f"(max diff {np.max(np.abs(row - bias_out)):.3g})")
                elif np.isfinite(x64[i]).all():  # (1e6 overflows float16 to inf)
                    err = np.max(np.abs(row - ref) / (1 + np.abs(ref)))
                    if not err <= tol[i, 0]:
                        fails.append(f"{name} {kind} row {i}: scaled error {err:.3g} > bound "
                                     f"{tol[i, 0]:.3g}")
    return fails


def values(sizes: Sequence[int], row_counts: Sequence[int], dtypes: Sequence[Any],
           impls: Sequence[Any], single: Sequence[str] = KINDS) -> list[str]:
    """Every size, dtype and row count; one-row batches of each kind in `single`."""
    rng = np.random.default_rng(0)
    fails = []
    for d in sizes:
        for dtype in dtypes:
            for n in row_counts:
                if n == 1:  # one row of each kind, each its own call
                    for kind in single:
                        fails += check_values(d, 1, dtype, (kind,), impls, rng)
                else:
                    fails += check_values(d, n, dtype, KINDS, impls, rng)
    for impl in ("xla", *impls):  # an empty batch
        y = jax.jit(lambda x, impl=impl: jnorm.layer_norm(x, implementation=impl))(
            jnp.zeros((0, 1024), jnp.float32))
        if y.shape != (0, 1024):
            fails.append(f"(0, 1024) with implementation={impl!r}: shape {y.shape}")
    return fails


# --- programs -------------------------------------------------------------------------------

def custom_calls(text: str) -> set[str]:
    return set(re.findall(r"custom_call @([^\(\s]+)\(", text))


def cuda_lowering(f: Callable[..., Any], *args: Any) -> str:
    """`f`'s program lowered for CUDA (works on any host, no GPU needed)."""
    from jax import export

    exp = export.export(jax.jit(f), platforms=["cuda"],
                        disabled_checks=[export.DisabledSafetyCheck.custom_call(TRITON)])(*args)
    return exp.mlir_module()


def programs(on_gpu: bool) -> list[str]:
    fails = []
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4096, 1024)), jnp.float32)
    auto = jax.jit(jnorm.layer_norm)
    if on_gpu:
        if TRITON not in custom_calls(auto.lower(x).as_text()):
            fails.append("the automatic layer_norm program on the GPU has no Triton kernel")
        compiled = auto.lower(x).compile().as_text() or ""
        print(f"  compiled automatic program mentions triton: {'triton' in compiled.lower()}")
    else:  # what a CPU host can see: the CUDA lowering of the requested kernel
        text = cuda_lowering(lambda x: jnorm.layer_norm(x, implementation="pallas"), x)
        if TRITON not in custom_calls(text):
            fails.append("the CUDA lowering of implementation='pallas' has no Triton kernel")
    cpu = jax.devices("cpu")[0]
    with jax.default_device(cpu):  # a computation placed on the host CPU: XLA, and it runs
        xc = jax.device_put(x[:64], cpu)
        if TRITON in custom_calls(auto.lower(xc).as_text()):
            fails.append("a CPU-placed automatic layer_norm lowers to the Triton kernel")
        y = auto(xc)
        ref = jnorm.layer_norm(xc, implementation="xla")
        if not (y.devices() == {cpu} and np.allclose(y, ref, atol=1e-5, rtol=1e-5)):
            fails.append("a CPU-placed automatic layer_norm gave other values or device")
    return fails


SHARDED = """
import os, sys
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + \\
    " --xla_force_host_platform_device_count=4"
sys.path.insert(0, {root!r})
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
from benchmarks.gpu_check import cuda_lowering, TRITON
import jnorm
platform = sys.argv[1]
devices = jax.devices(platform)[:4]
if len(devices) < 2:
    print("SKIP only", len(devices), platform, "device"); raise SystemExit(0)
mesh = Mesh(np.array(devices), ("data",), axis_types=(AxisType.Explicit,))
x = jnp.asarray(3 + np.random.default_rng(0).normal(size=(64, 1024)), jnp.float32)
x = jax.device_put(x, NamedSharding(mesh, P("data", None)))
ref = jax.jit(lambda x: jnorm.layer_norm(x, implementation="xla"))(x)
fails = 0
for impl in (None, "pallas"):
    y = jax.jit(lambda x: jnorm.layer_norm(x, implementation=impl))(x)
    ok = y.sharding.spec == P("data", None) and np.allclose(y, ref, atol=2e-5, rtol=1e-5)
    print(("ok  " if ok else "FAIL"), len(devices), platform, "devices, implementation",
          repr(impl), y.sharding.spec)
    fails += not ok
text = cuda_lowering(lambda x: jnorm.layer_norm(x, implementation="pallas"), x)
ok = TRITON in text and "manual_computation" in text
print(("ok  " if ok else "FAIL"), "CUDA lowering runs the kernel per shard (shard_map)")
raise SystemExit(fails + (not ok))
"""


def sharded() -> list[str]:
    """The issue's case in a fresh process (4 forced host devices): on the host CPU devices
    of this (GPU) process, and on the GPUs where there are at least two."""
    fails = []
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for platform in ("cpu", "gpu") if jax.default_backend() == "gpu" else ("cpu",):
        out = subprocess.run([sys.executable, "-c", SHARDED.format(root=root), platform],
                             capture_output=True, text=True, timeout=300)
        print(textwrap.indent(out.stdout.strip(), "  "))
        if out.returncode:
            fails.append(f"sharded on {platform}: exit {out.returncode}\n{out.stderr[-2000:]}")
    return fails


# --- driver ---------------------------------------------------------------------------------

def _subprocess(cmd: Sequence[str], timeout: int) -> list[str]:
    print("  $", " ".join(cmd), flush=True)
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [f"{' '.join(cmd)}: still running after {timeout} s"]
    print(textwrap.indent(out.stdout.strip()[-6000:], "  "))
    return [] if out.returncode == 0 else [f"{' '.join(cmd)}: exit {out.returncode}\n"
                                           f"{out.stderr[-3000:]}"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__
                                     .split("\n")[0])
    parser.add_argument("--cpu", action="store_true",
                        help="run without a GPU (the kernel in Pallas' interpret mode)")
    parser.add_argument("--quick", action="store_true", help="small sizes (for tests)")
    parser.add_argument("--skip", default="", help="comma-separated checks to skip: pytest, "
                        "values, program, sharded, bench")
    args = parser.parse_args(argv)
    on_gpu = jax.default_backend() == "gpu"
    if not on_gpu and not args.cpu:
        print(f"no GPU here (backend: {jax.default_backend()}); pass --cpu to run the checks "
              "in interpret mode", file=sys.stderr)
        return 2
    print(header(), flush=True)
    quick = args.quick
    steps: dict[str, Callable[[], list[str]]] = {
        "pytest": lambda: _subprocess(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
             "tests/core/test_pallas.py"]
            + (["-k", "nonfinite or constant"] if quick
               else ["tests/distributed/test_pallas_dispatch.py"]),
            timeout=600),
        "values": lambda: values(
            sizes=(256,) if quick else (256, 1024, 4096, 16384),
            row_counts=(1, 9) if quick else (1, 37, 4096),
            dtypes=(jnp.float32, jnp.bfloat16, jnp.float16), impls=(None, "pallas"),
            single=("outlier",) if quick else KINDS),
        "program": lambda: programs(on_gpu),
        "sharded": sharded,
        "bench": lambda: _subprocess(
            [sys.executable, "-m", "benchmarks.bench"]
            + (["--quick", "--layers", "layer_norm,rms_norm"] if quick else []), timeout=200)
        + (_subprocess([sys.executable, "-m", "benchmarks.models"]
                       + (["--quick"] if quick else []), timeout=200)
           if importlib.util.find_spec("benchmarks.models") is not None
           else print("  benchmarks/models.py is MISSING: no whole-model figures") or []),
    }
    failed = ran = 0
    for name, step in steps.items():
        if name in args.skip.split(","):
            print(f"[SKIP] {name}")
            continue
        ran += 1
        print(f"[....] {name}", flush=True)
        start = time.perf_counter()
        fails = step()
        took = time.perf_counter() - start
        for f in fails[:40]:
            print("  " + f.replace("\n", "\n  "))
        if len(fails) > 40:
            print(f"  ... and {len(fails) - 40} more")
        print(f"[{'FAIL' if fails else 'PASS'}] {name} ({took:.0f} s, "
              f"{len(fails)} failure(s))", flush=True)
        failed += bool(fails)
    print(f"gpu_check on {jax.devices()[0].device_kind}: {ran - failed} passed, {failed} failed"
          + (f", {len(steps) - ran} skipped" if ran < len(steps) else ""))
    return min(failed, 100)


if __name__ == "__main__":
    raise SystemExit(main())
