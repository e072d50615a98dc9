"""``python -m benchmarks.bench``: jnorm against flax.linen, side by side, on any JAX device.

For every layer (layer, RMS, batch, group and instance norm) at a given shape, three
implementations are compiled with :func:`jax.jit` and timed *interleaved round-robin in one
process* (so that noise from other processes hits all of them alike):

* ``jnorm``: :mod:`jnorm.linen`'s module, i.e. jnorm's accurate default;
* ``flax``: :mod:`flax.linen`'s module with its default ``use_fast_variance=True``
  (``E[x^2] - E[x]^2``: fast, and wrong on data far from zero);
* ``flax_2pass``: :mod:`flax.linen` with ``use_fast_variance=False`` (accurate, two passes);

together with a streaming ``copy`` ``x * 2 + 1`` of the same array, the memory-bandwidth yard
stick. Two modes: ``fwd`` (the layer's output; batch norm also returns its updated running
statistics) and ``fwd+bwd`` (gradients with respect to the input *and* the parameters of
``sum(y * dy)`` for a fixed random cotangent ``dy``, as a training step needs them).

Reported per layer, mode and implementation:

* ``median_ms``: median wall time of one call over the rounds (each round times ``inner``
  calls back to back and divides: on a CPU, as many as make the fastest program's sample
  about 2 ms, so that one call's fixed costs and hiccups do not decide sub-millisecond
  calls);
* ``vs_flax``: that median divided by flax's default (< 1 is faster than flax);
* ``x_copy``: that median in multiples of the copy's (the floor is about 1 forward, 1.5 for
  forward+backward of row norms and 2.5 for batch norm, which reads its input twice);
* ``temp_mib``: peak temporary memory of the compiled executable
  (``compiled.memory_analysis().temp_size_in_bytes``), arguments and outputs not counted;
* ``reads`` / ``writes``: how many times the compiled program reads or writes an array of the
  input's size, counted from the optimized HLO of its entry computation (every top-level
  instruction that moves data; ``bitcast`` and friends are free). A pass is one such read or
  write; the copy has 1 read and 1 write.

Only the public API is used, as a user would (``tests/artifacts/test_bench.py`` checks this); the
fused Pallas kernels' microbenchmark behind ``--pallas`` lives in :mod:`benchmarks.kernels`,
which says why it is the exception. On a CPU, run it with tcmalloc: glibc's malloc
returns large blocks to the OS and page-faults every big temporary again on each call::

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python -m benchmarks.bench

Options: ``--quick`` (tiny shapes, a few rounds: seconds, for tests), ``--json`` (one JSON
document on stdout instead of the table), ``--shapes layer_norm=4096x1024,...`` (override the
shape of some layers), ``--layers a,b`` (a subset), ``--rounds``, ``--warmup``, ``--modes``,
``--pallas RxD,...`` (the fused Pallas kernels' bandwidth at these shapes) and ``--tune``
(with ``--pallas``: every launch configuration of the kernels).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.harness import (
    IMPLS,
    Entry,
    allocator,
    compile_program,
    time_round_robin,
)

__all__ = ["DEFAULT_SHAPES", "LAYERS", "MODEL_SHAPES", "QUICK_SHAPES", "main", "run"]


@dataclasses.dataclass(frozen=True)
class _Layer:
    """One benchmarked layer: its class (the same name in jnorm.linen and flax.linen), the
    keywords both are built with, its default shape and its ``--quick`` shape."""

    cls: str
    kwargs: Mapping[str, Any]
    shape: tuple[int, ...]
    quick_shape: tuple[int, ...]
    stateful: bool = False  # also returns its updated running statistics (batch_stats)


#: The layers. Default shapes: the speed issue's, float32, NHWC for the image layers. Quick
#: shapes: tiny, for ``--quick`` (group norm keeps 32 groups, so it needs 64 channels).
_TABLE: dict[str, _Layer] = {
    "layer_norm": _Layer("LayerNorm", {}, (8192, 1024), (64, 128)),
    "rms_norm": _Layer("RMSNorm", {}, (8192, 1024), (64, 128)),
    "batch_norm": _Layer("BatchNorm", {"use_running_average": False}, (256, 32, 32, 64),
                         (8, 4, 4, 16), stateful=True),
    "group_norm": _Layer("GroupNorm", {"num_groups": 32}, (32, 32, 32, 256), (2, 4, 4, 64)),
    "instance_norm": _Layer("InstanceNorm", {}, (32, 64, 64, 64), (2, 8, 8, 16)),
}
LAYERS: tuple[str, ...] = tuple(_TABLE)
#: The shapes the layers have inside benchmarks/models.py (``--model-shapes``): the
#: transformer's rows (8 x 256 tokens, d = 512), the ResNet-18 stages at 32 x 64 x 64 input
#: (stem 32 x 32, then 16 x 16 to 2 x 2 at 64-512 channels) and the UNet stage's.
MODEL_SHAPES: dict[str, tuple[tuple[int, ...], ...]] = {
    "layer_norm": ((2048, 512),),
    "rms_norm": ((2048, 512),),
    "batch_norm": ((32, 32, 32, 64), (32, 16, 16, 64), (32, 8, 8, 128), (32, 4, 4, 256),
                   (32, 2, 2, 512)),
    "group_norm": ((32, 32, 32, 64), (32, 16, 16, 64), (32, 8, 8, 128), (8, 32, 32, 128),
                   (8, 16, 16, 256)),
}
DEFAULT_SHAPES: dict[str, tuple[int, ...]] = {k: v.shape for k, v in _TABLE.items()}
QUICK_SHAPES: dict[str, tuple[int, ...]] = {k: v.quick_shape for k, v in _TABLE.items()}
MODES: tuple[str, ...] = ("fwd", "fwd+bwd")


def _module(layer: str, impl: str) -> Any:
    """The linen module of `layer` for implementation `impl`."""
    import flax.linen as fnn

    import jnorm.linen as jnn

    spec = _TABLE[layer]
    if impl == "jnorm":
        return getattr(jnn, spec.cls)(**spec.kwargs)
    fast = impl == "flax"
    return getattr(fnn, spec.cls)(use_fast_variance=fast, **spec.kwargs)


def _programs(
    layer: str, impl: str, x: jax.Array, dy: jax.Array
) -> dict[str, tuple[Callable[..., Any], tuple[Any, ...]]]:
    """The forward and forward+backward functions of one implementation, with their args."""
    model = _module(layer, impl)
    variables = model.init(jax.random.key(0), x)
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}
    stateful = _TABLE[layer].stateful

    def forward(params: Any, x: jax.Array) -> Any:
        if stateful:
            return model.apply({"params": params, **rest}, x, mutable=["batch_stats"])
        return model.apply({"params": params, **rest}, x)

    def loss(params: Any, x: jax.Array, dy: jax.Array) -> tuple[jax.Array, Any]:
        out = forward(params, x)
        y, aux = out if stateful else (out, None)
        return jnp.sum(y * dy), aux

    grad = jax.grad(loss, argnums=(0, 1), has_aux=True)
    return {"fwd": (forward, (params, x)), "fwd+bwd": (grad, (params, x, dy))}


# ----------------------------------------------------------------------------- HLO passes


# ----------------------------------------------------------------------------- timing


def _bench_layer(
    layer: str, shape: tuple[int, ...], modes: Sequence[str], rounds: int, warmup: int,
    inner: int | None = None, seed: int = 0,
) -> list[dict[str, Any]]:
    kx, kd = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, shape, jnp.float32)
    dy = jax.random.normal(kd, shape, jnp.float32)
    size = int(np.prod(shape))
    entries: list[Entry] = []
    for impl in IMPLS:
        progs = _programs(layer, impl, x, dy)
        for mode in modes:
            fn, args = progs[mode]
            compiled, temp, passes = compile_program(fn, args, size)
            entries.append(Entry(impl, mode, compiled, args, temp, passes))
    compiled, temp, passes = compile_program(lambda x: x * 2 + 1, (x,), size)
    entries.append(Entry("copy", "copy", compiled, (x,), temp, passes))

    if rounds:
        inner = time_round_robin(entries, rounds, warmup, inner)
    else:  # compile only: the programs' passes and memory, no timing
        for e in entries:
            e.times.append(float("nan"))
    med = {(e.impl, e.mode): statistics.median(e.times) for e in entries}
    copy_t = med[("copy", "copy")]
    rows = []
    order = {(impl, mode): i for i, (mode, impl) in enumerate(
        [(m, i) for m in (*modes, "copy") for i in (*IMPLS, "copy")])}
    for e in sorted(entries, key=lambda e: order[(e.impl, e.mode)]):
        m = med[(e.impl, e.mode)]
        flax_t = med.get(("flax", e.mode))
        rows.append({
            "layer": layer,
            "shape": list(shape),
            "mode": e.mode,
            "impl": e.impl,
            "median_ms": m * 1e3,
            "min_ms": min(e.times) * 1e3,
            "vs_flax": m / flax_t if flax_t else None,
            "x_copy": m / copy_t,
            "temp_mib": None if e.temp_bytes is None else e.temp_bytes / 2**20,
            "reads": None if e.passes is None else e.passes["reads"],
            "writes": None if e.passes is None else e.passes["writes"],
            "rounds": len(e.times) if rounds else 0,
            "inner": inner if rounds else None,
        })
    return rows


def run(
    shapes: dict[str, tuple[int, ...]] | None = None,
    *,
    layers: Sequence[str] | None = None,
    modes: Sequence[str] = MODES,
    rounds: int = 15,
    warmup: int = 2,
    quick: bool = False,
    inner: int | None = None,
    pallas_shapes: Sequence[tuple[int, int]] = (),
    tune: bool = False,
    model_shapes: bool = False,
) -> dict[str, Any]:
    """Runs the benchmark and returns a JSON-serialisable report.

    Args:
      shapes: per-layer shape overrides (others keep :data:`DEFAULT_SHAPES`, or
        :data:`QUICK_SHAPES` if `quick`).
      layers: a subset of :data:`LAYERS` (default: all).
      modes: a subset of ``("fwd", "fwd+bwd")``.
      rounds: timed calls of each program, interleaved round-robin; 0 compiles only (passes
        and memory; the times are NaN).
      warmup: untimed calls of each program first.
      quick: tiny shapes (seconds); timings then mean little.
      inner: calls per timed sample. Default: 20 on accelerators, where one call takes
        microseconds and dispatch would dominate; on a CPU, per shape, enough calls that the
        fastest program's sample lasts about 2 ms (:func:`benchmarks.harness.autorange`; one
        call when every program takes longer). Each row records the count it was timed with.
      pallas_shapes: ``(R, D)`` shapes at which to measure the fused Pallas kernels'
        achieved bandwidth (see :func:`benchmarks.kernels.kernel_bandwidth`); empty to skip.
      tune: time the launch configurations in :data:`benchmarks.kernels.TUNE_FORWARD` and
        :data:`~benchmarks.kernels.TUNE_BACKWARD` at `pallas_shapes` instead of the defaults.
      model_shapes: each layer at its :data:`MODEL_SHAPES` instead (layers without any are
        skipped; `shapes` and `quick` then do not apply).

    Returns:
      ``{"device", "backend", "jax", "flax", "jnorm", "allocator", "rounds", "inner",
      "results", "kernels"}`` with one result row per layer, mode and implementation (see the
      module docstring) and one per kernel measurement.
    """
    if inner is None and jax.default_backend() != "cpu":
        inner = 20
    import flax

    import jnorm

    chosen = dict(QUICK_SHAPES if quick else DEFAULT_SHAPES)
    chosen.update(shapes or {})
    layers = list(layers or LAYERS)
    for name in layers:
        if name not in LAYERS:
            raise ValueError(f"unknown layer {name!r}; choose from {', '.join(LAYERS)}.")
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}.")
    results = []
    for name in layers:
        for shape in (MODEL_SHAPES.get(name, ()) if model_shapes else (tuple(chosen[name]),)):
            results += _bench_layer(name, shape, modes, rounds, warmup, inner)
    dev = jax.devices()[0]
    kernels = []
    if pallas_shapes:
        # the kernel microbenchmark: the one benchmark on private kernel API (its module says why)
        from benchmarks import kernels as kern

        kernels = kern.kernel_bandwidth(
            pallas_shapes, rounds=rounds, warmup=warmup, inner=20 if inner is None else inner,
            fwd_configs=kern.TUNE_FORWARD if tune else (),
            bwd_configs=kern.TUNE_BACKWARD if tune else (),
        )
    return {
        "device": f"{dev.platform}: {getattr(dev, 'device_kind', str(dev))}",
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "jnorm": jnorm.__version__,
        "allocator": allocator(),
        "rounds": rounds,
        "inner": inner,
        "results": results,
        "kernels": kernels,
    }


def format_table(report: dict[str, Any]) -> str:
    """The report as a plain-text table, one block per layer."""
    lines = [
        f"device: {report['device']}   jax {report['jax']}   flax {report['flax']}   "
        f"jnorm {report['jnorm']}   allocator: {report['allocator']}   "
        f"rounds: {report['rounds']} (medians, interleaved)",
        "vs_flax: time / flax default (lower is better); x_copy: time / streaming copy x*2+1; "
        "temp: peak temporary memory; passes: reads+writes of a full-size array in the HLO; "
        "calls: back-to-back calls per timed sample",
        "",
    ]
    header = (f"{'layer':<14}{'shape':<18}{'mode':<9}{'impl':<12}{'median ms':>10}"
              f"{'vs_flax':>9}{'x_copy':>8}{'temp MiB':>10}{'passes (r+w)':>14}{'calls':>7}")
    lines.append(header)
    lines.append("-" * len(header))
    last = None
    for row in report["results"]:
        if last is not None and (row["layer"], row["shape"]) != last:
            lines.append("")
        last = (row["layer"], row["shape"])
        vs = "" if row["vs_flax"] is None else f"{row['vs_flax']:.2f}"
        temp = "" if row["temp_mib"] is None else f"{row['temp_mib']:.1f}"
        passes = ("" if row["reads"] is None else
                  f"{row['reads'] + row['writes']} ({row['reads']}+{row['writes']})")
        shape = "x".join(str(s) for s in row["shape"])
        calls = "" if row.get("inner") is None else str(row["inner"])
        lines.append(
            f"{row['layer']:<14}{shape:<18}{row['mode']:<9}{row['impl']:<12}"
            f"{row['median_ms']:>10.3f}{vs:>9}{row['x_copy']:>8.2f}{temp:>10}{passes:>14}"
            f"{calls:>7}"
        )
    if report.get("kernels"):
        lines += ["", "Fused Pallas kernels vs XLA (float32; bandwidth = minimal bytes / median "
                  "time; pct_peak of the published HBM peak)",
                  f"{'kernel':<36}{'shape':<14}{'median us':>11}{'GB/s':>9}{'% peak':>8}"]
        for k in report["kernels"]:
            pct = "" if k["pct_peak"] is None else f"{k['pct_peak']:.0f}"
            shape = "x".join(str(s) for s in k["shape"])
            lines.append(f"{k['kernel']:<36}{shape:<14}{k['median_us']:>11.1f}"
                         f"{k['gbytes_per_s']:>9.0f}{pct:>8}")
    return "\n".join(lines)


def _parse_shapes(text: str) -> dict[str, tuple[int, ...]]:
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, dims = item.partition("=")
        if not sep or name not in LAYERS:
            raise argparse.ArgumentTypeError(
                f"bad --shapes item {item!r}: expected LAYER=D1xD2x..., LAYER one of "
                f"{', '.join(LAYERS)}"
            )
        try:
            out[name] = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad dimensions in --shapes item {item!r}") from None
    return out


def _pallas_shapes(text: str | None) -> list[tuple[int, int]]:
    if text is None:
        # 512 MiB: at the layers' 32 MiB an H200 spends most of a kernel's time on dispatch.
        return [(131072, 1024)] if jax.default_backend() == "gpu" else []
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        r, _, d = item.lower().partition("x")
        out.append((int(r), int(d)))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point of ``python -m benchmarks.bench``."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench",
        description="jnorm vs flax.linen normalization layers: medians of interleaved runs.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few rounds")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--shapes", type=_parse_shapes, default={},
                        help="e.g. layer_norm=4096x1024,group_norm=8x32x32x256")
    parser.add_argument("--layers", default=",".join(LAYERS), help="comma-separated subset")
    parser.add_argument("--modes", default=",".join(MODES), help="fwd, fwd+bwd or both")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 15)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first")
    parser.add_argument("--inner", type=int, default=None,
                        help="calls per timed sample (default: about 2 ms of the fastest program "
                             "per sample on a CPU, 20 otherwise)")
    parser.add_argument("--pallas", default=None,
                        help="measure the Pallas kernels' bandwidth at these RxD shapes, "
                             "e.g. 131072x1024,32768x4096 (default: on GPU only, 131072x1024)")
    parser.add_argument("--tune", action="store_true",
                        help="time the layer-norm kernels at every launch configuration "
                             "(elements per row block / warps [/ row blocks per program]) at "
                             "the --pallas shapes")
    parser.add_argument("--model-shapes", action="store_true",
                        help="each layer at the shapes benchmarks/models.py gives it")
    args = parser.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (3 if args.quick else 15)
    if args.inner is not None and args.inner < 1:
        parser.error(f"--inner must be at least 1, got {args.inner}.")
    report = run(
        args.shapes,
        layers=[s for s in args.layers.split(",") if s],
        modes=[s for s in args.modes.split(",") if s],
        rounds=rounds,
        warmup=1 if args.quick else args.warmup,
        quick=args.quick,
        inner=args.inner,
        pallas_shapes=_pallas_shapes(args.pallas),
        tune=args.tune,
        model_shapes=args.model_shapes,
    )
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
