"""Tests of the experiments suite (``jnorm.experiments``) at tiny sizes.

The whole suite runs once, in one test (so that ``pytest -n 2`` does not run it on both
workers), on a subsample of the digits at the ``tiny`` scale; that test then checks the report,
the numbers and the key behaviours, and runs the CLI on the same sizes (reusing the compiled
programs).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from jnorm.experiments import EXPERIMENTS, Context, run_suite
from jnorm.experiments.__main__ import main
from jnorm.experiments.data import Dataset, load_digits_dataset, load_npz
from jnorm.experiments.models import make_model
from jnorm.experiments.training import _CACHE, train


def _small(data: Dataset, n_train: int = 320, n_test: int = 160) -> Dataset:
    return Dataset(data.x_train[:n_train], data.y_train[:n_train], data.x_test[:n_test],
                   data.y_test[:n_test], "digits-small")


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits_dataset()


def _finite_numbers(obj) -> list[float]:
    if isinstance(obj, dict):
        return [v for x in obj.values() for v in _finite_numbers(x)]
    if isinstance(obj, list):
        return [v for x in obj for v in _finite_numbers(x)]
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return [float(obj)]
    return []


# ---------------------------------------------------------------- data


def test_digits_split_is_fixed_and_standardised(digits: Dataset) -> None:
    assert digits.x_train.shape[1:] == (8, 8, 1) and digits.x_train.dtype == np.float32
    assert len(digits.x_train) + len(digits.x_test) == 1797
    assert digits.num_classes == 10
    assert abs(float(digits.x_train.mean())) < 1e-4
    assert abs(float(digits.x_train.std()) - 1) < 1e-4
    again = load_digits_dataset()
    np.testing.assert_array_equal(again.y_test, digits.y_test)


def test_npz_both_layouts(tmp_path: Path, digits: Dataset) -> None:
    a = tmp_path / "a.npz"
    np.savez(a, images=np.random.rand(40, 5, 5), labels=np.arange(40) % 3)
    d = load_npz(a)
    assert d.x_train.shape[1:] == (5, 5, 1) and len(d.x_train) + len(d.x_test) == 40
    b = tmp_path / "b.npz"
    np.savez(b, x_train=digits.x_train[:30], y_train=digits.y_train[:30],
             x_test=digits.x_test[:10], y_test=digits.y_test[:10])
    assert load_npz(b).x_test.shape == (10, 8, 8, 1)
    c = tmp_path / "c.npz"
    np.savez(c, foo=np.zeros(3))
    with pytest.raises(ValueError, match="images"):
        load_npz(c)


# ---------------------------------------------------------------- training loop


def test_training_loop_sweeps_learns_and_detects_divergence(digits: Dataset) -> None:
    data = _small(digits)
    model = make_model("mlp", "batch")
    res = train(model, data, lrs=(0.1, 1e4), seeds=(0, 1), epochs=3, batch_size=64,
                momentum=0.0, progress=False)
    steps = 320 // 64
    assert res.step_loss.shape == (4, 3 * steps) and res.grid("test_acc").shape == (2, 1, 2)
    good = res.grid("step_loss")[0, 0]  # lr 0.1, both seeds
    assert np.all(good[:, -steps:].mean(1) < good[:, :steps].mean(1))  # loss goes down
    assert res.grid("test_acc")[0].min() > 0.6
    assert not res.grid("diverged")[0].any()
    assert res.grid("diverged")[1].all()  # lr = 1e4 blows up
    assert not np.array_equal(good[0], good[1])  # seeds differ
    # the compiled epoch is reused for another sweep of the same model and batch size
    n = len(_CACHE)
    train(model, data, lrs=(0.01, 0.1), seeds=(3, 4), epochs=1, batch_size=64, momentum=0.0,
          progress=False)
    assert len(_CACHE) == n
    with pytest.raises(ValueError, match="exceeds"):
        train(model, data, batch_size=10_000, progress=False)


def test_callback_and_freeze(digits: Dataset) -> None:
    seen, first = [], {}

    def callback(epoch: int, variables: dict) -> None:
        seen.append(epoch)
        first.setdefault("v", variables)

    model = make_model("mlp", "none")
    res = train(model, _small(digits), lrs=(0.1,), epochs=2, batch_size=64, momentum=0.0,
                freeze=("Dense_0",), progress=False, callback=callback)
    assert seen == [0, 1, 2]
    before, after = first["v"]["params"], res.variables["params"]
    np.testing.assert_array_equal(before["Dense_0"]["kernel"], after["Dense_0"]["kernel"])
    assert not np.array_equal(before["Dense_1"]["kernel"], after["Dense_1"]["kernel"])
    with pytest.raises(ValueError, match="Dense_9"):
        train(model, _small(digits), epochs=1, freeze=("Dense_9",), progress=False)


# ---------------------------------------------------------------- the suite, tiny


def _check_report_results_and_figures(out: Path, results: dict) -> None:
    assert set(results) == set(EXPERIMENTS)
    payload = json.loads((out / "results.json").read_text())
    assert set(payload["experiments"]) == set(EXPERIMENTS)
    report = (out / "report.md").read_text()
    for name, exp in payload["experiments"].items():
        png = out / exp["figure"]
        assert png.exists() and png.stat().st_size > 2_000, name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({exp['figure']})" in report
        assert exp["claims"], name
        for c in exp["claims"]:
            assert c["verdict"] in ("reproduced", "not reproduced")
            assert c["verdict"] in report
        nums = _finite_numbers(exp["numbers"])
        assert nums and all(math.isfinite(v) for v in nums), name
    meta = payload["meta"]
    assert meta["claims_total"] == sum(len(e["claims"]) for e in payload["experiments"].values())


def _check_normalizes_cube_matches_the_notes(results: dict) -> None:
    n = results["normalizes"].numbers
    assert {k: n[k]["cells_measured"] for k in ("batch", "layer", "instance", "group")} == {
        "batch": 4 * 6, "layer": 6 * 6, "instance": 6, "group": 3 * 6}
    assert all(c.holds for c in results["normalizes"].claims)


def _check_scale_invariance_identities_hold(results: dict) -> None:
    n = results["scale_invariance"].numbers
    assert max(n["eps0"]["du_f64"]) < 1e-10 and max(n["eps0"]["dW_f64"]) < 1e-10
    assert max(n["eps0"]["du_f32"]) < 1e-4
    assert abs(n["angle_slope"] + 2) < 0.1
    # jnorm's default epsilon visibly breaks the identity at a = 0.01
    assert n["eps1e-5"]["du_f32"][0] > 1e-2


def _check_naive_bias_grows_real_bias_does_not(results: dict) -> None:
    n = results["naive"].numbers
    b_naive = np.asarray(n["all/naive"]["b_norm_per_epoch"])
    b_real = np.asarray(n["all/batch"]["b_norm_per_epoch"])
    assert np.all(np.diff(b_naive, axis=1) > 0)
    assert b_naive[:, -1].min() > 100 * max(b_real[:, -1].max(), 1e-12)
    loss, moved = (np.asarray(n["all/naive"][k]) for k in ("loss_per_epoch", "loss_after_b_update"))
    assert np.max(np.abs(moved - loss) / loss) < 1e-4


def _check_smoothness_probe_measures_something(results: dict) -> None:
    s = results["smoothness"].numbers["summary"]
    for norm in ("none", "batch"):
        for k in ("loss_range", "grad_change", "beta"):
            assert s[norm][k]["mean"] > 0


def _check_other_experiments_report_their_tables(results: dict) -> None:
    n = results["learning_rate"].numbers
    assert len(n["rates"]) >= 3 and "none" in n["mlp"] and "batch" in n["mlp"]
    assert len(results["init_scale"].numbers["none"]["test_acc_mean"]) == 3
    bs = results["noise"].numbers["batch_size"]
    assert set(bs["mlp"]) == {"batch", "group"}
    rs = results["running_stats"].numbers["0.9"]
    assert np.all(np.asarray(rs["test_acc_population"]) > 0.1)
    for r in results.values():
        assert r.table.count("|") > 6


# ---------------------------------------------------------------- CLI


def test_cli_list_and_errors(capsys: pytest.CaptureFixture) -> None:
    assert main(["--list"]) == 0
    assert "naive" in capsys.readouterr().out
    assert main(["--only", "bogus", "--no-progress"]) == 2
    assert main(["--seeds", "0"]) == 2


def test_suite_at_tiny_sizes(tmp_path: Path, digits: Dataset) -> None:
    out = tmp_path / "jnorm-results"
    ctx = Context(_small(digits), out, scale="tiny", seeds=(0,), progress=False)
    results = {r.name: r for r in run_suite(ctx)}
    _check_report_results_and_figures(out, results)
    _check_normalizes_cube_matches_the_notes(results)
    _check_scale_invariance_identities_hold(results)
    _check_naive_bias_grows_real_bias_does_not(results)
    _check_smoothness_probe_measures_something(results)
    _check_other_experiments_report_their_tables(results)

    # The CLI on a .npz of the same sizes (so the suite's compiled programs are reused).
    d = _small(digits)
    npz = tmp_path / "d.npz"
    np.savez(npz, x_train=d.x_train, y_train=d.y_train, x_test=d.x_test, y_test=d.y_test)
    out2 = tmp_path / "out"
    assert main(["--quick", "--only", "naive", "--seeds", "1", "--data", str(npz), "--out",
                 str(out2), "--no-progress"]) == 0
    payload = json.loads((out2 / "results.json").read_text())
    assert list(payload["experiments"]) == ["naive"] and (out2 / "naive.png").exists()
