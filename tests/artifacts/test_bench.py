"""`python -m benchmarks.bench --quick` runs and reports what it promises (no timing checks)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks import bench, harness, kernels


@pytest.fixture(scope="module")
def report():
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "--quick", "--json", "--pallas", "64x128"],
        capture_output=True, text=True, check=True, timeout=600,
    )
    return json.loads(out.stdout)


def test_report_header(report):
    for key in ("device", "backend", "jax", "flax", "jnorm", "allocator", "rounds", "inner"):
        assert key in report
    assert report["rounds"] >= 1


def test_every_layer_mode_and_impl(report):
    rows = report["results"]
    seen = {(r["layer"], r["mode"], r["impl"]) for r in rows}
    for layer in bench.LAYERS:
        for mode in bench.MODES:
            for impl in harness.IMPLS:
                assert (layer, mode, impl) in seen
        assert (layer, "copy", "copy") in seen
    for r in rows:
        assert r["median_ms"] > 0 and r["x_copy"] > 0
        assert r["rounds"] == report["rounds"]
        assert r["shape"] == list(bench.QUICK_SHAPES[r["layer"]])
        if r["impl"] == "flax":
            assert r["vs_flax"] == pytest.approx(1.0)
        if r["impl"] == "copy":
            assert (r["reads"], r["writes"]) == (1, 1)
        else:
            assert r["vs_flax"] > 0
            assert r["reads"] >= 1 and r["writes"] >= 0
        assert r["temp_mib"] is None or r["temp_mib"] >= 0
    # one count of back-to-back calls per layer and shape, so its programs are timed alike
    for layer in bench.LAYERS:
        counts = {r["inner"] for r in rows if r["layer"] == layer}
        assert len(counts) == 1 and next(iter(counts)) >= 1


def _jnorm_names_used(path: Path) -> set[str]:
    """Every ``jnorm...`` module a file imports and every ``jnorm`` attribute it reads."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.split(".")[0] == "jnorm"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "jnorm":
            names |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Attribute):
            chain = []
            while isinstance(node, ast.Attribute):
                chain.append(node.attr)
                node = node.value
            if isinstance(node, ast.Name) and node.id in ("jnorm", "jnn", "jnx"):
                names.add(".".join([node.id, *reversed(chain)]))
    return names


ROOT = Path(__file__).resolve().parents[2]
PUBLIC_ONLY = sorted(
    [p for p in (ROOT / "benchmarks").glob("*.py") if p.name != "kernels.py"]
    + list((ROOT / "jnorm" / "experiments").glob("*.py")),
)


@pytest.mark.parametrize("path", PUBLIC_ONLY, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_benchmarks_and_experiments_use_only_the_public_api(path):
    """No private name of jnorm (a ``_``-prefixed module or attribute) in the benchmarks
    (except benchmarks/kernels.py, the kernel microbenchmark) or the experiments."""
    private = {n for n in _jnorm_names_used(path)
               if any(part.startswith("_") and part != "__version__"
                      for part in n.split(".")[1:])}
    assert not private, f"{path.name} uses private jnorm names: {sorted(private)}"


def test_the_public_api_check_sees_private_names(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import jnorm\nfrom jnorm._pallas import suits\njnorm._stats.moments\n")
    assert _jnorm_names_used(bad) >= {"jnorm._pallas.suits", "jnorm._stats.moments"}


def test_kernel_rows(report):
    kernels = {k["kernel"] for k in report["kernels"]}
    for name in ("layer_norm", "rms_norm"):
        for part in ("pallas fwd", "pallas bwd", "pallas fwd+bwd", "xla fwd", "xla fwd+bwd"):
            assert f"{name} {part}" in kernels
    assert all(k["gbytes_per_s"] > 0 for k in report["kernels"])


def test_tune_times_each_distinct_launch_config():
    # (16, 128): 1024 and 2048 elements give 8 and 16 rows; 4096 also gives 16 (all rows).
    # Backward: 1024 elements (8 rows) leave 2 blocks, so 2 and 4 blocks per program agree.
    rows = kernels.kernel_bandwidth(
        [(16, 128)], rounds=1, warmup=0, inner=1,
        fwd_configs=[(1024, 4), (2048, 4), (4096, 4), (2048, 8)],
        bwd_configs=[(1024, 4, 1), (1024, 4, 2), (1024, 4, 4), (2048, 4, 1)])
    tuned = {(k["kernel"], tuple(k["config"]), tuple(k["effective"]))
             for k in rows if "config" in k}
    assert tuned == {
        ("layer_norm pallas fwd 1024/4", (1024, 4), (8, 4)),
        ("layer_norm pallas fwd 2048/4", (2048, 4), (16, 4)),
        ("layer_norm pallas fwd 2048/8", (2048, 8), (16, 8)),
        ("layer_norm pallas bwd 1024/4/1", (1024, 4, 1), (8, 4, 1)),
        ("layer_norm pallas bwd 1024/4/2", (1024, 4, 2), (8, 4, 2)),
        ("layer_norm pallas bwd 2048/4/1", (2048, 4, 1), (16, 4, 1)),
    }
    assert {"layer_norm xla fwd", "layer_norm xla fwd+bwd", "copy"} <= {k["kernel"] for k in rows}


def _sleeper(seconds: float) -> harness.Entry:
    def call() -> int:
        time.sleep(seconds)
        return 0
    return harness.Entry("impl", "mode", call, (), None, None)


def test_autorange_sizes_samples_by_the_fastest_program():
    # a call that sleeps 5 ms already lasts more than the 2 ms target: one call per sample
    assert harness.autorange([_sleeper(5e-3)], target_s=2e-3) == 1
    # the fastest entry sets the count: a 0.1 ms sleeper beside a 5 ms one gets at most 20
    # calls (sleeps only overrun), and at least 2 unless both its calls took over 1 ms (the
    # 5 ms entry alone would give 1)
    assert 2 <= harness.autorange([_sleeper(5e-3), _sleeper(1e-4)], target_s=2e-3) <= 20
    # a call of microseconds would need thousands: the cap holds
    assert harness.autorange([harness.Entry("i", "m", lambda: 0, (), None, None)], cap=7) == 7


def test_time_round_robin_reports_the_calls_it_used():
    entries = [_sleeper(0.0), _sleeper(1e-3)]
    used = harness.time_round_robin(entries, rounds=2, warmup=0, inner=None)
    assert 1 <= used <= 200
    assert all(len(e.times) == 2 for e in entries)
    assert harness.time_round_robin([_sleeper(0.0)], rounds=1, warmup=0, inner=3) == 3


def test_inner_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--inner", "0"])
    assert "--inner must be at least 1, got 0" in capsys.readouterr().err


def test_table_and_options():
    table = bench.format_table(bench.run(layers=["rms_norm"], modes=["fwd"], rounds=1, warmup=0,
                                         quick=True, shapes={"rms_norm": (8, 128)}))
    assert "rms_norm" in table and "8x128" in table and "fwd+bwd" not in table
    with pytest.raises(ValueError, match="unknown layer"):
        bench.run(layers=["nope"], quick=True)


def test_count_passes_on_a_copy():
    import jax
    import jax.numpy as jnp

    x = jnp.ones((64, 32))
    hlo = jax.jit(lambda x: x * 2 + 1).lower(x).compile().as_text()
    assert harness.count_passes(hlo, x.size) == {"reads": 1, "writes": 1, "passes": 2}


def test_count_passes_ignores_operands_a_fusion_only_slices():
    """A fusion that takes x but only slices a row of it (a pivot) does not read x."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((64, 32))
    hlo = jax.jit(lambda x: jnp.exp(x[:1] * 2 + 1)).lower(x).compile().as_text()
    assert " slice(" in hlo
    assert harness.count_passes(hlo, x.size)["reads"] == 0
    hlo = jax.jit(lambda x: x * x[:1]).lower(x).compile().as_text()
    assert harness.count_passes(hlo, x.size) == {"reads": 1, "writes": 1, "passes": 2}


def test_fused_rule_reads_and_writes_less_than_flax():
    """At the benchmark's shapes the compiled forward+backward of jnorm's layers reads and writes
    full-size arrays at most as often as flax's (a property of the compiled program, not a
    timing), with no more temporary memory; layer norm keeps no full-size temporary at all."""
    from jnorm._plan import plan

    report = bench.run(modes=["fwd+bwd"], rounds=0, warmup=0)  # compiled programs, not timed
    rows = {(r["layer"], r["impl"]): r for r in report["results"] if r["mode"] == "fwd+bwd"}
    # Layer norm on XLA:CPU is plain autodiff (jnorm._plan: inside a model the rule cost more
    # than it saves alone; docs/benchmarks.md); the pass counts below are the rule's.
    autodiff = plan((1,), 2, param_shape=(1, 1024)).derivative == "autodiff"
    # Batch norm on XLA:CPU too, recomputed in the backward (jax.checkpoint): the backward's
    # statistics read x once more than flax's, and no full-size residual is kept.
    bn = plan((0, 1, 2), 4, param_shape=(1, 1, 1, 64))
    for layer in bench.LAYERS:
        ours, flax = rows[(layer, "jnorm")], rows[(layer, "flax")]
        if layer == "layer_norm" and autodiff:
            assert ours["temp_mib"] <= flax["temp_mib"], layer
            continue
        recomputed = layer == "batch_norm" and bn.derivative == "autodiff"
        assert bn.recompute or not recomputed
        # Group norm without private shift copies writes x - shift once and reads it back
        # (jnorm._plan: faster on XLA:CPU than the copies' fewer passes).
        extra = int(layer == "group_norm" and not plan(
            (1, 2, 4), 5, param_shape=(1, 1, 1, 32, 8)).shift_copies)
        assert ours["writes"] <= flax["writes"] + extra, layer
        assert ours["reads"] <= flax["reads"] + 2 * extra + recomputed, layer
        assert ours["reads"] + ours["writes"] <= (
            flax["reads"] + flax["writes"] + 2 * extra + recomputed), layer
        # No full-size temporary beyond flax's. The exact statistics' first pass adds per-block
        # vectors (group norm: 0.142 vs 0.137 MiB at a 32 MiB input), so the margin is 1% of
        # the input: a strided or full-size copy would exceed it many times over.
        size_mib = np.prod(bench.DEFAULT_SHAPES[layer]) * 4 / 2**20
        assert ours["temp_mib"] <= flax["temp_mib"] + 0.01 * size_mib, layer
    if not autodiff:
        assert rows[("layer_norm", "jnorm")]["temp_mib"] < 1  # nothing full-size is kept
    # Row norms: each of the three loops (sum g; dx with its statistics; dscale with its own
    # statistics) reads x and/or g once, and dx is written once: 6 passes for RMS norm, flax
    # 12. Layer norm's exact statistics add the first pass (the mean) and the shifted sums as
    # kernels of their own, read by the other loops: 8 passes, flax 14.
    for layer, most in (("rms_norm", 6),) + ((("layer_norm", 8),) if not autodiff else ()):
        assert rows[(layer, "jnorm")]["reads"] + rows[(layer, "jnorm")]["writes"] <= most, layer


def test_allocator_reports_what_is_loaded_not_what_was_asked(tmp_path):
    """A failed LD_PRELOAD (ld.so prints "cannot be preloaded ... ignored" and goes on) must not
    be reported as tcmalloc: the header reads the process's mapped libraries."""
    missing = tmp_path / "libtcmalloc_minimal.so.4"  # does not exist: ld.so ignores it
    out = subprocess.run(
        [sys.executable, "-c", "from benchmarks import harness; print(harness.allocator())"],
        capture_output=True, text=True, check=True, timeout=300,
        env={**__import__("os").environ, "LD_PRELOAD": str(missing)},
    )
    assert "cannot be preloaded" in out.stderr  # the preload really failed
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith("default (glibc malloc)") and "was not loaded" in line, line
    # a process with tcmalloc mapped (as /proc/self/maps lists it) is reported as tcmalloc
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 00000000 08:01 42 /usr/lib/libtcmalloc_minimal.so.4.5.9\n")
    assert harness.allocator(str(maps)) == "tcmalloc"
    maps.write_text("7f00-7f01 r-xp 00000000 08:01 42 /usr/lib/libc.so.6\n")
    assert harness.allocator(str(maps)).startswith("default")
    assert harness.allocator(str(tmp_path / "absent")).startswith(("default", "unknown"))
