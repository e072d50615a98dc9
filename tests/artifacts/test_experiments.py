"""Tests of the experiments suite (``jnorm.experiments``) at tiny sizes.

The whole suite runs once, in one test (so that ``pytest -n 2`` does not run it on both
workers), on a subsample of the digits at the ``tiny`` scale; that test then checks the report,
the numbers and the key behaviours. The guards (random labels, 100 classes, every bad input),
the per-experiment writing, ``--only`` merging and the refusal to replace earlier results have
tests of their own; those use stand-in experiments that train nothing.
"""

from __future__ import annotations

import json
import math
import types
from pathlib import Path

import numpy as np
import pytest

from jnorm.experiments import EXPERIMENTS, Context, run_suite
from jnorm.experiments.__main__ import main
from jnorm.experiments.common import RULE, Claim, ExperimentResult, Outcome, compare
from jnorm.experiments.data import DataError, Dataset, load_digits_dataset, load_npz
from jnorm.experiments.models import make_model
from jnorm.experiments.noise import _zoom
from jnorm.experiments.plotting import save, subplots, sweep_axes, sweep_curve
from jnorm.experiments.report import ResultsConflict
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
    np.savez(a, images=np.random.rand(200, 5, 5), labels=np.arange(200) % 3 + 7)
    d = load_npz(a)
    assert d.x_train.shape[1:] == (5, 5, 1) and len(d.x_train) + len(d.x_test) == 200
    assert d.num_classes == 3 and set(np.unique(d.y_train)) == {0, 1, 2}  # labels 7, 8, 9
    b = tmp_path / "b.npz"
    np.savez(b, x_train=digits.x_train[:130], y_train=digits.y_train[:130],
             x_test=digits.x_test[:10], y_test=digits.y_test[:10])
    assert load_npz(b).x_test.shape == (10, 8, 8, 1)
    c = tmp_path / "c.npz"
    np.savez(c, foo=np.zeros(3))
    with pytest.raises(DataError, match="images"):
        load_npz(c)


# ---------------------------------------------------------------- training loop


def test_training_loop_sweeps_learns_and_detects_divergence(digits: Dataset) -> None:
    data = _small(digits)
    model = make_model("mlp", "batch", num_classes=10)
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

    model = make_model("mlp", "none", num_classes=10)
    res = train(model, _small(digits), lrs=(0.1,), epochs=2, batch_size=64, momentum=0.0,
                freeze=("Dense_0",), progress=False, callback=callback)
    assert seen == [0, 1, 2]
    before, after = first["v"]["params"], res.variables["params"]
    np.testing.assert_array_equal(before["Dense_0"]["kernel"], after["Dense_0"]["kernel"])
    assert not np.array_equal(before["Dense_1"]["kernel"], after["Dense_1"]["kernel"])
    with pytest.raises(ValueError, match="Dense_9"):
        train(model, _small(digits), epochs=1, freeze=("Dense_9",), progress=False)


# ---------------------------------------------------------------- verdict rules


def test_compare_margin_from_seed_spread_and_floor() -> None:
    c = compare([0.90, 0.91, 0.92], [0.80, 0.81, 0.82], floor=0.05)
    se = math.sqrt(2 * 0.01**2 / 3)
    assert c.diff == pytest.approx(0.10) and c.se == pytest.approx(se)
    assert c.margin == pytest.approx(0.05) and c.greater and not c.within
    noisy = compare([0.5, 0.9, 0.7], [0.6, 0.6, 0.6], floor=0.05)
    assert noisy.margin == pytest.approx(2 * noisy.se) and not noisy.greater  # spread wins
    one = compare([0.9], [0.8], floor=0.05)
    assert one.se is None and one.margin == 0.05 and "1 seed, no spread" in one.describe()


def test_no_difference_is_shown_only_by_a_tight_interval() -> None:
    """An absence of a difference counts only when diff ± 2 SE lies within the floor; one
    lost in the seed spread is undecided, never "reproduced" (the momentum-0.999 case: a
    4.5-point drop with a wide spread)."""
    tight = compare([0.900, 0.901, 0.902], [0.899, 0.900, 0.901], floor=0.01)
    assert tight.agrees() == (True, None) and tight.not_greater() == (True, None)
    wide = compare([0.98, 0.88, 0.95], [0.98, 0.98, 0.98], floor=0.01)  # -0.043 ± 0.06
    assert wide.within  # the old rule called this agreement
    holds, why = wide.agrees()
    assert not holds and why is not None and "undecided" in why
    assert wide.not_greater()[0] is False  # 2 SE reaches past the floor: not shown either
    worse = compare([0.98, 0.98, 0.98], [0.88, 0.95, 0.98], floor=0.01)
    assert worse.not_greater()[0] is False and worse.not_greater()[1] is not None
    far = compare([0.70, 0.71, 0.72], [0.90, 0.91, 0.92], floor=0.01)
    assert far.agrees() == (False, None)  # refuted: beyond the margin
    one = compare([0.9], [0.905], floor=0.01)
    assert one.agrees() == (True, None)  # one seed: the floor alone decides
    assert compare([0.9], [0.95], floor=0.01).agrees() == (False, None)


@pytest.mark.parametrize("sign", [1, -1], ids=["a-beats-b", "b-beats-a"])
def test_a_claimed_advantage_gets_three_verdicts(sign: int) -> None:
    """The same rule as for agreement, in both directions: shown when the difference clears
    the margin in the claimed direction, refuted when it clears it the other way or is
    bounded below the floor, undecided when it is lost in the seed spread."""
    def beats(a, b):  # the claim "x beats y" for x = a (sign 1) or x = b (sign -1)
        return (compare(a, b, 0.02) if sign == 1 else compare(b, a, 0.02)).beats()

    def flip(a, b):
        return (a, b) if sign == 1 else (b, a)

    shown = beats(*flip([0.90, 0.91, 0.92], [0.80, 0.81, 0.82]))
    assert shown == (True, None) and shown.verdict == "reproduced"
    reversed_ = beats(*flip([0.80, 0.81, 0.82], [0.90, 0.91, 0.92]))  # clears it the other way
    assert reversed_ == (False, None) and reversed_.verdict == "not reproduced"
    small = beats(*flip([0.905, 0.906, 0.907], [0.900, 0.901, 0.902]))  # +0.005 ± 0.002
    assert small == (False, None)  # bounded below the floor: smaller than the claimed size
    lost = beats(*flip([0.2, 0.9, 0.6], [0.3, 0.3, 0.3]))  # +0.267, 2 SE 0.40: the spread wins
    assert not lost.holds and lost.verdict == "inconclusive" and "undecided" in lost.undecided
    near = beats(*flip([0.905, 0.915, 0.925], [0.90, 0.90, 0.90]))  # +0.015, 2 SE 0.012
    assert near.verdict == "inconclusive"  # within the margin, not bounded below the floor
    # one seed: no spread, the floor alone decides
    assert beats(*flip([0.95], [0.90])).verdict == "reproduced"
    assert beats(*flip([0.91], [0.90])).verdict == "not reproduced"
    assert "beats" in RULE and "inconclusive" in RULE


def test_outcomes_combine_and_become_claims() -> None:
    yes, no, maybe = Outcome(True), Outcome(False), Outcome(False, "why")
    assert Outcome.all_of(yes, yes).verdict == "reproduced"
    assert Outcome.all_of(yes, maybe) == (False, "why")
    assert Outcome.all_of(maybe, no).verdict == "not reproduced"  # one refuted part decides
    assert Outcome.any_of(no, yes, maybe).verdict == "reproduced"
    assert Outcome.any_of(no, maybe) == (False, "why")
    assert Outcome.any_of(no, no).verdict == "not reproduced"
    assert Outcome.any_of(none="empty") == (False, "empty")
    for o in (yes, no, maybe):
        assert Claim.from_outcome("c", "k", "m", o).verdict == o.verdict


def test_guard_makes_claims_inconclusive_below_the_validity_bar(digits: Dataset) -> None:
    ctx = Context(digits, "unused", scale="tiny", seeds=(0,))
    assert ctx.chance == pytest.approx(np.bincount(digits.y_test).max() / len(digits.y_test))
    assert ctx.valid_bar == pytest.approx(ctx.chance + (1 - ctx.chance) / 2)
    ok = ctx.guard(Claim("c", "k", "m", True), 0.9)
    assert ok.verdict == "reproduced"
    bad = ctx.guard(Claim("c", "k", "m", True), 0.2)
    assert bad.verdict == "inconclusive" and "validity bar" in bad.inconclusive
    assert ctx.guard(Claim("c", "k", "m", False), 0.2).verdict == "inconclusive"


def test_hundred_classes_get_a_hundred_outputs(tmp_path: Path, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    npz = tmp_path / "c100.npz"
    np.savez(npz, images=rng.normal(size=(300, 4, 4)), labels=np.arange(300) % 100)
    data = load_npz(npz)
    assert data.num_classes == 100
    heads = []
    for mod in EXPERIMENTS.values():
        if hasattr(mod, "train"):
            def spy(*a, _train=mod.train, **k):
                res = _train(*a, **k)
                last = sorted(n for n in res.variables["params"] if n.startswith("Dense"))[-1]
                heads.append(res.variables["params"][last]["kernel"].shape[-1])
                return res
            monkeypatch.setattr(mod, "train", spy)
    ctx = Context(data, tmp_path / "out", scale="tiny", seeds=(0,), progress=False)
    results = run_suite(ctx, ["naive", "running_stats"])  # a CenteredMLP and the CNN
    assert len(heads) == 5 and set(heads) == {100}
    # random images: nothing to learn, so the training claims are inconclusive
    assert results[1].claims and all(c.verdict == "inconclusive" for c in results[1].claims)
    assert json.loads((tmp_path / "out" / "results.json").read_text())["meta"]["chance"] < 0.05


# ---------------------------------------------------------------- report writing and merging


def test_sweep_panel_marks_divergence_and_draws_the_reference_lines() -> None:
    _, ax = subplots()
    xs, mean = [0.1, 1.0, 10.0], np.array([0.8, 0.5, 0.1])
    sweep_curve(ax, xs, mean, np.full(3, 0.05), np.array([0.0, 0.0, 0.5]), color="r",
                label="batch norm")
    sweep_axes(ax, valid_bar=0.55, chance=0.1, xlabel="x", title="t")
    crosses = [ln for ln in ax.lines if ln.get_marker() == "x" and len(ln.get_xdata())]
    assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [10.0]  # only where it diverged
    assert list(crosses[0].get_ydata()) == [0.1]
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["diverged (≥ 1 seed)", "validity bar 0.55", "chance 0.10", "batch norm"]
    assert ax.get_xscale() == "log" and ax.get_ylim() == (0, 1.02) and ax.get_title() == "t"


def _fake(name: str, tag: str) -> types.ModuleType:
    """A stand-in experiment: draws a figure, makes one claim, trains nothing."""
    mod = types.ModuleType(name)
    mod.NAME, mod.TITLE = name, f"Fake {name}"

    def run(ctx: Context) -> ExperimentResult:
        fig, ax = subplots()
        ax.plot([0, 1], [0, 1])
        fname = save(fig, ctx.out, name, dpi=30)
        return ExperimentResult(name, mod.TITLE, f"method {tag}", fname, "| a |\n|---|\n| 1 |",
                                [Claim(f"claim {name} {tag}", "crit", "meas", True)],
                                {"tag": tag})

    mod.run = run
    return mod


def _with_fakes(monkeypatch, **tags: str) -> None:
    for n in list(EXPERIMENTS):
        monkeypatch.delitem(EXPERIMENTS, n)
    for n, tag in tags.items():
        monkeypatch.setitem(EXPERIMENTS, n, _fake(n, tag))


def test_results_are_written_after_each_experiment(tmp_path: Path, monkeypatch,
                                                   digits: Dataset) -> None:
    _with_fakes(monkeypatch, one="v1", two="v1")

    def interrupted(ctx: Context) -> ExperimentResult:
        raise KeyboardInterrupt

    EXPERIMENTS["two"].run = interrupted
    ctx = Context(digits, tmp_path, scale="tiny", seeds=(0,), progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_suite(ctx)
    payload = json.loads((tmp_path / "results.json").read_text())
    assert list(payload["experiments"]) == ["one"]
    assert "claim one v1" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "one.png").exists()


def test_only_merges_into_the_report(tmp_path: Path, monkeypatch, digits: Dataset) -> None:
    _with_fakes(monkeypatch, one="v1", two="v1")
    ctx = Context(digits, tmp_path, scale="tiny", seeds=(0,), progress=False)
    run_suite(ctx)
    _with_fakes(monkeypatch, one="v2", two="v2")
    run_suite(ctx, ["two"])  # like --only two
    report = (tmp_path / "report.md").read_text()
    assert "claim one v1" in report and "claim two v2" in report and "two v1" not in report
    assert report.index("Fake one") < report.index("Fake two")  # suite order kept
    exps = json.loads((tmp_path / "results.json").read_text())["experiments"]
    assert exps["one"]["numbers"]["tag"] == "v1" and exps["two"]["numbers"]["tag"] == "v2"
    assert (tmp_path / "one.png").exists() and (tmp_path / "two.png").exists()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_no_run_replaces_earlier_results_unless_told(tmp_path: Path, monkeypatch,
                                                     digits: Dataset) -> None:
    """A full run, then ``--quick --only noise`` into the same folder, must not exit 0 having
    deleted the full run's figures or cut the report to one experiment."""
    _with_fakes(monkeypatch, one="v1", two="v1")
    ctx = Context(digits, tmp_path, scale="tiny", seeds=(0,), progress=False)
    run_suite(ctx)
    before = _snapshot(tmp_path)
    _with_fakes(monkeypatch, one="v2", two="v2")
    other_seeds = Context(digits, tmp_path, scale="tiny", seeds=(0, 1), progress=False)
    with pytest.raises(ResultsConflict, match=r"seeds: 1 seed \[0\] there, 2 seeds"):
        run_suite(other_seeds, ["two"])
    other_size = Context(digits, tmp_path, scale="quick", seeds=(0,), progress=False)
    with pytest.raises(ResultsConflict, match=r"scale: tiny there, quick here.*--overwrite"):
        run_suite(other_size, ["two"])
    with pytest.raises(ResultsConflict, match=r"earlier run.*--only NAME.*--overwrite"):
        run_suite(ctx)  # every experiment again, same settings: still refused
    assert _snapshot(tmp_path) == before  # nothing written, nothing deleted
    run_suite(other_seeds, ["two"], overwrite=True)  # asked for: the old run is replaced
    exps = json.loads((tmp_path / "results.json").read_text())["experiments"]
    assert list(exps) == ["two"] and exps["two"]["run"]["seeds"] == [0, 1]
    assert not (tmp_path / "one.png").exists() and (tmp_path / "two.png").exists()
    # files without a results.json to merge into, or an unreadable one: refused too
    (tmp_path / "results.json").unlink()
    with pytest.raises(ResultsConflict, match=r"no results\.json"):
        run_suite(other_seeds, ["two"])
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ResultsConflict, match="cannot be read"):
        run_suite(other_seeds, ["two"])


def test_cli_refuses_before_training_and_names_the_setting(tmp_path: Path, monkeypatch,
                                                          digits: Dataset,
                                                          capsys: pytest.CaptureFixture) -> None:
    _with_fakes(monkeypatch, one="v1", two="v1")
    out = str(tmp_path)
    assert main(["--out", out, "--no-progress", "--seeds", "1"]) == 0
    before = _snapshot(tmp_path)
    capsys.readouterr()
    for args, words in ((["--quick", "--only", "two"],
                         ["scale: full there", "without --quick", "--overwrite"]),
                        (["--only", "two"], ["1 seed [0] there", "with --seeds 1", "--overwrite"]),
                        (["--seeds", "1"], ["--only NAME", "--overwrite", "another --out"])):
        assert main(["--out", out, "--no-progress", *args]) == 2, args
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: --out"), lines
        assert all(w in lines[0] for w in words), (args, lines[0])
        assert captured.out == ""  # refused before loading anything
    assert _snapshot(tmp_path) == before
    assert main(["--out", out, "--no-progress", "--seeds", "1", "--only", "two"]) == 0  # merges
    assert main(["--out", out, "--no-progress", "--quick", "--overwrite"]) == 0
    meta = json.loads((tmp_path / "results.json").read_text())["meta"]
    assert meta["scale"] == "quick"
    capsys.readouterr()
    assert main(["--help"]) == 0
    assert "--overwrite" in capsys.readouterr().out


def test_batch_size_panel_zooms_to_the_data() -> None:
    """noise.png's batch-size panels spanned 0-1 where the accuracies were 0.97-0.98."""
    _, ax = subplots()
    _zoom(ax, [np.array([[0.972, 0.975], [0.978, 0.981]])], valid_bar=0.55)
    lo, hi = ax.get_ylim()
    assert 0.95 < lo < 0.972 and 0.981 < hi < 1.0
    assert "below the axis" in ax.get_legend_handles_labels()[1][0]
    _, ax = subplots()
    _zoom(ax, [np.array([[0.3, 0.9]])], valid_bar=0.55)
    assert ax.get_ylim()[0] < 0.3 and "validity bar 0.55" in ax.get_legend_handles_labels()[1]


# ---------------------------------------------------------------- the suite, tiny


def _check_report_results_and_figures(out: Path, results: dict) -> None:
    assert set(results) == set(EXPERIMENTS)
    payload = json.loads((out / "results.json").read_text())
    assert set(payload["experiments"]) == set(EXPERIMENTS)
    report = (out / "report.md").read_text()
    assert "notes" not in report.lower() and "DESIGN" not in report and "± 0.000" not in report
    for name, exp in payload["experiments"].items():
        png = out / exp["figure"]
        assert png.exists() and png.stat().st_size > 2_000, name
        head = png.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        # at most three panels a row, readable at page width (noise.png had four: 2036 × 452)
        assert width <= (2 if name == "noise" else 3.6) * height, (name, width, height)
        assert f"]({exp['figure']})" in report
        assert exp["claims"], name
        for c in exp["claims"]:
            expected = ("inconclusive" if c["inconclusive"] else
                        "reproduced" if c["holds"] else "not reproduced")
            assert c["verdict"] == expected, c  # the JSON agrees with itself
            assert (c["source"] and "arXiv" in c["source"]) or "Wu & He" in c["source"], c
        nums = _finite_numbers(exp["numbers"])
        assert nums and all(math.isfinite(v) for v in nums), name
    meta = payload["meta"]
    assert meta["claims_total"] == sum(len(e["claims"]) for e in payload["experiments"].values())
    assert sum(meta["verdicts"].values()) == meta["claims_total"]


def _check_normalizes_cube_matches_the_papers(results: dict) -> None:
    n = results["normalizes"].numbers
    assert {k: n[k]["cells_measured"] for k in ("batch", "layer", "instance", "group")} == {
        "batch": 4 * 6, "layer": 6 * 6, "instance": 6, "group": 3 * 6}
    assert all(c.verdict == "reproduced" for c in results["normalizes"].claims)


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
    assert set(s) == {"2"}  # one depth at the tiny size
    for depth in s:
        for norm in ("none", "batch"):
            for k in ("loss_range", "grad_change", "beta"):
                assert np.all(np.asarray(s[depth][norm][k]) > 0)


def _check_other_experiments_report_their_tables(results: dict) -> None:
    n = results["learning_rate"].numbers
    assert len(n["rates"]) >= 3 and n["depths"] == (2, 4)
    assert {"none", "batch"} <= set(n["depth_4"])
    assert len(results["init_scale"].numbers["depth_2"]["none"]["test_acc_mean"]) == 3
    bs = results["noise"].numbers["batch_size"]
    assert set(bs["mlp"]) == {"batch", "group"}
    rs = results["running_stats"].numbers["0.9"]
    assert np.all(np.asarray(rs["test_acc_population"]) > 0.1)
    bb = results["beyond_batch_norm"].numbers
    assert bb["max_abs_cov_minus_identity"]["decorrelated"] < 1e-2
    assert bb["max_abs_cov_minus_identity"]["batch"] > 0.1
    for r in results.values():
        assert r.table.count("|") > 6


# ---------------------------------------------------------------- CLI


def test_cli_list(capsys: pytest.CaptureFixture) -> None:
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "naive" in out and "beyond_batch_norm" in out


def _bad_inputs(tmp: Path, digits: Dataset) -> dict[str, tuple[list[str], str]]:
    """name → (arguments, a word the error message must contain)."""
    x, y = digits.x_train[:200], digits.y_train[:200]

    def npz(name: str, **arrays) -> str:
        np.savez(tmp / name, **arrays)
        return str(tmp / name)

    (tmp / "corrupt.npz").write_bytes(b"this is not a zip file")
    (tmp / "damaged.npz").write_bytes(b"PK\x03\x04 and then nothing a zip needs")
    np.save(tmp / "single.npy", x)
    (tmp / "a_file").write_text("x")
    nan = x.copy()
    nan[3, 2, 2, 0] = np.nan
    return {
        "missing file": (["--data", str(tmp / "nope.npz")], "no such file"),
        "directory": (["--data", str(tmp)], "not a file"),
        "corrupt": (["--data", str(tmp / "corrupt.npz")], "not an .npz archive"),
        "damaged zip": (["--data", str(tmp / "damaged.npz")], "not a readable .npz"),
        "a text file": (["--data", "README.md"], "not an .npz archive"),
        "single array": (["--data", str(tmp / "single.npy")], "single array"),
        "wrong keys": (["--data", npz("k.npz", pixels=x, targets=y)], "expected arrays"),
        "string labels": (["--data", npz("s.npz", images=x, labels=y.astype(str))],
                          "integer class indices"),
        "fractional labels": (["--data", npz("f.npz", images=x, labels=y + 0.5)],
                              "whole numbers"),
        "NaN images": (["--data", npz("n.npz", images=nan, labels=y)], "NaN"),
        "length mismatch": (["--data", npz("m.npz", images=x, labels=y[:150])],
                            "labels"),
        "one class": (["--data", npz("o.npz", images=x, labels=np.zeros(200, int))],
                      "single class"),
        "too few": (["--data", npz("t.npz", images=x[:60], labels=y[:60])],
                    "at least 128"),
        "bad image shape": (["--data", npz("b.npz", images=x.reshape(200, -1), labels=y)],
                            "shape"),
        "out is a file": (["--out", str(tmp / "a_file")], "not a folder"),
        "out under a file": (["--out", str(tmp / "a_file" / "sub")], "cannot write"),
        "seeds 0": (["--seeds", "0"], "--seeds"),
        "seeds not a number": (["--seeds", "abc"], "invalid int"),
        "unknown experiment": (["--only", "bogus"], "bogus"),
        "unknown option": (["--fast"], "unrecognized"),
    }


def test_every_bad_input_exits_2_with_one_line(tmp_path: Path, digits: Dataset,
                                               capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    for name, (args, word) in _bad_inputs(tmp_path, digits).items():
        argv = [*args] if "--out" in args else [*args, "--out", str(out)]
        code = main([*argv, "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2, name
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), (name, err)
        assert word in lines[0] and "pickle" not in lines[0], (name, lines[0])
    assert not (out / "results.json").exists()  # nothing ran


def test_suite_at_tiny_sizes(tmp_path: Path, digits: Dataset) -> None:
    out = tmp_path / "jnorm-results"
    ctx = Context(_small(digits), out, scale="tiny", seeds=(0,), progress=False)
    results = {r.name: r for r in run_suite(ctx)}
    _check_report_results_and_figures(out, results)
    _check_normalizes_cube_matches_the_papers(results)
    _check_scale_invariance_identities_hold(results)
    _check_naive_bias_grows_real_bias_does_not(results)
    _check_smoothness_probe_measures_something(results)
    _check_other_experiments_report_their_tables(results)
    assert "1 seed" in (out / "report.md").read_text()

    # Random labels (same shapes, so the compiled programs are reused): nothing can be
    # learned, so no training claim may count.
    rng = np.random.default_rng(0)
    d = _small(digits)
    d = d._replace(y_train=rng.permutation(d.y_train), y_test=rng.permutation(d.y_test))
    ctx = Context(d, tmp_path / "random", scale="tiny", seeds=(0,), progress=False)
    for r in run_suite(ctx, ["learning_rate", "init_scale"]):
        assert r.claims and all(c.verdict == "inconclusive" for c in r.claims), r.name
