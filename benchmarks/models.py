"""``python -m benchmarks.models``: whole training steps with flax's norm layers or jnorm's.

A user swaps ``flax.linen.LayerNorm`` for ``jnorm.linen.LayerNorm`` and pays what the layer
costs *inside their model*, where XLA fuses it (or fails to) with the convolutions, dots and
activations around it. This benchmark measures that: three small models, each written once
for :mod:`flax.linen` and once for :mod:`flax.nnx` with the normalization class as the only
switch, trained by one whole step (``value_and_grad`` of the loss, an optax SGD-with-momentum
update, batch statistics written back), jitted with the state donated and warmed up:

* ``resnet_bn`` / ``resnet_gn``: a ResNet-18-style CNN (7x7 stem, max pool, four stages of
  two basic blocks, 64-512 channels) on 32 x 64 x 64 x 3 images, with ``BatchNorm`` or
  ``GroupNorm(32)``;
* ``transformer_ln`` / ``transformer_rms``: a pre-LN transformer, 4 blocks, d = 512, 8 heads,
  causal attention and a 4x GELU MLP, on 8 x 256 tokens, with ``LayerNorm`` or ``RMSNorm``;
* ``unet_gn``: a diffusion-style UNet stage: residual blocks of ``GroupNorm(32)`` + SiLU +
  3x3 convolution with a sinusoidal time embedding added, 128 then (after a strided
  convolution) 256 channels, on 8 x 32 x 32 x 128.

Three implementations of the norm are timed interleaved round-robin in one process
(:func:`benchmarks.harness.time_round_robin`): ``flax`` (flax's default, ``use_fast_variance=
True``), ``flax_2pass`` (``use_fast_variance=False``) and ``jnorm``; and a fourth, ``none``,
the same model with every norm layer returning its input. The step without norms is the
baseline that shows what the norm layers cost inside the step (``norm_ms``: a norm's step
time minus it) -- a few percent of a step, which the ratio of whole steps alone hides in its
noise. Each is compiled ``--copies`` times (default 3), each copy with its own state, all
timed interleaved: the same program compiled twice runs a few percent apart on CPU (up to
7% here; the cause is not established), more than the norms' share of many steps. Reported
per model and framework: the median over copies of each copy's minimum step time (minima,
because on a shared machine noise only ever adds time), the median of all steps, the ratio to flax's
default (``vs_flax``), the norm layers' cost and its ratio to flax default's
(``norm_vs_flax``), the spread of the copies' minima (the noise floor of every ratio) and
the temporary memory of the compiled step (``compiled.memory_analysis().temp_size_in_bytes``).
With ``--profile N`` (default 3, XLA:CPU) it also traces N steps of every copy and splits
their thunks' time into matrix products and the rest (:mod:`benchmarks.thunks`): ``work_ms``,
the rest minus the no-norm model's, is the norm layers' own work, free of the convolutions'
noise, and ``work_vs_flax`` that over flax default's (:func:`summarize_thunks`).

Options: ``--quick`` (tiny sizes, a few rounds, one copy, one traced step: seconds, for
tests), ``--models a,b``, ``--frameworks linen,nnx``, ``--rounds``, ``--warmup``,
``--copies``, ``--profile``, ``--json``.
On a CPU run it with tcmalloc like :mod:`benchmarks.bench`. Public API only
(``tests/artifacts/test_models_bench.py`` checks).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks.harness import IMPLS as _HARNESS_IMPLS
from benchmarks.harness import Entry, allocator, compile_program, time_round_robin
from benchmarks.thunks import profile_round_robin

__all__ = ["FRAMEWORKS", "IMPLS", "MODELS", "compiled_steps", "format_table", "main",
           "norm_class", "run", "summarize", "summarize_thunks"]

FRAMEWORKS: tuple[str, ...] = ("linen", "nnx")
#: The norms each model is timed with: :data:`benchmarks.harness.IMPLS`, then ``none`` (the
#: same model with the norm layers left out), the baseline every norm's cost is measured from.
IMPLS: tuple[str, ...] = (*_HARNESS_IMPLS, "none")
_CLASS = {"batch": "BatchNorm", "group": "GroupNorm", "layer": "LayerNorm", "rms": "RMSNorm"}
# What each model passes to its norm class (the same for flax's and jnorm's).
_KWARGS: dict[str, dict[str, Any]] = {
    "batch": {"use_running_average": False}, "group": {"num_groups": 32}, "layer": {}, "rms": {},
}


def norm_class(framework: str, impl: str, kind: str) -> Callable[..., Any]:
    """The norm class a model is built with: flax's or jnorm's, the only switch (``none``: a
    layer that returns its input, so the model runs without normalization)."""
    if impl == "none":
        return _no_norm(framework)
    if impl == "jnorm":
        import jnorm.linen
        import jnorm.nnx

        module = jnorm.linen if framework == "linen" else jnorm.nnx
    else:
        import flax.linen
        import flax.nnx

        module = flax.linen if framework == "linen" else flax.nnx
    cls = getattr(module, _CLASS[kind])
    kwargs = dict(_KWARGS[kind])
    if impl == "flax_2pass":
        kwargs["use_fast_variance"] = False
    return functools.partial(cls, **kwargs)


def _no_norm(framework: str) -> Callable[..., Any]:
    """A class built like the norm classes (``cls()`` in linen, ``cls(features, rngs=...)`` in
    nnx) whose layers return their input: the model without normalization."""
    if framework == "linen":
        import flax.linen as nn

        class NoNorm(nn.Module):
            def __call__(self, x: jax.Array) -> jax.Array:
                return x

        return NoNorm
    from flax import nnx

    class NoNormNNX(nnx.Module):
        def __init__(self, num_features: int, *, rngs: nnx.Rngs) -> None:
            del num_features, rngs

        def __call__(self, x: jax.Array) -> jax.Array:
            return x

    return NoNormNNX


# ----------------------------------------------------------------------------- linen models


def _linen_models() -> dict[str, Any]:
    import flax.linen as nn

    class Block(nn.Module):
        norm: Callable[..., Any]
        features: int
        strides: int

        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            conv = functools.partial(nn.Conv, self.features, padding="SAME", use_bias=False)
            y = nn.relu(self.norm()(conv((3, 3), self.strides)(x)))
            y = self.norm()(conv((3, 3))(y))
            if x.shape != y.shape:
                x = self.norm()(conv((1, 1), self.strides)(x))
            return nn.relu(x + y)

    class ResNet(nn.Module):
        norm: Callable[..., Any]
        widths: tuple[int, ...]
        blocks: int
        classes: int = 10

        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            x = nn.Conv(self.widths[0], (7, 7), 2, padding="SAME", use_bias=False)(x)
            x = nn.max_pool(nn.relu(self.norm()(x)), (3, 3), (2, 2), padding="SAME")
            for i, w in enumerate(self.widths):
                for j in range(self.blocks):
                    x = Block(self.norm, w, 2 if i and not j else 1)(x)
            return nn.Dense(self.classes)(x.mean((1, 2)))

    class Transformer(nn.Module):
        norm: Callable[..., Any]
        blocks: int
        heads: int

        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            b, t, d = x.shape
            for _ in range(self.blocks):
                qkv = nn.Dense(3 * d, use_bias=False)(self.norm()(x))
                q, k, v = jnp.split(qkv.reshape(b, t, 3 * self.heads, d // self.heads), 3, 2)
                att = jax.nn.dot_product_attention(q, k, v, is_causal=True)
                x = x + nn.Dense(d, use_bias=False)(att.reshape(b, t, d))
                h = nn.gelu(nn.Dense(4 * d)(self.norm()(x)))
                x = x + nn.Dense(d)(h)
            return self.norm()(x)

    class ResBlock(nn.Module):
        norm: Callable[..., Any]
        features: int

        @nn.compact
        def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
            h = nn.Conv(self.features, (3, 3), padding="SAME")(nn.silu(self.norm()(x)))
            h = h + nn.Dense(self.features)(nn.silu(temb))[:, None, None, :]
            h = nn.Conv(self.features, (3, 3), padding="SAME")(nn.silu(self.norm()(h)))
            if x.shape[-1] != self.features:
                x = nn.Conv(self.features, (1, 1))(x)
            return x + h

    class UNetStage(nn.Module):
        norm: Callable[..., Any]
        widths: tuple[int, ...]
        blocks: int

        @nn.compact
        def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
            dim = x.shape[-1]
            temb = nn.Dense(4 * dim)(nn.silu(nn.Dense(4 * dim)(_timestep_embedding(t, dim))))
            for i, w in enumerate(self.widths):
                if i:
                    x = nn.Conv(x.shape[-1], (3, 3), 2, padding="SAME")(x)
                for _ in range(self.blocks):
                    x = ResBlock(self.norm, w)(x, temb)
            return x

    return {"resnet": ResNet, "transformer": Transformer, "unet": UNetStage}


# ----------------------------------------------------------------------------- nnx models


def _nnx_models() -> dict[str, Any]:
    from flax import nnx

    class Block(nnx.Module):
        def __init__(self, norm: Callable[..., Any], cin: int, cout: int, strides: int, *,
                     rngs: nnx.Rngs) -> None:
            conv = functools.partial(nnx.Conv, padding="SAME", use_bias=False, rngs=rngs)
            self.conv1, self.norm1 = conv(cin, cout, (3, 3), strides), norm(cout, rngs=rngs)
            self.conv2, self.norm2 = conv(cout, cout, (3, 3)), norm(cout, rngs=rngs)
            self.proj = nnx.data(None)
            if strides != 1 or cin != cout:
                self.proj = nnx.data(
                    nnx.Sequential(conv(cin, cout, (1, 1), strides), norm(cout, rngs=rngs)))

        def __call__(self, x: jax.Array) -> jax.Array:
            y = nnx.relu(self.norm1(self.conv1(x)))
            y = self.norm2(self.conv2(y))
            return nnx.relu((x if self.proj is None else self.proj(x)) + y)

    class ResNet(nnx.Module):
        def __init__(self, norm: Callable[..., Any], widths: tuple[int, ...], blocks: int,
                     cin: int, classes: int = 10, *, rngs: nnx.Rngs) -> None:
            self.stem = nnx.Conv(cin, widths[0], (7, 7), 2, padding="SAME", use_bias=False,
                                 rngs=rngs)
            self.stem_norm = norm(widths[0], rngs=rngs)
            layers, c = [], widths[0]
            for i, w in enumerate(widths):
                for j in range(blocks):
                    layers.append(Block(norm, c, w, 2 if i and not j else 1, rngs=rngs))
                    c = w
            self.layers = nnx.List(layers)
            self.head = nnx.Linear(c, classes, rngs=rngs)

        def __call__(self, x: jax.Array) -> jax.Array:
            x = nnx.relu(self.stem_norm(self.stem(x)))
            x = nnx.max_pool(x, (3, 3), (2, 2), padding="SAME")
            for layer in self.layers:
                x = layer(x)
            return self.head(x.mean((1, 2)))

    class TBlock(nnx.Module):
        def __init__(self, norm: Callable[..., Any], d: int, heads: int, *,
                     rngs: nnx.Rngs) -> None:
            self.heads = heads
            self.norm1, self.norm2 = norm(d, rngs=rngs), norm(d, rngs=rngs)
            self.qkv = nnx.Linear(d, 3 * d, use_bias=False, rngs=rngs)
            self.out = nnx.Linear(d, d, use_bias=False, rngs=rngs)
            self.up, self.down = nnx.Linear(d, 4 * d, rngs=rngs), nnx.Linear(4 * d, d, rngs=rngs)

        def __call__(self, x: jax.Array) -> jax.Array:
            b, t, d = x.shape
            qkv = self.qkv(self.norm1(x)).reshape(b, t, 3 * self.heads, d // self.heads)
            q, k, v = jnp.split(qkv, 3, 2)
            att = jax.nn.dot_product_attention(q, k, v, is_causal=True)
            x = x + self.out(att.reshape(b, t, d))
            return x + self.down(nnx.gelu(self.up(self.norm2(x))))

    class Transformer(nnx.Module):
        def __init__(self, norm: Callable[..., Any], blocks: int, heads: int, d: int, *,
                     rngs: nnx.Rngs) -> None:
            self.blocks = nnx.List([TBlock(norm, d, heads, rngs=rngs) for _ in range(blocks)])
            self.final = norm(d, rngs=rngs)

        def __call__(self, x: jax.Array) -> jax.Array:
            for block in self.blocks:
                x = block(x)
            return self.final(x)

    class ResBlock(nnx.Module):
        def __init__(self, norm: Callable[..., Any], cin: int, cout: int, temb: int, *,
                     rngs: nnx.Rngs) -> None:
            self.norm1, self.norm2 = norm(cin, rngs=rngs), norm(cout, rngs=rngs)
            self.conv1 = nnx.Conv(cin, cout, (3, 3), padding="SAME", rngs=rngs)
            self.conv2 = nnx.Conv(cout, cout, (3, 3), padding="SAME", rngs=rngs)
            self.temb = nnx.Linear(temb, cout, rngs=rngs)
            self.skip = nnx.data(nnx.Conv(cin, cout, (1, 1), rngs=rngs) if cin != cout else None)

        def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
            h = self.conv1(nnx.silu(self.norm1(x)))
            h = h + self.temb(nnx.silu(temb))[:, None, None, :]
            h = self.conv2(nnx.silu(self.norm2(h)))
            return (x if self.skip is None else self.skip(x)) + h

    class UNetStage(nnx.Module):
        def __init__(self, norm: Callable[..., Any], widths: tuple[int, ...], blocks: int,
                     cin: int, *, rngs: nnx.Rngs) -> None:
            self.dim = cin
            self.t1 = nnx.Linear(cin, 4 * cin, rngs=rngs)
            self.t2 = nnx.Linear(4 * cin, 4 * cin, rngs=rngs)
            downs, stages, c = [], [], cin
            for i, w in enumerate(widths):
                downs.append(nnx.Conv(c, c, (3, 3), 2, padding="SAME", rngs=rngs) if i else None)
                res = []
                for _ in range(blocks):
                    res.append(ResBlock(norm, c, w, 4 * cin, rngs=rngs))
                    c = w
                stages.append(nnx.List(res))
            self.downs, self.stages = nnx.data(downs), nnx.List(stages)

        def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
            temb = self.t2(nnx.silu(self.t1(_timestep_embedding(t, self.dim))))
            for down, res in zip(self.downs, self.stages, strict=True):
                if down is not None:
                    x = down(x)
                for block in res:
                    x = block(x, temb)
            return x

    return {"resnet": ResNet, "transformer": Transformer, "unet": UNetStage}


def _timestep_embedding(t: jax.Array, dim: int) -> jax.Array:
    """Sinusoidal embedding of the diffusion time ``t`` (B,) -> (B, dim)."""
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(dim // 2, dtype=jnp.float32) / (dim // 2))
    args = t[:, None].astype(jnp.float32) * freqs[None]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


# ----------------------------------------------------------------------------- the models


@dataclasses.dataclass(frozen=True)
class _Model:
    """One benchmarked model: its architecture, norm kind and sizes (full and ``--quick``)."""

    arch: str  # "resnet", "transformer" or "unet"
    kind: str  # the norm: "batch", "group", "layer" or "rms"
    size: dict[str, Any]
    quick: dict[str, Any]


_RESNET = {"batch": 32, "hw": 64, "widths": (64, 128, 256, 512), "blocks": 2}
_RESNET_QUICK = {"batch": 2, "hw": 16, "widths": (32, 64), "blocks": 1}
_TRANSFORMER = {"batch": 8, "tokens": 256, "d": 512, "heads": 8, "blocks": 4}
_TRANSFORMER_QUICK = {"batch": 2, "tokens": 16, "d": 64, "heads": 2, "blocks": 2}
_UNET = {"batch": 8, "hw": 32, "cin": 128, "widths": (128, 256), "blocks": 2}
_UNET_QUICK = {"batch": 2, "hw": 8, "cin": 32, "widths": (32, 64), "blocks": 1}

_MODELS: dict[str, _Model] = {
    "resnet_bn": _Model("resnet", "batch", _RESNET, _RESNET_QUICK),
    "resnet_gn": _Model("resnet", "group", _RESNET, _RESNET_QUICK),
    "transformer_ln": _Model("transformer", "layer", _TRANSFORMER, _TRANSFORMER_QUICK),
    "transformer_rms": _Model("transformer", "rms", _TRANSFORMER, _TRANSFORMER_QUICK),
    "unet_gn": _Model("unet", "group", _UNET, _UNET_QUICK),
}
MODELS: tuple[str, ...] = tuple(_MODELS)


def _data(model: _Model, size: dict[str, Any]) -> tuple[tuple[jax.Array, ...], jax.Array]:
    """``(inputs, target)`` of one training batch."""
    kx, ky = jax.random.split(jax.random.key(1))
    b = size["batch"]
    if model.arch == "resnet":
        x = jax.random.normal(kx, (b, size["hw"], size["hw"], 3))
        return (x,), jax.random.randint(ky, (b,), 0, 10)
    if model.arch == "transformer":
        shape = (b, size["tokens"], size["d"])
        return (jax.random.normal(kx, shape),), jax.random.normal(ky, shape)
    x = jax.random.normal(kx, (b, size["hw"], size["hw"], size["cin"]))
    t = jnp.arange(b, dtype=jnp.float32) * 37.0
    out = (b, size["hw"] // 2 ** (len(size["widths"]) - 1),
           size["hw"] // 2 ** (len(size["widths"]) - 1), size["widths"][-1])
    return (x, t), jax.random.normal(ky, out)


def _loss(model: _Model, out: jax.Array, target: jax.Array) -> jax.Array:
    import optax

    if model.arch == "resnet":
        return optax.softmax_cross_entropy_with_integer_labels(out, target).mean()
    return jnp.mean((out - target) ** 2)


def _tx() -> Any:
    import optax

    return optax.sgd(1e-3, momentum=0.9)


def _linen_step(model: _Model, size: dict[str, Any], norm: Callable[..., Any]) -> tuple[
        Callable[..., Any], Any]:
    """``(step, state)``: ``step(state, inputs, target) -> (state, loss)``."""
    arch = _linen_models()[model.arch]
    if model.arch == "resnet":
        net = arch(norm, size["widths"], size["blocks"])
    elif model.arch == "transformer":
        net = arch(norm, size["blocks"], size["heads"])
    else:
        net = arch(norm, size["widths"], size["blocks"])
    inputs, _ = _data(model, size)
    variables = net.init(jax.random.key(0), *inputs)
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}
    tx = _tx()

    def step(state: Any, inputs: tuple[jax.Array, ...], target: jax.Array) -> Any:
        params, rest, opt_state = state

        def loss_fn(params: Any) -> tuple[jax.Array, Any]:
            out, new_rest = net.apply({"params": params, **rest}, *inputs, mutable=list(rest))
            return _loss(model, out, target), new_rest

        (loss, new_rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        import optax

        return (optax.apply_updates(params, updates), dict(new_rest), opt_state), loss

    return step, (params, rest, tx.init(params))


def _nnx_step(model: _Model, size: dict[str, Any], norm: Callable[..., Any]) -> tuple[
        Callable[..., Any], Any]:
    from flax import nnx

    arch = _nnx_models()[model.arch]
    rngs = nnx.Rngs(0)
    if model.arch == "resnet":
        net = arch(norm, size["widths"], size["blocks"], 3, rngs=rngs)
    elif model.arch == "transformer":
        net = arch(norm, size["blocks"], size["heads"], size["d"], rngs=rngs)
    else:
        net = arch(norm, size["widths"], size["blocks"], size["cin"], rngs=rngs)
    optimizer = nnx.Optimizer(net, _tx(), wrt=nnx.Param)
    graphdef, state = nnx.split((net, optimizer))

    def step(state: Any, inputs: tuple[jax.Array, ...], target: jax.Array) -> Any:
        net, optimizer = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(lambda m: _loss(model, m(*inputs), target))(net)
        optimizer.update(net, grads)
        return nnx.state((net, optimizer)), loss

    return step, state


def summarize_thunks(split: dict[str, list[tuple[float, float]]]) -> dict[str, dict[str, Any]]:
    """Per implementation, from ``split[impl]`` (one ``(matrix-product ms, other ms)`` per
    compiled copy, :func:`benchmarks.thunks.profile_round_robin`), medians over copies:

    - ``matmul_ms``: the thunks that are or fuse a convolution or a dot;
    - ``other_ms``: every other thunk: the norm layers' own work, the activations, copies;
    - ``work_ms``: ``other_ms`` minus that of ``none`` (the model without norms): the norm
      layers' work outside the matrix products, and ``work_vs_flax`` that over flax default's.

    >>> r = summarize_thunks({"flax": [(50.0, 14.0)], "jnorm": [(51.0, 12.0)],
    ...                       "none": [(52.0, 10.0)]})
    >>> r["jnorm"]["work_ms"], r["jnorm"]["work_vs_flax"]
    (2.0, 0.5)
    """
    med = {impl: (statistics.median(m for m, _ in c), statistics.median(o for _, o in c))
           for impl, c in split.items()}
    base = med["none"][1] if "none" in med else None
    flax_work = None if base is None or "flax" not in med else med["flax"][1] - base
    out = {}
    for impl, (mat, other) in med.items():
        work = None if base is None or impl == "none" else other - base
        out[impl] = {
            "matmul_ms": mat, "other_ms": other, "work_ms": work,
            "work_vs_flax": (None if work is None or not flax_work or flax_work <= 0
                             else work / flax_work),
        }
    return out


def summarize(times: dict[str, list[list[float]]]) -> dict[str, dict[str, Any]]:
    """Per implementation, from ``times[impl]`` (one list of step times per compiled copy):

    - ``min_ms``: the median over copies of each copy's minimum (minima, because on a shared
      machine noise only adds time; the median over copies, because the same program compiled
      twice runs a few percent apart);
    - ``median_ms``: the median of every step timed;
    - ``spread``: how far apart the copies' minima are (max / min - 1), the noise floor of
      any ratio below;
    - ``vs_flax``: ``min_ms`` over flax default's;
    - ``norm_ms``: ``min_ms`` minus that of ``none`` (the model without norms): what the
      norm layers cost inside the step, and ``norm_vs_flax`` that cost over flax default's.

    >>> r = summarize({"flax": [[12.0, 13.0]], "jnorm": [[11.0, 12.0]], "none": [[8.0, 9.0]]})
    >>> r["jnorm"]["vs_flax"], r["jnorm"]["norm_ms"], r["jnorm"]["norm_vs_flax"]
    (0.9166666666666666, 3.0, 0.75)
    """
    best = {impl: statistics.median(min(c) for c in copies) for impl, copies in times.items()}
    base = best.get("none")
    flax_norm = None if base is None else best["flax"] - base
    out = {}
    for impl, copies in times.items():
        minima = [min(c) for c in copies]
        norm_ms = None if base is None or impl == "none" else best[impl] - base
        out[impl] = {
            "min_ms": best[impl],
            "median_ms": statistics.median(t for c in copies for t in c),
            "spread": max(minima) / min(minima) - 1,
            "vs_flax": best[impl] / best["flax"],
            "norm_ms": norm_ms,
            "norm_vs_flax": (None if norm_ms is None or not flax_norm or flax_norm <= 0
                             else norm_ms / flax_norm),
        }
    return out


def compiled_steps(name: str, framework: str, quick: bool, copies: int,
                   impls: Sequence[str] = IMPLS) -> list[Entry]:
    """One :class:`benchmarks.harness.Entry` per copy and implementation (copy-major): model
    `name`'s train step compiled with each norm, each copy with its own state, which every call
    feeds back (the state is donated)."""
    model = _MODELS[name]
    size = model.quick if quick else model.size
    inputs, target = _data(model, size)
    make = _linen_step if framework == "linen" else _nnx_step
    entries = []
    for _ in range(copies):
        for impl in impls:
            step, state = make(model, size, norm_class(framework, impl, model.kind))
            args = (state, inputs, target)
            compiled, temp, _ = compile_program(step, args, 0, donate_argnums=(0,))
            entries.append(Entry(impl, "step", compiled, args, temp, None,
                                 carry=lambda out, args: (out[0], *args[1:])))
    return entries


def _bench_model(name: str, framework: str, quick: bool, rounds: int, warmup: int,
                 inner: int, copies: int, profile: int) -> list[dict[str, Any]]:
    entries = compiled_steps(name, framework, quick, copies)  # timed interleaved
    time_round_robin(entries, rounds, warmup, inner)
    times: dict[str, list[list[float]]] = {impl: [] for impl in IMPLS}
    temp_mib: dict[str, float | None] = {}
    for e in entries:
        times[e.impl].append([t * 1e3 for t in e.times])
        temp_mib[e.impl] = None if e.temp_bytes is None else e.temp_bytes / 2**20
    summary = summarize(times)
    thunks: dict[str, dict[str, Any]] = {}
    if profile and jax.default_backend() == "cpu":  # thunk events are XLA:CPU's
        split: dict[str, list[tuple[float, float]]] = {impl: [] for impl in IMPLS}
        for e, result in zip(entries, profile_round_robin(entries, profile), strict=True):
            split[e.impl].append(result)
        thunks = summarize_thunks(split)
    empty = dict.fromkeys(("matmul_ms", "other_ms", "work_ms", "work_vs_flax"))
    return [{"model": name, "framework": framework, "impl": impl, **summary[impl],
             **thunks.get(impl, empty), "temp_mib": temp_mib[impl], "rounds": rounds,
             "copies": copies}
            for impl in IMPLS]


def run(models: Sequence[str] | None = None, *, frameworks: Sequence[str] = FRAMEWORKS,
        quick: bool = False, rounds: int = 10, warmup: int = 2,
        inner: int = 1, copies: int = 3, profile: int = 0) -> dict[str, Any]:
    """Runs the benchmark; returns ``{"device", "jax", "flax", "jnorm", "allocator", "rounds",
    "results"}`` with one row per model, framework and implementation. `profile` > 0 also
    traces that many interleaved steps of every copy (XLA:CPU only) and splits their thunks'
    time (:func:`summarize_thunks`)."""
    import flax

    import jnorm

    models = list(models or MODELS)
    for name in models:
        if name not in _MODELS:
            raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}.")
    for fw in frameworks:
        if fw not in FRAMEWORKS:
            raise ValueError(f"unknown framework {fw!r}; choose from {', '.join(FRAMEWORKS)}.")
    results = []
    for name in models:
        for fw in frameworks:
            results += _bench_model(name, fw, quick, rounds, warmup, inner, copies, profile)
    dev = jax.devices()[0]
    return {
        "device": f"{dev.platform}: {getattr(dev, 'device_kind', str(dev))}",
        "jax": jax.__version__, "flax": flax.__version__, "jnorm": jnorm.__version__,
        "allocator": allocator(), "rounds": rounds, "copies": copies, "quick": quick,
        "profile": profile,
        "results": results,
    }


def format_table(report: dict[str, Any]) -> str:
    """The report as a plain-text table: one line per model, framework and implementation."""
    lines = [
        f"device: {report['device']}   jax {report['jax']}   flax {report['flax']}   "
        f"jnorm {report['jnorm']}   allocator: {report['allocator']}   "
        f"rounds: {report['rounds']} (interleaved)   copies: {report['copies']}",
        "whole jitted train step (value_and_grad + optax SGD + batch statistics, donated); "
        "min: the median over the compiled copies of each copy's minimum; vs_flax: min / flax "
        "default's; norm: min - min without norms (none), what the norm layers cost in the step, "
        "and that over flax default's; spread: how far apart the copies' minima are (the noise "
        "floor); temp: temporary memory of the step",
        "thunks (XLA:CPU profile, --profile steps per copy, each thunk's median): matmul: "
        "convolutions and dots; other: every other thunk; work: other - other without norms, "
        "the norm layers' own work outside the matrix products, and that over flax default's",
        "",
    ]
    header = (f"{'model':<17}{'framework':<11}{'impl':<12}{'min ms':>10}{'median ms':>11}"
              f"{'vs_flax':>9}{'norm ms':>9}{'norm/flax':>10}{'spread':>8}{'temp MiB':>10}"
              f"{'matmul ms':>11}{'other ms':>10}{'work ms':>9}{'work/flax':>10}")
    lines += [header, "-" * len(header)]
    last = None
    for r in report["results"]:
        if last is not None and (r["model"], r["framework"]) != last:
            lines.append("")
        last = (r["model"], r["framework"])
        temp = "" if r["temp_mib"] is None else f"{r['temp_mib']:.1f}"
        norm = "" if r["norm_ms"] is None else f"{r['norm_ms']:.2f}"
        ratio = "" if r["norm_vs_flax"] is None else f"{r['norm_vs_flax']:.2f}"
        thunks = "".join(
            f"{'' if r.get(k) is None else format(r[k], f):>{w}}"
            for k, f, w in (("matmul_ms", ".1f", 11), ("other_ms", ".1f", 10),
                            ("work_ms", ".1f", 9), ("work_vs_flax", ".2f", 10)))
        lines.append(f"{r['model']:<17}{r['framework']:<11}{r['impl']:<12}{r['min_ms']:>10.2f}"
                     f"{r['median_ms']:>11.2f}{r['vs_flax']:>9.3f}{norm:>9}{ratio:>10}"
                     f"{100 * r['spread']:>7.1f}%{temp:>10}{thunks}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point of ``python -m benchmarks.models``."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.models",
        description="Whole train steps with flax's or jnorm's norm layers, interleaved.")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few rounds")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="linen, nnx or both")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--profile", type=int, default=None,
                        help="traced steps per copy whose thunks are split into matrix "
                             "products and the rest (default 3; 1 with --quick; 0: off)")
    parser.add_argument("--copies", type=int, default=None,
                        help="compiled copies of each step, timed interleaved (default 3; "
                             "1 with --quick)")
    args = parser.parse_args(argv)
    copies = args.copies if args.copies is not None else (1 if args.quick else 3)
    if copies < 1:
        parser.error(f"--copies must be at least 1, got {copies}.")
    profile = args.profile if args.profile is not None else (1 if args.quick else 3)
    if profile < 0:
        parser.error(f"--profile must be 0 or more, got {profile}.")
    report = run(
        [s for s in args.models.split(",") if s],
        frameworks=[s for s in args.frameworks.split(",") if s],
        quick=args.quick,
        rounds=args.rounds if args.rounds is not None else (2 if args.quick else 10),
        warmup=1 if args.quick else args.warmup,
        copies=copies,
        profile=profile,
    )
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

