"""Where a compiled step's time goes on XLA:CPU: each thunk's time, from a profiler trace.

A whole model's step time is a blunt instrument for its norm layers: in the benchmark's
ResNet-18 the convolutions are over 85% of the step, and one kind of them (the stage-4 3x3
convolutions' gradients) runs 1-2% faster or slower from one compiled copy of the same program
to the next -- as much as every norm layer in the step costs. XLA:CPU runs a compiled program
as a sequence of thunks (one per fusion, convolution, dot, copy, ...), and
:func:`jax.profiler.trace` records each thunk's start and end under the HLO instruction's
name. Splitting the thunks into matrix products (convolutions and dots, whatever they are
fused with) and everything else separates the layers' elementwise and reduction work from the
convolutions' noise.

What the numbers are: sums of thunk durations. XLA:CPU runs independent thunks concurrently,
so they add to more than the step's wall time, and a thunk that shares the cores with another
takes longer. They measure where work is, not what the step costs; the step's wall time
(``benchmarks.models``) stays the measure of that.

Public API only: :func:`jax.profiler.trace`, :class:`jax.profiler.ProfileData`, and the
compiled program's HLO text (``Compiled.as_text()``).
"""

from __future__ import annotations

import collections
import glob
import os
import re
import statistics
import tempfile
from typing import Any

import jax

__all__ = ["instructions", "matmul_thunks", "profile_round_robin", "split", "trace_thunks"]

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = (.*)$")
_HEAD = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_MATMUL = re.compile(r"\s(convolution|dot)\(")


def _computations(hlo: str) -> dict[str, list[str]]:
    comps: dict[str, list[str]] = {}
    cur: list[str] | None = None
    for line in hlo.splitlines():
        head = _HEAD.match(line)
        if head and not line.startswith(" "):
            cur = comps.setdefault("ENTRY" if head.group(1) else head.group(2), [])
        elif line.startswith("}"):
            cur = None
        elif cur is not None:
            cur.append(line)
    return comps


def instructions(hlo: str) -> dict[str, str]:
    """``{instruction name: its text}`` of every instruction in HLO text.

    >>> instructions("ENTRY %main (p: f32[2]) -> f32[2] {\\n  ROOT %n = f32[2] negate(%p)\\n}")
    {'n': 'f32[2] negate(%p)'}
    """
    out: dict[str, str] = {}
    for body in _computations(hlo).values():
        for line in body:
            m = _INSTR.match(line)
            if m:
                out.setdefault(m.group(1), m.group(2).split(", metadata=")[0])
    return out


def matmul_thunks(hlo: str) -> frozenset[str]:
    """The instructions of compiled HLO text that are, or fuse, a convolution or a dot.

    >>> matmul_thunks('''ENTRY %main (a: f32[2,2]) -> f32[2,2] {
    ...   %d = f32[2,2] dot(%a, %a), lhs_contracting_dims={1}, rhs_contracting_dims={0}
    ...   ROOT %n = f32[2,2] negate(%d)
    ... }''')
    frozenset({'d'})
    """
    comps = _computations(hlo)
    names = set()
    for name, text in instructions(hlo).items():
        if _MATMUL.search(" " + text):
            names.add(name)
            continue
        called = re.search(r"calls=%?([\w.\-]+)", text)
        if called and any(_MATMUL.search(" " + line) for line in comps.get(called.group(1), [])):
            names.add(name)
    return frozenset(names)


def trace_thunks(compiled: Any, args: tuple[Any, ...], carry: Any = None, steps: int = 1
                 ) -> tuple[dict[str, float], tuple[Any, ...]]:
    """``({thunk: ms per call}, next args)``: `steps` calls of `compiled` under the profiler.

    Only events named after one of the program's HLO instructions count (the thunks; not the
    runtime's own events). `carry(out, args)` gives the next call's arguments (a train step's
    donated state).
    """
    names = set(instructions(compiled.as_text()))
    totals: collections.Counter[str] = collections.Counter()
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            for _ in range(steps):
                out = compiled(*args)
                if carry is not None:
                    args = carry(out, args)
                jax.block_until_ready(out)
        found = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)
        if not found:
            raise RuntimeError("the profiler wrote no trace")
        profile = jax.profiler.ProfileData.from_file(found[0])
        for plane in profile.planes:
            for line in plane.lines:
                for event in line.events:
                    if event.name in names:
                        totals[event.name] += event.duration_ns / 1e6 / steps
    return dict(totals), args


def split(times: dict[str, float], matmuls: frozenset[str]) -> tuple[float, float]:
    """``(matrix-product ms, other ms)``: the thunks' times summed in the two classes.

    >>> split({"conv": 5.0, "fusion": 2.0, "copy": 1.0}, frozenset({"conv"}))
    (5.0, 3.0)
    """
    mat = sum(t for n, t in times.items() if n in matmuls)
    return mat, sum(t for n, t in times.items() if n not in matmuls)


def profile_round_robin(entries: list[Any], rounds: int) -> list[tuple[float, float]]:
    """Per entry (``benchmarks.harness.Entry``, already warm), ``(matrix-product ms, other
    ms)`` per call: each thunk's median over `rounds` interleaved traced calls, summed."""
    runs: list[list[dict[str, float]]] = [[] for _ in entries]
    for _ in range(rounds):
        for i, e in enumerate(entries):
            times, e.args = trace_thunks(e.compiled, e.args, e.carry)
            runs[i].append(times)
    out = []
    for e, per in zip(entries, runs, strict=True):
        names = set().union(*per)
        median = {n: statistics.median(r.get(n, 0.0) for r in per) for n in names}
        out.append(split(median, matmul_thunks(e.compiled.as_text())))
    return out
