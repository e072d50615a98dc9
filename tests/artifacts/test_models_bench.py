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
    assert models.IMPLS == (*bench.IMPLS, "none")
    assert seen == {(m, f, i) for m in models.MODELS for f in models.FRAMEWORKS
                    for i in models.IMPLS}
    for r in report["results"]:
        assert 0 < r["min_ms"] <= r["median_ms"]
        assert r["rounds"] == report["rounds"] == 1
        assert r["copies"] == report["copies"] == 1
        assert r["spread"] == 0  # one copy
        assert r["temp_mib"] is None or r["temp_mib"] >= 0
        if r["impl"] == "flax":
            assert r["vs_flax"] == pytest.approx(1.0)
        if r["impl"] == "none":
            assert r["norm_ms"] is None and r["norm_vs_flax"] is None
        else:
            assert r["norm_ms"] is not None
        # --quick profiles one step per copy: every model has convolutions or dots and other
        # thunks; the norms' work is measured against the model without them
        assert report["profile"] == 1
        assert r["matmul_ms"] > 0 and r["other_ms"] > 0
        assert (r["work_ms"] is None) == (r["impl"] == "none")


def test_the_model_without_norms_has_no_norm_parameters():
    """``none`` builds the same model with the norm layers returning their input: no scale,
    bias or running statistics anywhere, the other parameters as with flax's norms."""
    from flax import traverse_util

    def paths(tree):
        return {"/".join(map(str, k)) for k in traverse_util.flatten_dict(dict(tree))}

    for name in ("resnet_bn", "unet_gn", "transformer_ln"):
        m = models._MODELS[name]
        params, _, _ = models._linen_step(
            m, m.quick, models.norm_class("linen", "flax", m.kind))[1]
        params_none, rest_none, _ = models._linen_step(
            m, m.quick, models.norm_class("linen", "none", m.kind))[1]
        assert rest_none == {}  # no batch_stats
        assert paths(params_none) == {k for k in paths(params) if "Norm" not in k}
        assert len(paths(params_none)) < len(paths(params))

        def leaf_names(impl, m=m):
            state = models._nnx_step(m, m.quick, models.norm_class("nnx", impl, m.kind))[1]
            return {str(path[-1]) for path, _ in state.flat_state()}

        assert {"scale", "mean", "var"} & leaf_names("flax")
        assert not {"scale", "mean", "var"} & leaf_names("none")


def test_summary_takes_the_median_copy_and_the_cost_over_no_norms():
    times = {
        "flax": [[10.0, 11.0], [12.0, 12.5], [10.5, 10.6]],
        "jnorm": [[9.5, 9.9], [10.0, 10.2], [11.0, 11.0]],
        "flax_2pass": [[14.0], [14.0], [14.0]],
        "none": [[8.0, 8.1], [8.2, 8.4], [7.9, 8.3]],
    }
    s = models.summarize(times)
    assert s["flax"]["min_ms"] == 10.5 and s["jnorm"]["min_ms"] == 10.0
    assert s["none"]["min_ms"] == 8.0
    assert s["jnorm"]["norm_ms"] == pytest.approx(2.0)
    assert s["jnorm"]["norm_vs_flax"] == pytest.approx(2.0 / 2.5)
    assert s["flax"]["norm_vs_flax"] == pytest.approx(1.0)
    assert s["flax"]["spread"] == pytest.approx(12.0 / 10.0 - 1)
    assert s["jnorm"]["median_ms"] == pytest.approx(10.1)
    assert s["none"]["norm_ms"] is None
    # without the baseline there is no norm cost
    assert models.summarize({k: v for k, v in times.items() if k != "none"})["jnorm"][
        "norm_ms"] is None


def test_the_thunk_summary_measures_the_norms_work_against_no_norms():
    split = {"flax": [(50.0, 14.0), (52.0, 15.0), (49.0, 14.5)],
             "jnorm": [(51.0, 12.0), (50.0, 12.5), (60.0, 11.0)],
             "none": [(52.0, 10.0), (50.0, 10.0), (51.0, 10.0)]}
    s = models.summarize_thunks(split)
    assert s["flax"]["other_ms"] == 14.5 and s["jnorm"]["matmul_ms"] == 51.0
    assert s["jnorm"]["work_ms"] == pytest.approx(2.0)
    assert s["jnorm"]["work_vs_flax"] == pytest.approx(2.0 / 4.5)
    assert s["none"]["work_ms"] is None and s["none"]["work_vs_flax"] is None
    assert models.summarize_thunks({k: v for k, v in split.items() if k != "none"})[
        "jnorm"]["work_ms"] is None


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
