"""benchmarks.thunks: a profiled call's thunks are the program's instructions, split into
matrix products and the rest (no timing checks)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest

from benchmarks import thunks

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu",
                                reason="thunk events are XLA:CPU's")


def _compiled(fn, *args):
    return jax.jit(fn).lower(*args).compile()


def test_a_dot_and_a_convolution_are_matrix_products_and_the_rest_is_not():
    x = jnp.ones((64, 64))
    prog = _compiled(lambda a: jnp.tanh(a @ a).sum(0), x)
    hlo = prog.as_text()
    mats = thunks.matmul_thunks(hlo)
    assert mats and all("dot" in thunks.instructions(hlo)[n] or "calls=" in
                        thunks.instructions(hlo)[n] for n in mats)
    img = jnp.ones((2, 8, 8, 3))
    ker = jnp.ones((3, 3, 3, 4))
    conv = _compiled(lambda i, k: jax.nn.relu(jax.lax.conv_general_dilated(
        i, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))), img, ker)
    assert any("convolution" in thunks.instructions(conv.as_text())[n]
               for n in thunks.matmul_thunks(conv.as_text()))
    assert not thunks.matmul_thunks(_compiled(lambda a: jnp.exp(a).sum(), x).as_text())


def test_a_traced_call_reports_the_programs_thunks_and_carries_its_arguments():
    x = jnp.ones((256, 256))
    prog = _compiled(lambda a: (jnp.tanh(a @ a) + 1.0, jnp.exp(a).sum()), x)
    names = set(thunks.instructions(prog.as_text()))
    times, args = thunks.trace_thunks(prog, (x,), carry=lambda out, args: (out[0],), steps=2)
    assert times and set(times) <= names
    assert all(t >= 0 for t in times.values())
    assert args[0].shape == x.shape and float(args[0][0, 0]) != 1.0  # the carried output
    mat, other = thunks.split(times, thunks.matmul_thunks(prog.as_text()))
    assert mat > 0 and other >= 0 and mat + other == pytest.approx(sum(times.values()))


def test_signatures_match_the_same_work_in_two_programs():
    x = jnp.ones((32, 32))
    a = _compiled(lambda v: jnp.exp(v) @ v, x).as_text()
    b = _compiled(lambda v: (jnp.exp(v) @ v, jnp.sin(v)), x).as_text()  # more work
    sig_a, sig_b = thunks.signatures(a), thunks.signatures(b)
    mats = {sig_a[n] for n in thunks.matmul_thunks(a)}
    assert mats and mats <= set(sig_b.values())
    assert all("lhs_contracting" in s or "window=" in s for s in mats)


def test_the_command_line_lists_each_copy_and_the_signatures():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.thunks", "--model", "unet_gn", "--quick",
         "--copies", "1", "--rounds", "1", "--top", "3", "--around", "convolution"],
        capture_output=True, text=True, check=True, timeout=600,
    ).stdout
    for impl in ("flax", "jnorm", "none"):
        assert f"{impl:8s} copy 0: matmul" in out
    assert "signatures whose time differs most" in out and "the largest signatures" in out
    assert "thunks matching 'convolution'" in out
    assert re.search(r"jnorm +copy 0 +\S+ +[\d.]+ on thread \d", out)  # a convolution's line


def test_neighbours_splits_the_other_threads_time_into_thunks_pool_tasks_and_nothing():
    ev = thunks.Event
    events = [
        ev("t1", "fusion.1", 100, 100),  # the thunk watched: [100, 200)
        ev("t0", "ThreadpoolListener::StartRegion", 90, 0),  # a pool task [90, 150)
        ev("t0", "ThreadpoolListener::StopRegion", 150, 0),
        ev("t0", "ThreadpoolListener::StartRegion", 160, 0),  # a task running a thunk
        ev("t0", "copy.2", 160, 20),
        ev("t0", "ThreadpoolListener::StopRegion", 185, 0),  # then nothing until 200
        ev("python", "ThreadpoolListener::Record", 120, 0),  # enqueues only: not a runtime thread
    ]
    out = thunks.neighbours(events, frozenset({"fusion.1", "copy.2"}), events[0])
    assert set(out) == {"t0"}
    in_thunks, in_tasks = out["t0"]
    assert in_thunks == pytest.approx(20 / 1e6)  # copy.2
    assert in_tasks == pytest.approx((50 + 5) / 1e6)  # [100, 150) and [180, 185)


def test_trace_events_holds_the_thunks_on_the_runtimes_threads():
    x = jnp.ones((256, 256))
    prog = _compiled(lambda a: jnp.tanh(a @ a), x)
    names = set(thunks.instructions(prog.as_text()))
    events, _ = thunks.trace_events(prog, (x,))
    named = [e for e in events if e.name in names]
    assert named and all(e.duration_ns >= 0 and e.thread for e in named)
