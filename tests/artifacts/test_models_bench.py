"""`python -m benchmarks.models --quick` trains every model with every norm and reports the
table it promises (no timing checks: speed goals are the benchmark's printed ratios)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks import bench, models


@pytest.fixture(scope="module")
def report():
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.models", "--quick", "--json", "--rounds", "1"],
        capture_output=True, text=True, check=True, timeout=900,
    )
    return json.loads(out.stdout)


def test_every_model_framework_and_impl(report):
    seen = {(r["model"], r["framework"], r["impl"]) for r in report["results"]}
    assert seen == {(m, f, i) for m in models.MODELS for f in models.FRAMEWORKS
                    for i in bench.IMPLS}
    for r in report["results"]:
        assert 0 < r["min_ms"] <= r["median_ms"]
        assert r["rounds"] == report["rounds"] == 1
        assert r["temp_mib"] is None or r["temp_mib"] >= 0
        if r["impl"] == "flax":
            assert r["vs_flax"] == pytest.approx(1.0)


def test_the_table_has_a_line_per_row(report):
    table = models.format_table(report)
    for r in report["results"]:
        assert any(line.split()[:3] == [r["model"], r["framework"], r["impl"]]
                   for line in table.splitlines())


@pytest.mark.parametrize("framework", models.FRAMEWORKS)
def test_the_norm_class_is_the_only_switch(framework):
    """flax's and jnorm's classes of the same name, with the same keywords."""
    for kind in ("batch", "group", "layer", "rms"):
        ours, theirs = (models.norm_class(framework, i, kind) for i in ("jnorm", "flax"))
        assert ours.func.__name__ == theirs.func.__name__
        assert ours.func.__module__.startswith("jnorm.")
        assert theirs.func.__module__.startswith("flax.")
        assert ours.keywords == theirs.keywords
        assert models.norm_class(framework, "flax_2pass", kind).keywords == {
            **theirs.keywords, "use_fast_variance": False}


def test_unknown_names_fail_with_the_choices():
    with pytest.raises(ValueError, match="choose from"):
        models.run(["resnet"], quick=True)


def test_the_layer_bench_runs_at_the_models_shapes():
    """``python -m benchmarks.bench --model-shapes`` benches each layer at the shapes the models
    give it (compiled only here), the transformer's rows among them."""
    t = models._MODELS["transformer_ln"].size
    assert (t["batch"] * t["tokens"], t["d"]) in bench.MODEL_SHAPES["layer_norm"]
    report = bench.run(layers=["rms_norm"], modes=["fwd"], rounds=0, model_shapes=True)
    assert {tuple(r["shape"]) for r in report["results"] if r["impl"] != "copy"} == set(
        bench.MODEL_SHAPES["rms_norm"])
