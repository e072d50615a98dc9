"""Where a compiled step's time goes on XLA:CPU: each thunk's time, from a profiler trace.

A whole model's step time is a blunt instrument for its norm layers. In the benchmark's
ResNet-18, six convolutions take about 80% of the step: stage 4's three 512-channel 3x3
convolutions on 2x2 feature maps, forward and input gradient, which XLA:CPU rewrites into a
2x2-window convolution with a reversed kernel and swapped dimensions, about 140 ms each.
Their time moves by 1-2% from one compiled copy of the same program to the next: as much as
every norm layer in the step costs.

XLA:CPU runs a compiled program as a sequence of thunks (one per fusion, convolution, dot,
copy, ...), and :func:`jax.profiler.trace` records each thunk's start and end under the HLO
instruction's name. Splitting the thunks into matrix products (convolutions and dots,
whatever they are fused with) and everything else separates the layers' elementwise and
reduction work from the convolutions' noise.

What the numbers are: sums of thunk durations. XLA:CPU runs independent thunks concurrently,
so they add up to more than the step's wall time, and a thunk that shares the cores takes
longer. The same operation can also run at a different speed in another program: in the
transformer, the MLP's GELU gradient and a transpose of its activations, identical in flax's
program and jnorm's, took twice as long in three of four blocks of jnorm's. Each is split into
two partitions for the two threads, and there the second thread was still inside thread-pool
tasks begun during the preceding matrix product when it started, so one thread ran both
(``--around`` shows what the other threads did while a thunk ran: :func:`neighbours`). The
thunks measure where the work is; the step's wall time (``benchmarks.models``) stays the
measure of what it costs.

``python -m benchmarks.thunks --model resnet_gn`` prints, for flax's norm, jnorm's and none,
each copy's split and the thunk signatures whose time differs most between them.
``benchmarks.models --profile`` puts the split in its table. Public API only:
:func:`jax.profiler.trace`, :class:`jax.profiler.ProfileData`, and the compiled program's HLO
text (``Compiled.as_text()``).
"""

from __future__ import annotations

import collections
import glob
import os
import re
import statistics
import tempfile
from typing import Any, NamedTuple

import jax

from benchmarks.harness import _DEF, _computations  # the HLO reader count_passes uses

__all__ = ["Event", "instructions", "matmul_thunks", "median_thunks", "neighbours",
           "profile_round_robin", "signatures", "split", "trace_events", "trace_thunks"]

_MATMUL = re.compile(r"\s(convolution|dot)\(")


def instructions(hlo: str) -> dict[str, str]:
    """``{instruction name: its text}`` of every instruction in HLO text.

    >>> instructions("ENTRY %main (p: f32[2]) -> f32[2] {\\n  ROOT %n = f32[2] negate(%p)\\n}")
    {'n': 'f32[2] negate(%p)'}
    """
    out: dict[str, str] = {}
    for body in _computations(hlo).values():
        for line in body:
            m = _DEF.match(line)
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


class Event(NamedTuple):
    """One profiler event of a traced call: the thread (the trace's line) it ran on, its
    name (an HLO instruction's for a thunk), start and duration in ns."""

    thread: str
    name: str
    start_ns: int
    duration_ns: int


def trace_events(compiled: Any, args: tuple[Any, ...], carry: Any = None, steps: int = 1
                 ) -> tuple[list[Event], tuple[Any, ...]]:
    """``(events, next args)``: every event the profiler recorded on the runtime's threads
    during `steps` calls of `compiled`. `carry(out, args)` gives the next call's arguments
    (a train step's donated state)."""
    events: list[Event] = []
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
                events.extend(Event(line.name, e.name, e.start_ns, e.duration_ns)
                              for e in line.events)
    return events, args


def trace_thunks(compiled: Any, args: tuple[Any, ...], carry: Any = None, steps: int = 1
                 ) -> tuple[dict[str, float], tuple[Any, ...]]:
    """``({thunk: ms per call}, next args)``: `steps` calls of `compiled` under the profiler.

    Only events named after one of the program's HLO instructions count (the thunks; not the
    runtime's own events). A thunk that runs others (a while loop, a conditional) includes
    their time, which then counts twice; the benchmark's models have none. `carry(out, args)`
    gives the next call's arguments (a train step's donated state).
    """
    names = set(instructions(compiled.as_text()))
    events, args = trace_events(compiled, args, carry, steps)
    totals: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.name in names:
            totals[e.name] += e.duration_ns / 1e6 / steps
    return dict(totals), args


def _covered(spans: list[tuple[int, int]], start: int, end: int) -> int:
    """ns of ``[start, end)`` inside the union of `spans` (``(start, end)`` pairs)."""
    total, reach = 0, start
    for a, b in sorted(spans):
        a, b = max(a, reach), min(b, end)
        if b > a:
            total += b - a
            reach = b
    return total


def neighbours(events: list[Event], names: set[str] | frozenset[str], thunk: Event
               ) -> dict[str, tuple[float, float]]:
    """What the other threads did while `thunk` ran: ``{thread: (ms in thunks, ms in other
    pool tasks)}``. Pool tasks are the spans between the profiler's
    ``ThreadpoolListener::StartRegion`` and ``StopRegion`` marks on a thread: work the
    runtime's thread pool ran there (a fusion's partition, a library kernel's worker) that
    carries no thunk name. The rest of the interval the thread had no task.
    """
    start, end = thunk.start_ns, thunk.start_ns + thunk.duration_ns
    out: dict[str, tuple[float, float]] = {}
    for thread in sorted({e.thread for e in events if e.thread != thunk.thread}):
        mine = sorted((e for e in events if e.thread == thread), key=lambda e: e.start_ns)
        if not any(e.name == "ThreadpoolListener::StartRegion" or e.name in names for e in mine):
            continue  # not one of the runtime's threads (the Python thread only enqueues)
        thunk_spans = [(e.start_ns, e.start_ns + e.duration_ns) for e in mine if e.name in names]
        task_spans: list[tuple[int, int]] = []
        opened: int | None = None
        for e in mine:
            if e.name == "ThreadpoolListener::StartRegion":
                opened = e.start_ns
            elif e.name == "ThreadpoolListener::StopRegion" and opened is not None:
                task_spans.append((opened, e.start_ns))
                opened = None
        in_thunks = _covered(thunk_spans, start, end)
        in_tasks = _covered(thunk_spans + task_spans, start, end) - in_thunks
        out[thread] = (in_thunks / 1e6, in_tasks / 1e6)
    return out


def split(times: dict[str, float], matmuls: frozenset[str]) -> tuple[float, float]:
    """``(matrix-product ms, other ms)``: the thunks' times summed in the two classes.

    >>> split({"conv": 5.0, "fusion": 2.0, "copy": 1.0}, frozenset({"conv"}))
    (5.0, 3.0)
    """
    mat = sum(t for n, t in times.items() if n in matmuls)
    return mat, sum(t for n, t in times.items() if n not in matmuls)


def median_thunks(entries: list[Any], rounds: int) -> list[dict[str, float]]:
    """Per entry (``benchmarks.harness.Entry``, already warm), ``{thunk: ms per call}``: each
    thunk's median over `rounds` traced calls, the entries traced interleaved."""
    runs: list[list[dict[str, float]]] = [[] for _ in entries]
    for _ in range(rounds):
        for i, e in enumerate(entries):
            times, e.args = trace_thunks(e.compiled, e.args, e.carry)
            runs[i].append(times)
    return [{n: statistics.median(r.get(n, 0.0) for r in per) for n in set().union(*per)}
            for per in runs]


def profile_round_robin(entries: list[Any], rounds: int) -> list[tuple[float, float]]:
    """Per entry, ``(matrix-product ms, other ms)`` per call: :func:`median_thunks` split."""
    return [split(median, matmul_thunks(e.compiled.as_text()))
            for e, median in zip(entries, median_thunks(entries, rounds), strict=True)]


def signatures(hlo: str) -> dict[str, str]:
    """``{instruction: what it computes, without names}``: its result shape and, for a fusion,
    how many of each operation it fuses; for a convolution or dot, its window and dimensions.
    Thunks of two programs that compute the same thing have the same signature.

    >>> signatures("ENTRY %m (p: f32[4]) -> f32[4] {\\n  ROOT %e = f32[4]{0} exponential(%p)\\n}")
    {'e': 'f32[4] exponential'}
    """
    comps = _computations(hlo)
    out = {}
    for name, text in instructions(hlo).items():
        shape = re.sub(r"\{[\d,]*\}", "", text.split(" ")[0])
        called = re.search(r"calls=%?([\w.\-]+)", text)
        body = comps.get(called.group(1), []) if called else [f"  %{name} = {text}"]
        ops: collections.Counter[str] = collections.Counter()
        matmul = []
        for line in body:
            m = re.search(r"= \S+ ([a-z\-]+)\(", line)
            if m and m.group(1) not in ("parameter", "constant", "bitcast"):
                ops[m.group(1)] += 1
            if _MATMUL.search(" " + line):
                matmul.append(re.sub(r".*?(window=|lhs_contracting)", r"\1",
                                     line.split(", metadata=")[0]))
        out[name] = (f"{shape} " + " ".join(f"{op}{'' if k == 1 else k}"
                                            for op, k in sorted(ops.items()))
                     + "".join(f" [{m}]" for m in matmul))
    return out


def _main(argv: list[str] | None = None) -> int:
    import argparse

    from benchmarks import models
    from benchmarks.harness import time_round_robin

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.thunks",
        description="Where one model's train step spends its time, per XLA:CPU thunk, with "
                    "flax's norm, jnorm's and none (linen).")
    parser.add_argument("--model", default="resnet_gn", choices=models.MODELS)
    parser.add_argument("--impls", default="flax,jnorm,none")
    parser.add_argument("--copies", type=int, default=2, help="compiled copies of each")
    parser.add_argument("--rounds", type=int, default=5, help="traced steps per copy")
    parser.add_argument("--top", type=int, default=12, help="signatures listed")
    parser.add_argument("--quick", action="store_true", help="the model's tiny size")
    parser.add_argument("--around", metavar="REGEX",
                        help="also trace one more step of every copy and, "
                             "for every thunk whose signature matches REGEX, print what the "
                             "other threads did while it ran")
    args = parser.parse_args(argv)
    if jax.default_backend() != "cpu":
        parser.error("thunk events are XLA:CPU's; run it on a CPU.")
    impls = [s for s in args.impls.split(",") if s]
    entries = models.compiled_steps(args.model, "linen", args.quick, args.copies, impls)
    time_round_robin(entries, 0, 2, 1)  # warm-up only
    medians = median_thunks(entries, args.rounds)
    by_sig: dict[str, dict[str, list[float]]] = collections.defaultdict(
        lambda: collections.defaultdict(list))
    print(f"{args.model}, linen, {args.copies} copies x {args.rounds} traced steps; ms of "
          "thunk time per step (each thunk's median over the steps)")
    for i, (e, median) in enumerate(zip(entries, medians, strict=True)):
        hlo = e.compiled.as_text()
        mat, other = split(median, matmul_thunks(hlo))
        print(f"  {e.impl:8s} copy {i // len(impls)}: matmul {mat:8.1f}  other {other:7.1f}")
        sums: collections.Counter[str] = collections.Counter()
        sig_of = signatures(hlo)
        for n, t in median.items():
            sums[sig_of[n]] += t
        for sig, t in sums.items():
            by_sig[sig][e.impl].append(t)
    print(f"\nthe {args.top} signatures whose time differs most between implementations "
          "(median over copies; a signature sums every thunk computing the same thing):")
    print("".join(f"{impl:>9}" for impl in impls) + "  signature")

    def med(sig: str, impl: str) -> float:
        v = by_sig[sig].get(impl)
        return statistics.median(v) if v else 0.0

    spread = sorted(by_sig, key=lambda s: -(max(med(s, i) for i in impls)
                                             - min(med(s, i) for i in impls)))
    for sig in spread[:args.top]:
        print("".join(f"{med(sig, i):9.2f}" for i in impls) + f"  {sig[:160]}")
    print("\nthe largest signatures:")
    for sig in sorted(by_sig, key=lambda s: -max(med(s, i) for i in impls))[:args.top]:
        print("".join(f"{med(sig, i):9.2f}" for i in impls) + f"  {sig[:160]}")
    if args.around:
        _print_around(entries, len(impls), re.compile(args.around))
    return 0


def _print_around(entries: list[Any], per_copy: int, pattern: re.Pattern[str]) -> None:
    print(f"\nthunks matching {pattern.pattern!r}, one traced step; ms, and what the other "
          "threads did meanwhile (ms in thunks / in other pool tasks / with no task):")
    for i, e in enumerate(entries):
        hlo = e.compiled.as_text()
        sig_of = signatures(hlo)
        names = frozenset(sig_of)
        events, e.args = trace_events(e.compiled, e.args, e.carry)
        threads = sorted({ev.thread for ev in events if ev.name in names
                          or ev.name == "ThreadpoolListener::StartRegion"})
        for ev in sorted(events, key=lambda ev: ev.start_ns):
            if ev.name in names and pattern.search(sig_of[ev.name]):
                ms = ev.duration_ns / 1e6
                others = "; ".join(
                    f"thread {threads.index(t)}: "
                    f"{a:.2f} / {b:.2f} / {max(ms - a - b, 0.0):.2f}"
                    for t, (a, b) in neighbours(events, names, ev).items())
                print(f"  {e.impl:8s} copy {i // per_copy} {ev.name:28s} {ms:7.2f} on thread "
                      f"{threads.index(ev.thread)}   {others}")


if __name__ == "__main__":
    raise SystemExit(_main())
