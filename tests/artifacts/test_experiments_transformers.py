"""The transformer experiment (``jnorm.experiments.transformers``) at the ``tiny`` size: the
corpus split and baselines, the model's causality and variants, divergence detection, and the
verdicts recomputed from the numbers the run reports."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnorm.experiments import EXPERIMENTS, Context
from jnorm.experiments import transformers as T
from jnorm.experiments.common import compare
from jnorm.experiments.data import Dataset


def _no_images() -> Dataset:  # the experiment reads its own corpus, not ctx.data
    x = np.zeros((4, 2, 2, 1), np.float32)
    return Dataset(x, np.arange(4) % 2, x, np.arange(4) % 2, "unused")


def test_registered_with_the_runner():
    assert EXPERIMENTS["transformers"] is T


def test_corpus_split_by_topic_and_its_baselines():
    from pydoc_data.topics import topics

    c = T.load_corpus()
    assert len(c.val_topics) == len(range(2, len(topics), 5))
    assert 0.15 < len(c.val) / (len(c.train) + len(c.val)) < 0.35
    assert c.train.min() >= 0 and c.train.max() < c.vocab_size
    # counting pairs beats counting characters, which beats guessing uniformly
    assert c.bigram_loss < c.unigram_loss < math.log(c.vocab_size)
    first = topics[c.val_topics[0]][:200]
    ids = [c.vocab.index(ch) if ch in c.vocab else len(c.vocab) for ch in first]
    np.testing.assert_array_equal(c.val[:200], ids)
    assert not set(c.val_topics) & {n for n in topics if topics[n][:200] == first} - {
        c.val_topics[0]}


@pytest.mark.parametrize("kw", [{"placement": "pre"}, {"placement": "post"},
                                {"norm": "rms"}, {"norm": "dyt"}, {"norm": "none"},
                                {"qk_norm": True}])
def test_model_is_causal_and_builds_each_variant(kw):
    m = T.CharTransformer(T.load_corpus().vocab_size, d=16, depth=2, heads=2, context=12,
                          **kw)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 90, (2, 12)))
    params = m.init(jax.random.key(0), tokens)["params"]
    y = m.apply({"params": params}, tokens)
    y2 = m.apply({"params": params}, tokens.at[:, 7].set(3))
    np.testing.assert_array_equal(y[:, :7], y2[:, :7])  # the future cannot leak back
    assert not np.allclose(y[:, 7:], y2[:, 7:])
    names = str(jax.tree_util.tree_structure(params))
    if kw.get("norm") == "dyt":
        assert "alpha" in names
    if kw.get("qk_norm"):
        assert "query_norm" in names and "key_norm" in names
    if kw.get("norm") == "none":
        assert "norm" not in names


def test_training_learns_records_logits_and_detects_divergence():
    c = T.load_corpus()
    m = T.CharTransformer(c.vocab_size, d=16, depth=1, heads=2, context=16)
    configs = [{"lr": lr, "warmup": 0, "seed": 0, "alpha_init": 0.5} for lr in (1e-2, 1e4)]
    r = T.train_runs(m, c, configs, steps=150, batch=16, val_windows=16)
    assert r.step_loss.shape == (2, 150) and r.max_logit.shape == (2, 150)
    assert r.step_loss[0, -5:].mean() < r.step_loss[0, :5].mean() - 0.3  # it learns
    assert np.isfinite(r.val_loss[0]) and not r.diverged[0]
    assert r.diverged[1]  # a rate of 10^4 blows up
    eff = T.effective_loss(r.val_loss, c)
    assert eff[1] == pytest.approx(c.unigram_loss) and eff[0] <= c.unigram_loss
    assert np.all(r.max_logit[0] > 0)


def test_symmetric_verdict_rules():
    better, same = [1.0, 1.02, 0.98], [1.3, 1.31, 1.29]
    assert T.beats_verdict({0: compare(same, better, 0.05)}) == (True, None)  # shown
    assert T.beats_verdict({0: compare(better, same, 0.05)}) == (False, None)  # refuted
    holds, why = T.beats_verdict({0: compare([1.0, 1.2, 0.8], [1.0, 1.01, 0.99], 0.05)})
    assert not holds and "undecided" in why
    assert T.agrees_verdict({0: compare(better, [1.01, 1.0, 1.0], 0.05)}) == (True, None)
    assert T.agrees_verdict({0: compare(better, same, 0.05)}) == (False, None)
    holds, why = T.agrees_verdict({0: compare([1.0, 1.2, 0.8], [1.0, 1.01, 0.99], 0.05)})
    assert not holds and "undecided" in why


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> dict:
    """The experiment at the tiny size twice: with the real validity bar, and with the bar
    lifted (so that the verdicts come from the comparisons, not from the guard)."""
    out: dict = {}
    real = T.load_corpus()
    ctx = Context(_no_images(), tmp_path_factory.mktemp("tfm"), scale="tiny", seeds=(0, 1),
                  progress=False)
    out["guarded"] = T.run(ctx)
    out["out"] = ctx.out
    lifted = dataclasses.replace(real, bigram_loss=math.inf)
    orig = T.load_corpus
    T.load_corpus = lambda: lifted  # type: ignore[assignment]
    try:
        out["lifted"] = T.run(dataclasses.replace(ctx, out=ctx.out / "lifted"))
    finally:
        T.load_corpus = orig  # type: ignore[assignment]
    return out


def test_tiny_run_writes_figure_table_and_sourced_claims(tiny_runs):
    r = tiny_runs["guarded"]
    assert len(r.claims) == 9
    assert all("arXiv" in c.source for c in r.claims)
    png = Path(tiny_runs["out"]) / r.figure
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 2_000
    assert r.table.count("\n") >= 10 and "± 0.000" not in r.table
    # ten steps teach nothing beyond pair counts: every verdict is held back by the guard
    assert all(c.verdict == "inconclusive" and "bigram" in c.inconclusive for c in r.claims)


def test_verdicts_follow_from_the_reported_numbers(tiny_runs):
    r = tiny_runs["lifted"]
    n = r.numbers
    assert not any(c.inconclusive and "bigram" in c.inconclusive for c in r.claims)
    qk = n["qk_norm"]
    cmps = {x: compare(v["val_loss_off"], v["val_loss_on"], T.FLOOR) for x, v in qk.items()}
    assert r.claims[8].holds == T.beats_verdict(cmps)[0]
    logits = {x: compare(np.log(v["max_logit_off"]), np.log(v["max_logit_on"]),
                         T.LOGIT_FLOOR) for x, v in qk.items()}
    assert r.claims[7].holds == T.beats_verdict(logits)[0]
    pl = n["placement"]
    cmp1 = {i: compare(pl["post_no_warmup"]["val_loss"][i], pl["pre_no_warmup"]["val_loss"][i],
                       T.FLOOR) for i in range(len(n["rates"]))}
    assert r.claims[0].holds == T.beats_verdict(cmp1)[0]
    d = n["norms"]
    depth = n["norm_depths"][0]
    rms = compare(d[f"rms_depth_{depth}"]["val_loss"], d[f"layer_depth_{depth}"]["val_loss"],
                  T.FLOOR)
    assert r.claims[3].holds == T.agrees_verdict({0: rms})[0]
    for c in r.claims:  # the measured text quotes the comparison it decided on
        assert "difference" in c.measured or "max logit" in c.measured
