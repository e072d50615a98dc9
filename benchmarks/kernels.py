"""The fused Pallas row-norm kernels' microbenchmark (``python -m benchmarks.bench --pallas``).

This is the one benchmark that calls jnorm's private kernel API (``jnorm._pallas``), and
deliberately so: it times what no public function exposes, and should not -- the standalone
backward kernel (the layers' derivative rule measured faster with XLA, see
``docs/benchmarks.md``), and the kernels' launch configurations (``--tune``: elements per row
block, warps, row blocks per program), which a kernel developer tunes and a user never sets.
Everything else in :mod:`benchmarks` uses the public API only
(``tests/artifacts/test_bench.py`` checks both). The public path of the forward kernel is
``jnorm.layer_norm`` on a GPU (:func:`jnorm._pallas.suits` says when).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks.harness import Entry, compile_program, time_round_robin

__all__ = ["PEAK_BANDWIDTH", "TUNE_BACKWARD", "TUNE_FORWARD", "kernel_bandwidth"]


#: Published peak memory bandwidth (bytes/s) by device kind, for the kernels' percentages.
PEAK_BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12}


def _peak_bandwidth() -> float | None:
    kind = getattr(jax.devices()[0], "device_kind", "")
    for name, peak in PEAK_BANDWIDTH.items():
        if name in kind:
            return peak
    return None


def _kernel_programs(
    scale: jax.Array, bias: jax.Array | None, center: bool, interpret: bool,
    fwd_config: tuple[int, int] | None = None, bwd_config: tuple[int, int, int] | None = None,
) -> dict[str, Callable[..., Any]]:
    """The Pallas kernels and jnorm's XLA path for one row norm, as functions to compile.

    The XLA rows are the public layer: ``implementation="xla"``, with its derivative rule.
    """
    import jnorm
    from jnorm import _pallas

    def xla_fwd(x: jax.Array) -> jax.Array:
        if center:
            return jnorm.layer_norm(x, scale, bias, epsilon=1e-6, implementation="xla")
        return jnorm.rms_norm(x, scale, epsilon=1e-6, implementation="xla")

    def xla_fwd_bwd(x: jax.Array, g: jax.Array) -> Any:
        return jax.vjp(xla_fwd, x)[1](g)

    def pl_fwd(x: jax.Array) -> Any:
        return _pallas.row_norm_forward(
            x, scale, bias, epsilon=1e-6, center=center, interpret=interpret, config=fwd_config)

    def pl_bwd(x: jax.Array, g: jax.Array, st: Any) -> Any:
        return _pallas.row_norm_backward(
            x, g, scale, st[1], st[2], st[3], epsilon=1e-6, center=center, interpret=interpret,
            config=bwd_config)

    def pl_fwd_bwd(x: jax.Array, g: jax.Array) -> Any:
        return pl_bwd(x, g, pl_fwd(x))[0]

    return {"pallas fwd": pl_fwd, "pallas bwd": pl_bwd, "pallas fwd+bwd": pl_fwd_bwd,
            "xla fwd": xla_fwd, "xla fwd+bwd": xla_fwd_bwd}


#: Launch configurations that ``--tune`` times: the forward's ``(elements per row block,
#: warps)`` and the backward's ``(elements per row block, warps, row blocks per program)``.
TUNE_FORWARD: tuple[tuple[int, int], ...] = tuple(
    (e, w) for e in (2048, 4096, 8192, 16384) for w in (4, 8, 16))
TUNE_BACKWARD: tuple[tuple[int, int, int], ...] = tuple(
    (e, w, b) for e in (4096, 8192, 16384) for w in (4, 8, 16) for b in (1, 4, 16, 64))


def _effective(config: Sequence[int], rows: int, d: int) -> tuple[int, ...]:
    """What a launch configuration means at ``(rows, d)``: rows per block, warps and (for the
    backward) row blocks per program, as the kernels round them."""
    from jnorm import _pallas

    br = _pallas.block_rows(rows, d, config[0])
    if len(config) == 2:
        return (br, config[1])
    return (br, config[1], _pallas.block_rows(rows // br, 1, config[2]))


def _distinct_configs(
    configs: Sequence[tuple[int, ...]], rows: int, d: int
) -> list[tuple[int, ...]]:
    """`configs` with those that mean the same launch at this shape dropped."""
    seen, out = set(), []
    for config in configs:
        key = _effective(config, rows, d)
        if key not in seen:
            seen.add(key)
            out.append(config)
    return out


def kernel_bandwidth(
    shapes: Sequence[tuple[int, int]], *, rounds: int = 15, warmup: int = 2, inner: int = 20,
    fwd_configs: Sequence[tuple[int, int]] = (),
    bwd_configs: Sequence[tuple[int, int, int]] = (),
) -> list[dict[str, Any]]:
    """Achieved bandwidth of the fused Pallas row-norm kernels, and of XLA on the same work.

    For each ``(R, D)`` float32 shape: the forward kernel (reads ``x``, writes ``y``: 2
    passes), the backward kernel (reads ``x`` and ``dy``, writes ``dx``: 3 passes), and
    jnorm's XLA path for the forward and for forward+backward (5 passes at best), plus the
    copy. Bandwidth counts those minimal bytes over the median time; ``pct_peak`` compares it
    with the device's published peak (:data:`PEAK_BANDWIDTH`) where known. This is a kernel
    microbenchmark and, unlike the layer comparison, calls jnorm's private kernel API.

    With launch configurations (`fwd_configs`, `bwd_configs`, e.g. :data:`TUNE_FORWARD`
    and :data:`TUNE_BACKWARD`), the layer-norm kernels are timed once per configuration
    that is distinct at the shape instead (rows ``"layer_norm pallas fwd 8192/4"`` with
    ``"config"`` and ``"effective"``, the rows per block, warps and blocks per program the
    kernel used), interleaved with the XLA path and the copy as before.
    """
    rows_out: list[dict[str, Any]] = []
    for shape in shapes:
        rows_out += _kernel_shape(shape, fwd_configs, bwd_configs, rounds, warmup, inner)
    return rows_out


def _kernel_shape(
    shape: tuple[int, int], fwd_configs: Sequence[tuple[int, int]],
    bwd_configs: Sequence[tuple[int, int, int]], rounds: int, warmup: int, inner: int,
) -> list[dict[str, Any]]:
    """:func:`kernel_bandwidth` at one shape."""
    interpret = jax.default_backend() != "gpu"
    peak = _peak_bandwidth()
    r, d = shape
    kx, kd = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, shape, jnp.float32)
    g = jax.random.normal(kd, shape, jnp.float32)
    scale = jnp.ones((d,), jnp.float32)
    bias = jnp.zeros((d,), jnp.float32)
    entries: list[Entry] = []
    passes: dict[str, int] = {}
    tags: list[tuple[int, ...] | None] = []

    def add(label: str, fn: Callable[..., Any], args: tuple[Any, ...], npass: int,
            config: tuple[int, ...] | None = None) -> None:
        compiled, temp, _ = compile_program(fn, args, r * d)
        entries.append(Entry(label, "kernel", compiled, args, temp, None))
        passes[label] = npass
        tags.append(config)

    tune = bool(fwd_configs or bwd_configs)
    runs = ((True, "layer_norm"),) if tune else ((True, "layer_norm"), (False, "rms_norm"))
    for center, name in runs:
        progs = _kernel_programs(scale, bias if center else None, center, interpret)
        stats = jax.jit(progs["pallas fwd"])(x)
        if tune:
            for fc in _distinct_configs(fwd_configs, r, d):
                cp = _kernel_programs(scale, bias, center, interpret, fwd_config=fc)
                add(f"{name} pallas fwd {'/'.join(map(str, fc))}", cp["pallas fwd"], (x,), 2, fc)
            for bc in _distinct_configs(bwd_configs, r, d):
                cp = _kernel_programs(scale, bias, center, interpret, bwd_config=bc)
                add(f"{name} pallas bwd {'/'.join(map(str, bc))}", cp["pallas bwd"],
                    (x, g, stats), 3, bc)
            labels: tuple[tuple[str, tuple[Any, ...], int], ...] = (
                ("xla fwd", (x,), 2), ("xla fwd+bwd", (x, g), 5))
        else:
            labels = (("pallas fwd", (x,), 2), ("pallas bwd", (x, g, stats), 3),
                      ("pallas fwd+bwd", (x, g), 5), ("xla fwd", (x,), 2),
                      ("xla fwd+bwd", (x, g), 5))
        for label, args, npass in labels:
            add(f"{name} {label}", progs[label], args, npass)
    add("copy", lambda x: x * 2 + 1, (x,), 2)
    time_round_robin(entries, rounds, warmup, inner)
    rows_out: list[dict[str, Any]] = []
    for e, config in zip(entries, tags, strict=True):
        t = statistics.median(e.times)
        bw = passes[e.impl] * r * d * 4 / t
        row: dict[str, Any] = {
            "kernel": e.impl, "shape": [r, d], "median_us": t * 1e6,
            "gbytes_per_s": bw / 1e9, "passes": passes[e.impl],
            "pct_peak": None if peak is None else 100 * bw / peak,
        }
        if config is not None:
            row["config"] = list(config)
            row["effective"] = list(_effective(config, r, d))
        rows_out.append(row)
    return rows_out
