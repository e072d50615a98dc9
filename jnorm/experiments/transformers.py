"""Experiment 10: normalization in a transformer language model.

A small causal character-level transformer (learned positions, multi-head attention from
:class:`flax.linen.MultiHeadDotProductAttention`, a GELU MLP, residual connections; jnorm's
:class:`jnorm.linen.LayerNorm`, :class:`~jnorm.linen.RMSNorm` or
:class:`~jnorm.linen.DynamicTanh` as its norm layers) is trained with Adam on the text of the
Python reference manual that every Python installation ships (:mod:`pydoc_data.topics`, about
465 kB of English; one topic in five is held out for validation, so no download). Four
questions, the four claims of issue 23:

1. where the norm sits (Pre-LN vs Post-LN, with and without learning-rate warm-up, Xiong et
   al. 2020);
2. RMS norm vs layer norm (Zhang & Sennrich 2019);
3. Dynamic Tanh vs layer norm vs no normalization as depth grows, and DyT's initial alpha
   (Zhu et al. 2025);
4. QK-norm (RMS norm of queries and keys over the head dimension) at high learning rates, with
   the largest attention logit recorded at every step (Dehghani et al. 2023; Wortsman et al.
   2023).

All runs of one architecture (learning rates, warm-up or not, seeds, initial alphas) train in
lock-step in one ``jax.vmap``-ed, ``jax.jit``-compiled ``lax.scan``; the data order is drawn
from NumPy generators seeded by the run's seed.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jnorm.linen as jnn

from .common import (
    Claim,
    Comparison,
    Context,
    ExperimentResult,
    Outcome,
    compare,
    fmt_seeds,
    md_table,
    seed_note,
)
from .plotting import NORM_COLORS, save, styled, subplots

NAME = "transformers"
TITLE = "Normalization in a transformer language model: placement, RMS, Dynamic Tanh, QK-norm"

#: A difference in validation loss (nats per character) counts beyond max(FLOOR, 2 SE).
FLOOR = 0.05
#: Attention logits: a ratio of the largest logits counts beyond max(log 2, 2 SE) in log space.
LOGIT_FLOOR = math.log(2.0)
SOURCES = {
    "placement": "Xiong et al. 2020, \"On Layer Normalization in the Transformer "
                 "Architecture\" (arXiv:2002.04745), §3-4.",
    "rms": "Zhang & Sennrich 2019, \"Root Mean Square Layer Normalization\" "
           "(arXiv:1910.07467).",
    "dyt": "Zhu, Chen, He, LeCun & Liu 2025, \"Transformers without Normalization\" "
           "(arXiv:2503.10622), §5 and §7.",
    "qk": "Dehghani et al. 2023 (arXiv:2302.05442), §3.1.1; Wortsman et al. 2023, "
          "\"Small-scale proxies for large-scale Transformer training instabilities\" "
          "(arXiv:2309.14322), §3.1.",
}

COLORS = {**NORM_COLORS, "rms": "#ff7f0e", "dyt": "#9467bd", "post": "#d62728",
          "pre": "#2ca02c"}
LABELS = {"layer": "LayerNorm", "rms": "RMSNorm", "dyt": "DynamicTanh", "none": "no norm"}


# ------------------------------------------------------------------------------- the corpus


@dataclasses.dataclass(frozen=True)
class Corpus:
    """The reference manual's text as character ids, split by topic.

    ``unigram_loss`` and ``bigram_loss`` are the validation losses (nats per character) of
    character-frequency and character-pair models estimated on the training split (add-one
    smoothing): the baselines a language model must beat.
    """

    train: np.ndarray  # shape=(T,), dtype=int32
    val: np.ndarray  # shape=(V,), dtype=int32
    vocab: str  # id i is vocab[i]; the last id stands for every other character
    unigram_loss: float
    bigram_loss: float
    val_topics: tuple[str, ...]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) + 1

    def describe(self) -> str:
        return (f"pydoc_data.topics: {len(self.train):,} training and {len(self.val):,} "
                f"validation characters ({len(self.val_topics)} held-out topics), "
                f"{self.vocab_size} symbols")


@functools.cache
def load_corpus() -> Corpus:
    """Loads :mod:`pydoc_data.topics` (standard library): topics sorted by name, every fifth
    held out for validation; printable ASCII plus newline, other characters share one id."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    val_names = tuple(names[2::5])
    vocab = "\n" + "".join(chr(c) for c in range(32, 127))
    table = np.full(0x110000, len(vocab), np.int32)
    table[[ord(c) for c in vocab]] = np.arange(len(vocab), dtype=np.int32)

    def encode(keys: Sequence[str]) -> np.ndarray:
        text = "\n\n".join(topics[k] for k in keys)
        return table[np.frombuffer(text.encode("utf-32-le"), np.uint32)]

    train = encode([n for n in names if n not in val_names])
    val = encode(val_names)
    v = len(vocab) + 1
    uni = np.bincount(train, minlength=v) + 1.0
    uni_loss = float(-np.mean(np.log(uni[val] / uni.sum())))
    pairs = np.ones((v, v))
    np.add.at(pairs, (train[:-1], train[1:]), 1.0)
    probs = pairs / pairs.sum(1, keepdims=True)
    bi_loss = float(-np.mean(np.log(probs[val[:-1], val[1:]])))
    return Corpus(train, val, vocab, uni_loss, bi_loss, val_names)


# -------------------------------------------------------------------------------- the model


class QKNormAttention(nn.Module):
    """The ``attention_fn`` of :class:`flax.linen.MultiHeadDotProductAttention`: optional RMS
    norm of queries and keys over the head dimension (jnorm's :class:`~jnorm.linen.RMSNorm`,
    one learned scale per head dimension), then flax's ``dot_product_attention``. Sows the
    largest attention logit (``q·k / √d_head`` over unmasked pairs) into ``intermediates``."""

    qk_norm: bool = False

    @nn.compact
    def __call__(self, query: jax.Array, key: jax.Array, value: jax.Array,
                 mask: jax.Array | None = None, **kwargs: Any) -> jax.Array:
        if self.qk_norm:  # [batch, length, heads, head_dim]: normalize over head_dim
            query = jnn.RMSNorm(name="query_norm")(query)
            key = jnn.RMSNorm(name="key_norm")(key)
        logits = jnp.einsum("...qhd,...khd->...hqk", query, key) / math.sqrt(query.shape[-1])
        if mask is not None:
            logits = jnp.where(mask, logits, -jnp.inf)
        self.sow("intermediates", "max_logit", jnp.max(logits))
        return nn.dot_product_attention(query, key, value, mask=mask, **kwargs)


def _norm(kind: str, name: str, alpha_init: float) -> nn.Module | None:
    if kind == "layer":
        return jnn.LayerNorm(name=name)
    if kind == "rms":
        return jnn.RMSNorm(name=name)
    if kind == "dyt":
        return jnn.DynamicTanh(alpha_init=alpha_init, name=name)
    if kind == "none":
        return None
    raise ValueError(f"unknown norm {kind!r}")


def _apply(norm: nn.Module | None, x: jax.Array) -> jax.Array:
    return x if norm is None else norm(x)


class Block(nn.Module):
    """One transformer block, Pre-LN (``x + f(norm(x))``) or Post-LN (``norm(x + f(x))``)."""

    d: int
    heads: int
    norm: str
    placement: str
    qk_norm: bool
    alpha_init: float

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        attn = nn.MultiHeadDotProductAttention(
            num_heads=self.heads, qkv_features=self.d,
            attention_fn=QKNormAttention(self.qk_norm), name="attention")
        mlp = nn.Sequential([nn.Dense(4 * self.d), nn.gelu, nn.Dense(self.d)], name="mlp")
        n1 = _norm(self.norm, "norm_attention", self.alpha_init)
        n2 = _norm(self.norm, "norm_mlp", self.alpha_init)
        if self.placement == "pre":
            h = _apply(n1, x)
            x = x + attn(h, h, mask=mask)
            return x + mlp(_apply(n2, x))
        x = _apply(n1, x + attn(x, x, mask=mask))
        return _apply(n2, x + mlp(x))


class CharTransformer(nn.Module):
    """A causal character-level language model: ``[batch, length]`` ids -> logits."""

    vocab_size: int
    d: int = 128
    depth: int = 2
    heads: int = 4
    context: int = 64
    norm: str = "layer"
    placement: str = "pre"
    qk_norm: bool = False
    alpha_init: float = 0.5

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = nn.Embed(self.vocab_size, self.d, embedding_init=nn.initializers.normal(0.02))(
            tokens)
        pos = self.param("positions", nn.initializers.normal(0.02), (self.context, self.d))
        x = x + pos[None, : tokens.shape[-1]]
        mask = nn.make_causal_mask(tokens)
        for i in range(self.depth):
            x = Block(self.d, self.heads, self.norm, self.placement, self.qk_norm,
                      self.alpha_init, name=f"block_{i}")(x, mask)
        if self.placement == "pre":
            x = _apply(_norm(self.norm, "norm_final", self.alpha_init), x)
        return nn.Dense(self.vocab_size, name="head")(x)


# ----------------------------------------------------------------------------- the training


@dataclasses.dataclass
class Runs:
    """What one :func:`train_runs` call measured, per run (leading axis ``R``)."""

    configs: list[dict[str, Any]]  # per run: lr, warmup, seed, alpha_init
    step_loss: np.ndarray  # shape=(R, steps)
    max_logit: np.ndarray  # shape=(R, steps): the largest attention logit of the step
    val_loss: np.ndarray  # shape=(R,), non-finite for a run that diverged
    diverged: np.ndarray  # shape=(R,), bool
    seconds: float

    def select(self, **where: Any) -> np.ndarray:
        """Indices of the runs whose config matches ``where``, in seed order."""
        return np.array([i for i, c in enumerate(self.configs)
                         if all(c[k] == v for k, v in where.items())])


def effective_loss(val_loss: np.ndarray, corpus: Corpus) -> np.ndarray:
    """Validation loss for comparisons: a diverged run (non-finite, or no better than the
    unigram model) counts as the unigram model."""
    v = np.asarray(val_loss, np.float64)
    return np.where(np.isfinite(v), np.minimum(v, corpus.unigram_loss), corpus.unigram_loss)


def _schedule(peak: jax.Array, warmup: jax.Array, steps: int) -> optax.Schedule:
    """Linear warm-up over ``warmup`` steps (0: none), then cosine decay to 10 % of ``peak``."""
    def lr(step: jax.Array) -> jax.Array:
        s = step.astype(jnp.float32)
        ramp = jnp.where(warmup > 0, jnp.minimum(1.0, (s + 1) / jnp.maximum(warmup, 1)), 1.0)
        decay = 0.55 + 0.45 * jnp.cos(jnp.pi * jnp.minimum(s / steps, 1.0))
        return peak * ramp * decay
    return lr


@functools.cache
def _compiled(model: CharTransformer, steps: int, batch: int) -> Any:
    """The jitted, vmapped training of all runs of ``model`` (cached by model and sizes)."""
    ctx_len = model.context

    def loss_fn(params: Any, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits, inter = model.apply({"params": params}, tokens[:, :-1],
                                    mutable=["intermediates"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
        top = jnp.max(jnp.stack([jnp.max(v) for v in jax.tree.leaves(inter)]))
        return ce, top

    def one(params: Any, peak: jax.Array, warmup: jax.Array, starts: jax.Array,
            text: jax.Array) -> tuple[Any, jax.Array, jax.Array]:
        opt = optax.adam(_schedule(peak, warmup, steps), b2=0.95)
        offsets = jnp.arange(ctx_len + 1)

        def step(carry: Any, idx: jax.Array) -> tuple[Any, tuple[jax.Array, jax.Array]]:
            p, s = carry
            tokens = text[idx[:, None] + offsets[None, :]]
            (loss, top), g = jax.value_and_grad(loss_fn, has_aux=True)(p, tokens)
            updates, s = opt.update(g, s, p)
            return (optax.apply_updates(p, updates), s), (loss, top)

        (params, _), (losses, tops) = jax.lax.scan(step, (params, opt.init(params)), starts)
        return params, losses, tops

    def one_evaluated(params: Any, peak: jax.Array, warmup: jax.Array, starts: jax.Array,
                      text: jax.Array, windows: jax.Array) -> tuple[jax.Array, ...]:
        params, losses, tops = one(params, peak, warmup, starts, text)
        return losses, tops, loss_fn(params, windows)[0]

    return jax.jit(jax.vmap(one_evaluated, in_axes=(0, 0, 0, 0, None, None)))


@functools.cache
def _init(model: CharTransformer) -> Any:
    """The jitted initialisation of ``model``'s params for a batch of PRNG keys."""
    dummy = jnp.zeros((1, model.context), jnp.int32)
    return jax.jit(jax.vmap(lambda k: model.init(k, dummy)["params"]))


def train_runs(model: CharTransformer, corpus: Corpus, configs: list[dict[str, Any]], *,
               steps: int, batch: int, val_windows: int) -> Runs:
    """Trains one run per config (``lr``, ``warmup`` steps, ``seed``, ``alpha_init``) of
    ``model`` for ``steps`` Adam steps on random windows of the training text; returns the
    per-step losses and largest attention logits and the final validation loss on
    ``val_windows`` fixed windows of the validation text."""
    t0 = time.perf_counter()
    L = model.context
    base = dataclasses.replace(model, alpha_init=0.5)  # alpha_init only matters at init
    train = _compiled(base, steps, batch)
    keys: dict[float, list[int]] = {}
    for c in configs:
        keys.setdefault(c["alpha_init"], []).append(c["seed"])
    per_alpha = {a: _init(dataclasses.replace(model, alpha_init=a))(
        jnp.stack([jax.random.key(s) for s in seeds])) for a, seeds in keys.items()}
    counters = {a: 0 for a in keys}
    params = []
    for c in configs:
        a = c["alpha_init"]
        params.append(jax.tree.map(lambda v, j=counters[a]: v[j], per_alpha[a]))
        counters[a] += 1
    stacked = jax.tree.map(lambda *v: jnp.stack(v), *params)
    starts = np.stack([np.random.default_rng([c["seed"], 17]).integers(
        0, len(corpus.train) - L - 1, (steps, batch)) for c in configs]).astype(np.int32)
    n_win = min(val_windows, (len(corpus.val) - 1) // L)
    stride = (len(corpus.val) - L - 1) // max(n_win - 1, 1)
    windows = np.stack([corpus.val[i * stride: i * stride + L + 1] for i in range(n_win)])
    with jax.numpy_dtype_promotion("standard"):  # optax's Adam mixes its int count in
        losses, tops, val = train(
            stacked, jnp.asarray([c["lr"] for c in configs], jnp.float32),
            jnp.asarray([c["warmup"] for c in configs], jnp.float32), jnp.asarray(starts),
            jnp.asarray(corpus.train), jnp.asarray(windows))
    val = np.asarray(val, np.float64)
    losses = np.asarray(losses, np.float64)
    diverged = ~np.isfinite(losses).all(1) | ~np.isfinite(val) | (val >= corpus.unigram_loss)
    return Runs(list(configs), losses, np.asarray(tops, np.float64), val, diverged,
                time.perf_counter() - t0)


# ------------------------------------------------------------------------------ the verdicts


def _where(key: Any) -> str:
    return f"at {key}: " if isinstance(key, str) else f"at η = {key:g}: "


def _labelled(cmps: dict[Any, Comparison], rule: str) -> list[Outcome]:
    """Each comparison's outcome under ``rule`` (a :class:`Comparison` method name), with the
    setting named in its undecided reason."""
    out = []
    for key, c in cmps.items():
        o = getattr(c, rule)()
        out.append(Outcome(o.holds, o.undecided and _where(key) + o.undecided))
    return out


def beats_verdict(cmps: dict[Any, Comparison]) -> Outcome:
    """A claim "a is better than b" (``compare(b, a)`` positive) at some setting (the keys:
    learning rates, or labels): :meth:`Comparison.beats` at each, combined with
    :meth:`Outcome.any_of` (shown at one setting, refuted at all, else undecided)."""
    return Outcome.any_of(*_labelled(cmps, "beats"))


def agrees_verdict(cmps: dict[Any, Comparison]) -> Outcome:
    """A claim "a matches b" at every setting: :meth:`Comparison.agrees` at each, combined with
    :meth:`Outcome.all_of`."""
    return Outcome.all_of(*_labelled(cmps, "agrees"))


def _gaps(cmps: dict[float, Comparison]) -> str:
    """Every setting's difference and margin, for the measured text."""
    return "; ".join(f"η = {k:g}: {c.describe()}" for k, c in cmps.items())


def _claim(ctx_valid: tuple[bool, str], claim: str, criterion: str, measured: str,
           verdict: Outcome, source: str) -> Claim:
    holds, undecided = verdict
    c = Claim(claim=claim, criterion=criterion, measured=measured, holds=holds, source=source,
              inconclusive=undecided)
    learned, why = ctx_valid
    if not learned:
        c.inconclusive = why
    return c


# ------------------------------------------------------------------------------- the sweep


def sweep_config(ctx: Context) -> dict[str, Any]:
    """Sizes for the context's scale."""
    return {
        "d": ctx.pick(16, 48, 64), "heads": ctx.pick(2, 4, 4),
        "context": ctx.pick(16, 32, 48), "batch": ctx.pick(4, 16, 16),
        "steps": ctx.pick(10, 200, 300), "val_windows": ctx.pick(8, 64, 128),
        "placement_depth": ctx.pick(1, 1, 4),  # the placement and QK-norm sweeps
        "depths": ctx.pick((1, 2), (1, 2), (2, 4)),  # layer norm and no norm
        "norm_depths": ctx.pick((1,), (1,), (2, 4)),  # RMS norm and Dynamic Tanh
        "rates": ctx.pick((1e-3, 1e-2), (3e-3, 1e-2, 3e-2), (3e-3, 1e-2, 3e-2)),
        "base_rate": ctx.pick(1e-2, 1e-2, 1e-2),
        "qk_rates": ctx.pick((1e-2,), (3e-2, 1e-1), (3e-2, 1e-1)),
        "alphas": ctx.pick((0.5, 2.0), (0.5, 4.0), (0.1, 0.5, 2.0)),
    }


def _losses(runs: Runs, corpus: Corpus, **where: Any) -> np.ndarray:
    return effective_loss(runs.val_loss[runs.select(**where)], corpus)


def _div(runs: Runs, **where: Any) -> float:
    return float(runs.diverged[runs.select(**where)].mean())


@styled
def run(ctx: Context) -> ExperimentResult:
    """Runs experiment 10 (``ctx.data`` is not used: the corpus is the reference manual)."""
    t0 = time.perf_counter()
    corpus = load_corpus()
    cfg = sweep_config(ctx)
    seeds = ctx.seeds
    steps, warm = cfg["steps"], cfg["steps"] // 5
    d1, d2 = cfg["depths"]
    pd = cfg["placement_depth"]

    def model(**kw: Any) -> CharTransformer:
        base = {"vocab_size": corpus.vocab_size, "d": cfg["d"], "heads": cfg["heads"],
                "context": cfg["context"], "depth": pd}
        return CharTransformer(**{**base, **kw})

    def runs(m: CharTransformer, schedules: Sequence[tuple[float, int]],
             alphas: Sequence[float] = (0.5,), what: str = "") -> Runs:
        configs = [{"lr": r, "warmup": w, "seed": s, "alpha_init": a}
                   for r, w in schedules for a in alphas for s in seeds]
        if ctx.progress:
            print(f"{NAME}: {what}: {len(configs)} runs of {steps} steps", flush=True)
        return train_runs(m, corpus, configs, steps=steps, batch=cfg["batch"],
                          val_windows=cfg["val_windows"])

    rates, base_rate = cfg["rates"], cfg["base_rate"]
    # 1. placement x learning rate x warm-up (the QK-norm sweep's rates ride along on Pre-LN)
    qk_rates = cfg["qk_rates"]
    grid = [(x, w) for x in rates for w in (0, warm)]
    extra = [(x, warm) for x in qk_rates if x not in rates]
    if base_rate not in rates:
        extra.append((base_rate, warm))
    pre = runs(model(placement="pre"), grid + extra, what=f"Pre-LN, depth {pd}")
    post = runs(model(placement="post"), grid, what=f"Post-LN, depth {pd}")
    # 2-3. norm x depth at the base rate with warm-up; DyT's initial alpha at depth d1
    by_norm: dict[tuple[str, int], Runs] = {("layer", pd): pre}
    n1 = cfg["norm_depths"][0]
    for norm, depths in (("layer", cfg["depths"]), ("rms", cfg["norm_depths"]),
                         ("dyt", cfg["norm_depths"]), ("none", cfg["depths"])):
        for depth in depths:
            if (norm, depth) in by_norm:
                continue
            alphas = cfg["alphas"] if (norm == "dyt" and depth == n1) else (0.5,)
            by_norm[(norm, depth)] = runs(model(norm=norm, depth=depth), [(base_rate, warm)],
                                          alphas, what=f"{LABELS[norm]}, depth {depth}")
    # 4. QK-norm at high rates (with warm-up, as in Wortsman et al.)
    qk = runs(model(qk_norm=True), [(x, warm) for x in qk_rates], what="Pre-LN + QK-norm")

    def loss(r: Runs, **w: Any) -> np.ndarray:
        return _losses(r, corpus, **{"alpha_init": 0.5, **w})

    def show(r: Runs, **w: Any) -> str:
        """Seed mean ± std of the validation loss, saying how many seeds diverged."""
        w = {"alpha_init": 0.5, **w}
        v, dv = loss(r, **w), _div(r, **w)
        if dv == 1.0:
            return f"diverged ({len(v)} of {len(v)} seeds)"
        return fmt_seeds(v) + (f" ({dv:.0%} of seeds diverged)" if dv > 0 else "")

    def cell(r: Runs, **w: Any) -> str:
        w = {"alpha_init": 0.5, **w}
        if _div(r, **w) == 1.0:
            return "diverged"
        return fmt_seeds(loss(r, **w), 3) + ("†" if _div(r, **w) > 0 else "")

    everything = [pre, post, qk, *by_norm.values()]
    best = min(float(np.mean(effective_loss(r.val_loss[r.select(**c)], corpus)))
               for r in everything for c in
               [{k: v for k, v in cc.items() if k != "seed"} for cc in r.configs])
    bar = corpus.bigram_loss
    learned = (best < bar, f"the best run's validation loss {best:.3f} is not below the "
               f"character-pair (bigram) model's {bar:.3f}: nothing beyond pair counts was "
               "learned to compare")
    numbers: dict[str, Any] = {
        "corpus": corpus.describe(), "unigram_loss": corpus.unigram_loss,
        "bigram_loss": bar, "best_val_loss": best, "floor": FLOOR,
        "logit_floor": LOGIT_FLOOR, "steps": steps, "warmup_steps": warm, "seeds": seeds,
        **{k: v for k, v in cfg.items()},
    }
    claims: list[Claim] = []
    rows: list[list[Any]] = []

    # --- claim 1: Pre-LN vs Post-LN without warm-up; claim 2: Post-LN needs warm-up
    placement: dict[str, Any] = {}
    for name, r in (("pre", pre), ("post", post)):
        for w in (0, warm):
            key = f"{name}_{'warmup' if w else 'no_warmup'}"
            placement[key] = {
                "val_loss": [loss(r, lr=x, warmup=w).tolist() for x in rates],
                "diverged": [_div(r, lr=x, warmup=w) for x in rates]}
            rows.append([f"{'Pre' if name == 'pre' else 'Post'}-LN", pd,
                         "yes" if w else "no"] + [cell(r, lr=x, warmup=w) for x in rates])
    numbers["placement"] = placement
    cmp1 = {x: compare(loss(post, lr=x, warmup=0), loss(pre, lr=x, warmup=0), FLOOR)
            for x in rates}
    best1 = max(cmp1, key=lambda x: cmp1[x].diff)
    claims.append(_claim(
        learned, "Without warm-up, Pre-LN transformers train at learning rates where Post-LN "
        "ones fail or train worse.",
        f"without warm-up, at some learning rate of the sweep, Post-LN's validation loss "
        f"exceeds Pre-LN's by more than max({FLOOR:g}, 2 SE) nats; refuted if at every rate "
        f"Post-LN − Pre-LN + 2 SE ≤ {FLOOR:g}",
        f"largest gap at η = {best1:g}: Post-LN {show(post, lr=best1, warmup=0)}, "
        f"Pre-LN {show(pre, lr=best1, warmup=0)}. Post-LN − Pre-LN by rate: {_gaps(cmp1)}",
        beats_verdict(cmp1), SOURCES["placement"]))
    cmp2 = {x: compare(loss(post, lr=x, warmup=0), loss(post, lr=x, warmup=warm), FLOOR)
            for x in rates}
    best2 = max(cmp2, key=lambda x: cmp2[x].diff)
    claims.append(_claim(
        learned, "Post-LN transformers need learning-rate warm-up.",
        f"at some learning rate, Post-LN without warm-up has a validation loss above Post-LN "
        f"with {warm} warm-up steps by more than max({FLOOR:g}, 2 SE); refuted if at every "
        f"rate the difference + 2 SE ≤ {FLOOR:g}",
        f"largest gap at η = {best2:g}: without {show(post, lr=best2, warmup=0)}, "
        f"with {show(post, lr=best2, warmup=warm)}. Without − with by rate: {_gaps(cmp2)}",
        beats_verdict(cmp2), SOURCES["placement"]))
    cmp2b = {x: compare(loss(pre, lr=x, warmup=0), loss(pre, lr=x, warmup=warm), FLOOR)
             for x in rates}
    worst2b = max(cmp2b, key=lambda x: cmp2b[x].diff)
    claims.append(_claim(
        learned, "Pre-LN transformers train without warm-up: dropping it costs nothing.",
        f"at every learning rate of the sweep, Pre-LN without warm-up is at most {FLOOR:g} "
        f"nats worse than with warm-up (difference + 2 SE ≤ {FLOOR:g}); refuted if at some "
        "rate it is worse beyond the margin",
        f"largest cost at η = {worst2b:g}. Without − with by rate: {_gaps(cmp2b)}",
        Outcome.all_of(*_labelled(cmp2b, "not_greater")), SOURCES["placement"]))

    # --- claims 3-5: RMS vs LN, DyT vs LN, no norm with depth
    norms: dict[str, Any] = {}
    for (norm, depth), r in by_norm.items():
        v = loss(r, lr=base_rate, warmup=warm)
        norms[f"{norm}_depth_{depth}"] = {"val_loss": v.tolist(),
                                          "diverged": _div(r, lr=base_rate, warmup=warm,
                                                           alpha_init=0.5),
                                          "seconds": r.seconds}
    numbers["norms"] = norms

    def nl(norm: str, depth: int) -> np.ndarray:
        return loss(by_norm[(norm, depth)], lr=base_rate, warmup=warm)

    def shn(norm: str, depth: int) -> str:
        return show(by_norm[(norm, depth)], lr=base_rate, warmup=warm)

    for norm, depth in by_norm:
        rows.append([LABELS[norm] + ("" if norm != "layer" else " (Pre-LN)"), depth, "yes"]
                    + [cell(by_norm[(norm, depth)], lr=x, warmup=warm) if x == base_rate else ""
                       for x in rates])
    nds = cfg["norm_depths"]
    cmp3 = {dd: compare(nl("rms", dd), nl("layer", dd), FLOOR) for dd in nds}
    claims.append(_claim(
        learned, "RMSNorm (no mean subtraction) trains as well as LayerNorm.",
        f"at depth {' and '.join(map(str, nds))}, η = {base_rate:g} with warm-up, |RMSNorm − "
        "LayerNorm| "
        f"validation loss + 2 SE ≤ {FLOOR:g} nats; refuted if they differ beyond the margin",
        "; ".join(f"depth {dd}: RMSNorm {shn('rms', dd)}, LayerNorm {shn('layer', dd)}, "
                  f"{cmp3[dd].describe()}" for dd in cmp3),
        agrees_verdict({f"depth {k}": v for k, v in cmp3.items()}), SOURCES["rms"]))
    cmp4 = {dd: compare(nl("dyt", dd), nl("layer", dd), FLOOR) for dd in nds}
    claims.append(_claim(
        learned, "Dynamic Tanh (alpha initialised to 0.5) replaces LayerNorm at matched "
        "quality.",
        f"at depth {' and '.join(map(str, nds))}, η = {base_rate:g} with warm-up, |DyT − "
        "LayerNorm| validation loss "
        f"+ 2 SE ≤ {FLOOR:g} nats; refuted if they differ beyond the margin",
        "; ".join(f"depth {dd}: DyT {shn('dyt', dd)}, LayerNorm {shn('layer', dd)}, "
                  f"{cmp4[dd].describe()}" for dd in cmp4),
        agrees_verdict({f"depth {k}": v for k, v in cmp4.items()}), SOURCES["dyt"]))
    dyt1 = by_norm[("dyt", n1)]
    alpha_loss = {a: loss(dyt1, lr=base_rate, warmup=warm, alpha_init=a)
                  for a in cfg["alphas"]}
    numbers["dyt_alpha_init"] = {str(a): v.tolist() for a, v in alpha_loss.items()}
    a_best = min(alpha_loss, key=lambda a: alpha_loss[a].mean())
    a_worst = max(alpha_loss, key=lambda a: alpha_loss[a].mean())
    cmp5 = compare(alpha_loss[a_worst], alpha_loss[a_best], FLOOR)
    claims.append(_claim(
        learned, "Dynamic Tanh is sensitive to the initial value of alpha.",
        f"over alpha_0 in {list(cfg['alphas'])} (depth {n1}, η = {base_rate:g}, warm-up), the "
        f"worst alpha_0's validation loss exceeds the best's by more than max({FLOOR:g}, "
        f"2 SE); refuted if worst − best + 2 SE ≤ {FLOOR:g}",
        f"best alpha_0 = {a_best:g} ({show(dyt1, lr=base_rate, warmup=warm, alpha_init=a_best)})"
        f", worst alpha_0 = {a_worst:g} "
        f"({show(dyt1, lr=base_rate, warmup=warm, alpha_init=a_worst)}); {cmp5.describe()}",
        beats_verdict({f"alpha_0 = {a_worst:g} vs {a_best:g}": cmp5}), SOURCES["dyt"]))
    cmp6 = {dd: compare(nl("none", dd), nl("layer", dd), FLOOR) for dd in (d2,)}
    gap = {dd: compare(nl("none", dd), nl("layer", dd), FLOOR).diff for dd in (d1, d2)}
    claims.append(_claim(
        learned, "Without any normalization a deeper transformer trains worse (or diverges) "
        "than with LayerNorm.",
        f"at depth {d2} (η = {base_rate:g}, warm-up), no norm's validation loss exceeds "
        f"LayerNorm's by more than max({FLOOR:g}, 2 SE); refuted if no norm − LayerNorm + "
        f"2 SE ≤ {FLOOR:g}",
        f"no norm − LayerNorm: depth {d1} {gap[d1]:+.3f}, depth {d2} {gap[d2]:+.3f} nats; "
        f"at depth {d2}: {cmp6[d2].describe()}; no-norm runs diverged: depth {d1} "
        f"{_div(by_norm[('none', d1)]):.0%}, depth {d2} {_div(by_norm[('none', d2)]):.0%}",
        beats_verdict({f"depth {k}": v for k, v in cmp6.items()}), SOURCES["dyt"]))

    # --- claims 7-8: QK-norm at high learning rates
    qk_numbers: dict[str, Any] = {}
    logit_cmp, loss_cmp = {}, {}
    for x in qk_rates:
        off_i, on_i = pre.select(lr=x, warmup=warm), qk.select(lr=x, warmup=warm)
        off_top = np.log(np.nanmax(np.where(np.isfinite(pre.max_logit[off_i]),
                                            pre.max_logit[off_i], np.nan), 1))
        on_top = np.log(np.nanmax(np.where(np.isfinite(qk.max_logit[on_i]),
                                           qk.max_logit[on_i], np.nan), 1))
        logit_cmp[x] = compare(off_top, on_top, LOGIT_FLOOR)
        loss_cmp[x] = compare(loss(pre, lr=x, warmup=warm), loss(qk, lr=x, warmup=warm), FLOOR)
        qk_numbers[str(x)] = {"max_logit_off": np.exp(off_top).tolist(),
                              "max_logit_on": np.exp(on_top).tolist(),
                              "val_loss_off": loss(pre, lr=x, warmup=warm).tolist(),
                              "val_loss_on": loss(qk, lr=x, warmup=warm).tolist(),
                              "diverged_off": _div(pre, lr=x, warmup=warm),
                              "diverged_on": _div(qk, lr=x, warmup=warm)}
        rows.append([f"Pre-LN, QK-norm off / on at η = {x:g}", pd, "yes"]
                    + [""] * (len(rates) - 1)
                    + [f"{show(pre, lr=x, warmup=warm)} / "
                       f"{show(qk, lr=x, warmup=warm)}; max logit "
                       f"{np.exp(off_top).mean():.0f} / {np.exp(on_top).mean():.0f}"])
    numbers["qk_norm"] = qk_numbers
    top_x = max(qk_rates)
    claims.append(_claim(
        learned, "At high learning rates attention logits grow far larger without QK-norm "
        "than with it.",
        f"at some rate in {list(qk_rates)} (Pre-LN, warm-up), the largest attention logit "
        "seen in training without QK-norm exceeds the one with QK-norm by a factor beyond "
        f"max(2, e^(2 SE)) (log scale); refuted if at every rate log(off/on) + 2 SE ≤ log 2",
        "; ".join(f"η = {x:g}: largest logit per seed off "
                  f"{[float(f'{v:.3g}') for v in qk_numbers[str(x)]['max_logit_off']]} vs on "
                  f"{[float(f'{v:.3g}') for v in qk_numbers[str(x)]['max_logit_on']]}, "
                  f"log ratio {logit_cmp[x].describe()}" for x in qk_rates),
        beats_verdict(logit_cmp), SOURCES["qk"]))
    claims.append(_claim(
        learned, "QK-norm keeps training stable at high learning rates where attention-logit "
        "growth hurts.",
        f"at some rate in {list(qk_rates)}, the validation loss without QK-norm exceeds the "
        f"one with it by more than max({FLOOR:g}, 2 SE); refuted if at every rate off − on + "
        f"2 SE ≤ {FLOOR:g}",
        f"at η = {top_x:g}: off {show(pre, lr=top_x, warmup=warm)}, on "
        f"{show(qk, lr=top_x, warmup=warm)}. Off − on by rate: {_gaps(loss_cmp)}",
        beats_verdict(loss_cmp), SOURCES["qk"]))

    fname = _figure(ctx, corpus, cfg, pre, post, qk, by_norm, warm)
    table = md_table(["model", "depth", "warm-up"] + [f"η={x:g}" for x in rates], rows)
    method = (
        f"A causal character-level transformer LM ({corpus.describe()}; width {cfg['d']}, "
        f"{cfg['heads']} heads, MLP 4×, context {cfg['context']}, learned positions) written "
        "with flax's MultiHeadDotProductAttention and jnorm.linen's LayerNorm / RMSNorm / "
        f"DynamicTanh. Adam (β2 0.95, no weight decay, no clipping), batch {cfg['batch']}, "
        f"{steps} steps, cosine decay to 10 % of the peak rate, with {warm} linear warm-up "
        "steps or none. Pre-LN: x + f(norm(x)) and a final norm; Post-LN: norm(x + f(x)). "
        "QK-norm: jnorm.linen.RMSNorm over the head dimension of queries and keys inside "
        "flax's attention (docs/qk_norm.md); the largest attention logit q·k/√d of every step "
        f"is recorded. Cells: validation loss (nats per character, {seed_note(ctx)}) on "
        f"{cfg['val_windows']} fixed windows of held-out topics; † marks a rate where at "
        "least one seed diverged (non-finite loss, or validation loss no better than the "
        f"unigram model's {corpus.unigram_loss:.3f}); a diverged run counts as the unigram "
        f"model in comparisons. Validity guard: the best run must beat the character-pair "
        f"model ({bar:.3f} nats), else every verdict is inconclusive. Margins: max({FLOOR:g} "
        "nats, 2 SE) for losses, max(×2, 2 SE in log space) for logits. This experiment "
        "uses its own corpus, not the image dataset of the others.")
    return ExperimentResult(NAME, TITLE, method, fname, table, claims, numbers,
                            time.perf_counter() - t0)


def _figure(ctx: Context, corpus: Corpus, cfg: dict[str, Any], pre: Runs, post: Runs,
            qk: Runs, by_norm: dict[tuple[str, int], Runs], warm: int) -> str:
    rates, base_rate, qk_rates = cfg["rates"], cfg["base_rate"], cfg["qk_rates"]
    fig, axes = subplots(2, 2, figsize=(11, 8), layout="constrained")
    ax = axes[0, 0]
    for name, r in (("pre", pre), ("post", post)):
        for w, ls in ((warm, "-"), (0, "--")):
            v = np.array([_losses(r, corpus, lr=x, warmup=w, alpha_init=0.5) for x in rates])
            div = np.array([_div(r, lr=x, warmup=w) for x in rates])
            m, s = v.mean(1), (v.std(1, ddof=1) if v.shape[1] > 1 else np.zeros(len(rates)))
            ax.errorbar(rates, m, s, color=COLORS[name], ls=ls, marker="o", capsize=2,
                        label=f"{'Pre' if name == 'pre' else 'Post'}-LN, "
                              f"{'warm-up' if w else 'no warm-up'}")
            ax.plot(np.asarray(rates)[div > 0], m[div > 0], "x", color=COLORS[name], ms=10,
                    mew=2)
    ax.plot([], [], "x", color="k", ms=8, mew=2, label="diverged (≥ 1 seed)")
    ax.axhline(corpus.bigram_loss, color="0.5", ls=":", lw=1,
               label=f"bigram model {corpus.bigram_loss:.2f}")
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate (Adam)")
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_title("Norm placement × learning rate × warm-up")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    depths = sorted({dd for _, dd in by_norm})
    for norm in ("layer", "rms", "dyt", "none"):
        dds = [dd for dd in depths if (norm, dd) in by_norm]
        v = [_losses(by_norm[(norm, dd)], corpus, lr=base_rate, warmup=warm, alpha_init=0.5)
             for dd in dds]
        m = np.array([x.mean() for x in v])
        s = np.array([x.std(ddof=1) if len(x) > 1 else 0.0 for x in v])
        ax.errorbar(dds, m, s, color=COLORS[norm], marker="o", capsize=2,
                    label=LABELS[norm])
    ax.axhline(corpus.bigram_loss, color="0.5", ls=":", lw=1)
    ax.set_xticks(depths)
    ax.set_xlabel("blocks")
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_title(f"Norm layer × depth (Pre-LN, η = {base_rate:g}, warm-up)")
    ax.legend(fontsize=7)
    ax = axes[1, 0]
    for (norm, dd), r in by_norm.items():
        idx = r.select(lr=base_rate, warmup=warm, alpha_init=0.5)
        curve = _smooth(r.step_loss[idx].mean(0))
        ax.plot(curve, color=COLORS[norm], ls="-" if dd == depths[0] else "--", lw=1.2,
                label=f"{LABELS[norm]}, {dd} blocks")
    ax.set_ylim(top=min(ax.get_ylim()[1], corpus.unigram_loss + 1.0))
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (smoothed, seed mean)")
    ax.set_title("Training curves")
    ax.legend(fontsize=7, ncol=2)
    ax = axes[1, 1]
    shades = np.linspace(0.45, 1.0, len(qk_rates))
    for x, shade in zip(qk_rates, shades, strict=True):
        for r, on in ((pre, False), (qk, True)):
            idx = r.select(lr=x, warmup=warm)
            ax.plot(np.nanmax(r.max_logit[idx], 0), color=COLORS["post" if not on else "pre"],
                    alpha=float(shade), lw=1.2,
                    label=f"QK-norm {'on' if on else 'off'}, η = {x:g}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("largest attention logit (max over seeds)")
    ax.set_title("Attention-logit growth at high learning rates")
    ax.legend(fontsize=7)
    fig.suptitle(f"Character-level transformer on the Python reference manual "
                 f"({seed_note(ctx)})")
    return save(fig, ctx.out, NAME, dpi=ctx.dpi)


def _smooth(v: np.ndarray, k: int = 10) -> np.ndarray:
    v = np.where(np.isfinite(v), v, np.nan)
    k = max(1, min(k, len(v) // 5 or 1))
    return np.convolve(np.nan_to_num(v, nan=np.nanmax(v) if np.isfinite(v).any() else 0.0),
                       np.ones(k) / k, mode="valid")
