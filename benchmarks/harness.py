"""The timing harness every benchmark shares: compile a program, count its passes over memory,
time programs interleaved round-robin in one process, and say which malloc the process runs.

:mod:`benchmarks.bench` (layers), :mod:`benchmarks.models` (whole train steps) and
:mod:`benchmarks.kernels` (the Pallas kernels) import it; it imports none of them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

__all__ = [
    "IMPLS", "Entry", "allocator", "autorange", "compile_program", "count_passes",
    "time_round_robin",
]

#: jnorm, flax's default (``use_fast_variance=True``) and flax's accurate mode, in table order.
IMPLS: tuple[str, ...] = ("jnorm", "flax", "flax_2pass")


_DEF = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")


_ARRAY = re.compile(r"\b(?:pred|[suf]\d+|bf16|c64|c128|f8\w*)\[([\d,]*)\]")


_SLICE_OPS = ("slice", "dynamic-slice", "gather")


_FREE_OPS = {
    "parameter", "constant", "bitcast", "tuple", "get-tuple-element", "after-all",
    "partition-id", "replica-id", "iota",
}


def _split_shape(rest: str) -> tuple[str, str]:
    """Splits ``'SHAPE op(args), attrs'`` into ``(SHAPE, 'op(args), attrs')``."""
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                return rest[: i + 1], rest[i + 1:].lstrip()
    shape, _, tail = rest.partition(" ")
    return shape, tail


def _sizes(shape: str) -> list[int]:
    return [int(np.prod([int(d) for d in m.split(",") if d] or [1])) for m in _ARRAY.findall(shape)]


def _operands(call: str) -> list[str]:
    """The operand names of ``'op(%a, %b), attrs'``."""
    start = call.find("(")
    if start < 0:
        return []
    depth = 0
    for i in range(start, len(call)):
        depth += call[i] == "("
        depth -= call[i] == ")"
        if depth == 0:
            return re.findall(r"%([\w.\-]+)", call[start:i])
    return []


def _computations(hlo: str) -> dict[str, list[str]]:
    comps: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in hlo.splitlines():
        head = re.match(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if head and not line.startswith(" "):
            name = "ENTRY" if head.group(1) else head.group(2)
            current = comps.setdefault(name, [])
        elif line.startswith("}"):
            current = None
        elif current is not None:
            current.append(line)
    return comps


def _instructions(lines: list[str]) -> list[tuple[str, str, str, str]]:
    """``(name, shape, opcode, 'op(args), attrs')`` of each instruction of a computation."""
    out = []
    for line in lines:
        m = _DEF.match(line)
        if m:
            var, rest = m.groups()
            shape, call = _split_shape(rest)
            out.append((var, shape, call.split("(", 1)[0].strip(), call))
    return out


def count_passes(hlo_text: str, size: int) -> dict[str, int]:
    """How often the compiled program reads and writes an array of `size` elements.

    Walks the entry computation of optimized HLO (``compiled.as_text()``), following ``call``
    and ``while`` bodies, and counts, for every instruction that moves data (fusions, copies,
    reductions, custom calls; not ``bitcast``, ``parameter``, ``tuple``...), its distinct
    operands of `size` elements (reads) and the results of `size` elements it produces
    (writes). Reshaped views (``(N, H, W, G, C/G)`` of ``(N, H, W, C)``) count alike.

    Returns:
      ``{"reads": r, "writes": w, "passes": r + w}``.
    """
    comps = _computations(hlo_text)
    reads = writes = 0

    def _fused_body(call: str) -> list[str]:
        m = re.search(r"calls=%?([\w.\-]+)", call)
        return comps.get(m.group(1), []) if m else []

    def _is_slice(call: str) -> bool:
        root = next((ln for ln in _fused_body(call) if ln.lstrip().startswith("ROOT")), "")
        return any(f" {op}(" in root for op in _SLICE_OPS)

    def _sliced_only(call: str) -> set[int]:
        """Operand positions of a fusion that its body only slices (a pivot, say)."""
        params: dict[str, int] = {}
        uses: dict[str, list[str]] = {}
        for var, _, op, inner in _instructions(_fused_body(call)):
            if op == "parameter":
                params[var] = int(inner[inner.index("(") + 1: inner.index(")")])
            for operand in _operands(inner):
                uses.setdefault(operand, []).append(op)
        return {i for v, i in params.items()
                if uses.get(v) and all(op in _SLICE_OPS for op in uses[v])}

    def walk(name: str, depth: int) -> None:
        nonlocal reads, writes
        if depth > 8 or name not in comps:
            return
        parsed = _instructions(comps[name])
        shapes = {var: _sizes(shape) for var, shape, _, _ in parsed}
        for var, _, op, call in parsed:
            if op in ("call", "while", "conditional", "async-start"):
                pattern = r"(?:to_apply|body|calls|branch_computations)=\{?%?([\w.\-]+)"
                for sub in re.findall(pattern, call):
                    walk(sub, depth + 1)
                continue
            if op in _FREE_OPS or op in _SLICE_OPS or (op == "fusion" and _is_slice(call)):
                continue  # slices read only what they write (a pivot column, say)
            seen = set()
            sliced = _sliced_only(call) if op == "fusion" else set()
            for i, operand in enumerate(_operands(call)):
                if operand in seen or i in sliced:
                    continue
                seen.add(operand)
                reads += sum(1 for s in shapes.get(operand, []) if s == size)
            writes += sum(1 for s in shapes[var] if s == size)

    walk("ENTRY", 0)
    return {"reads": reads, "writes": writes, "passes": reads + writes}


@dataclasses.dataclass
class Entry:
    """One compiled program to time, with its compile-time facts and its timings."""

    impl: str
    mode: str
    compiled: Any
    args: tuple[Any, ...]
    temp_bytes: int | None
    passes: dict[str, int] | None
    times: list[float] = dataclasses.field(default_factory=list)
    #: ``carry(out, args) -> args``: the next call's arguments from this call's result (a
    #: train step feeds its new state back; donated arguments cannot be passed twice).
    carry: Callable[[Any, tuple[Any, ...]], tuple[Any, ...]] | None = None


def compile_program(
    fn: Callable[..., Any], args: tuple[Any, ...], size: int,
    donate_argnums: tuple[int, ...] = (),
) -> tuple[Any, int | None, dict[str, int] | None]:
    """``(compiled, temporary bytes, passes over arrays of `size` elements)`` of ``jit(fn)``
    (``size=0``: passes not counted)."""
    compiled = jax.jit(fn, donate_argnums=donate_argnums).lower(*args).compile()
    try:
        mem = compiled.memory_analysis()
        temp = int(mem.temp_size_in_bytes) if mem is not None else None
    except Exception:  # memory analysis is optional on some backends
        temp = None
    try:
        passes = count_passes(compiled.as_text(), size) if size else None
    except Exception:
        passes = None
    return compiled, temp, passes


def _call(e: Entry) -> float:
    """One blocking call of `e` (its arguments carried on); its wall time in seconds."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(e.compiled(*e.args))
    dt = time.perf_counter() - t0
    if e.carry is not None:
        e.args = e.carry(out, e.args)
    return dt


def autorange(entries: list[Entry], target_s: float = 2e-3, cap: int = 200) -> int:
    """Calls per timed sample so that a sample of the fastest entry lasts about `target_s`.

    A program of tens of microseconds to a millisecond (a layer at a model's shape on a CPU)
    timed one call at a time carries each call's fixed costs (dispatch, the wait for the
    result) and whatever slowed that one call; back-to-back calls amortize them. The fastest
    entry sets one count for all, so every program is timed alike. At most `cap`; at least 1
    (whole train steps: one call each).
    """
    fastest = min(min(_call(e), _call(e)) for e in entries)
    return max(1, min(cap, math.ceil(target_s / max(fastest, 1e-9))))


def time_round_robin(entries: list[Entry], rounds: int, warmup: int, inner: int | None
                     ) -> int:
    """Times every entry `rounds` times, round-robin with a rotating order, `inner` calls each
    (None: :func:`autorange` after the warm-up). Returns the calls per sample used."""
    for e in entries:  # warm up (first calls allocate, fault pages, spin up thread pools)
        for _ in range(warmup):
            _call(e)
    if inner is None:
        inner = autorange(entries)
    for r in range(rounds):
        k = r % len(entries)
        for e in entries[k:] + entries[:k]:
            t0 = time.perf_counter()
            for _ in range(inner):
                out = e.compiled(*e.args)
                if e.carry is not None:
                    e.args = e.carry(out, e.args)
            jax.block_until_ready(out)
            e.times.append((time.perf_counter() - t0) / inner)
            del out
    return inner


def allocator(maps: str = "/proc/self/maps") -> str:
    """The malloc this process really runs with: what is mapped into it, not what LD_PRELOAD
    asked for (ld.so ignores a preload it cannot load, with only a message on stderr)."""
    preload = os.environ.get("LD_PRELOAD", "")
    try:
        with open(maps) as f:
            mapped = f.read()
    except OSError:  # no /proc (macOS, Windows): say what was asked, and that it is unchecked
        return f"unknown (no {maps}; LD_PRELOAD={preload!r})" if preload else "default"
    for name in ("tcmalloc", "jemalloc"):
        if f"lib{name}" in mapped:
            return name
    if preload:
        return f"default (glibc malloc): LD_PRELOAD={preload!r} was not loaded"
    return "default (glibc malloc on Linux)"
