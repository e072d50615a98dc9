r"""Inference tools for batch norm: PreciseBN population statistics and folding.

Neither computes new normalization math: population statistics are averages of the batch
statistics that jnorm's layers already compute, and folding applies :func:`jnorm.normalize` to
a kernel and a bias. ``import jnorm`` does not import flax; the linen form of
:func:`precise_batch_stats` only recognises a module when flax is already imported.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jnorm._checks import as_kernel, check_epsilon
from jnorm._normalize import normalize
from jnorm._typing import PyTree

__all__ = ["fold_batch_norm", "precise_batch_stats"]

_INT32_MAX = int(np.iinfo(np.int32).max)


def _leaf_name(path: tuple) -> str:
    if not path:
        return ""
    k = path[-1]
    for attr in ("name", "key", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _batch_size(batch: Any) -> int | None:
    leaves = jax.tree.leaves(batch)
    if not leaves or np.ndim(leaves[0]) == 0:
        return None
    return int(np.shape(leaves[0])[0])


def _is_linen_module(obj: Any) -> bool:
    linen = sys.modules.get("flax.linen")
    return linen is not None and isinstance(obj, linen.Module)


def precise_batch_stats(
    forward: Callable[[PyTree, Any], PyTree] | Any,
    stats: PyTree,
    batches: Iterable[Any],
    *,
    num_batches: int | None = None,
    **apply_kwargs: Any,
) -> PyTree:
    r"""PreciseBN (Wu & Johnson 2021, arXiv:2105.07576, Sec. 3.1): population statistics.

    The running averages a model ends training with are an EMA over batches computed by
    *changing* weights, dominated by the last ~``1 / (1 - momentum)`` of them. PreciseBN freezes
    the model, collects each batch norm's batch statistics on ``N`` batches and aggregates them
    into exact population statistics (the paper's two steps), with equal weights per batch:

    .. math::  \mu_{pop} = \frac{1}{N}\sum_i \mu_i, \qquad
               \sigma^2_{pop} = \frac{1}{N}\sum_i \big(\sigma^2_i + \mu_i^2\big) - \mu_{pop}^2

    ``sigma^2_pop`` is the variance over all ``N`` batches' values together (computed as
    ``mean(sigma^2_i) + mean((mu_i - mu_pop)^2)`` in float64), not the average of batch
    variances. Other float leaves of the statistics (e.g. a whitening matrix) are averaged.
    Batches must have equal sizes (drop the last incomplete one), as the aggregation weights
    them equally; each layer sees the features produced with the *batch* statistics of the
    layers before it, as in training (and as PreciseBN's reference implementation does).

    Two forms:

    * **functional** -- ``precise_batch_stats(forward, state, batches)`` where
      ``forward(state, batch) -> new_state`` runs the model in training mode (``training=True``
      on every :func:`jnorm.batch_norm`) and returns the updated state pytree (any structure
      holding :class:`jnorm.BatchStats`). Any ``momentum`` works.
    * **linen** -- ``precise_batch_stats(model, variables, batches, **apply_kwargs)`` with a
      ``flax.linen`` module: ``model.apply(variables, batch, mutable=["batch_stats"],
      **apply_kwargs)`` must run the batch norms in training mode (e.g. ``train=True``). A
      tuple batch is passed as positional arguments. Returns ``variables`` with new
      ``batch_stats``. Works for :class:`jnorm.linen.BatchNorm` and ``flax.linen.BatchNorm``.

    How the batch statistics are read back: a running-average update is affine in the old
    value, ``new = k old + (1 - k) b``. ``forward`` is evaluated at ``old = 0`` (counts 0)
    together with its derivative in ``old`` (``jax.jvp``), which is ``k``; so
    ``b = new / (1 - k)`` for any momentum, exactly for ``momentum=None`` and to within one
    rounding otherwise. A statistic that was never updated keeps its value. Layers that *use*
    their running statistics while training (batch renorm) see zeros during the collection.

    Args:
      forward: ``forward(state, batch) -> new_state``, or a linen module.
      stats: the state pytree, or the linen module's ``variables`` (with ``batch_stats``).
      batches: iterable of batches (model inputs).
      num_batches: use only the first ``num_batches``.
      **apply_kwargs: linen form only: extra keyword arguments of ``model.apply``.

    Returns:
      The state (functional) or variables (linen) with population statistics; counts are set
      to the number of batches.

    Examples:
      >>> import jax, jax.numpy as jnp, jnorm
      >>> data = jax.random.normal(jax.random.key(0), (4, 16, 3)) * 2.0 + 1.0  # 4 batches
      >>> fwd = lambda s, x: jnorm.batch_norm(x, s, training=True)[1]
      >>> s = jnorm.precise_batch_stats(fwd, jnorm.BatchStats.init(3), data)
      >>> flat = data.reshape(-1, 3)
      >>> bool(jnp.allclose(s.mean, flat.mean(0), atol=1e-6))
      True
      >>> bool(jnp.allclose(s.var, flat.var(0), atol=1e-5)), int(s.count)
      (True, 4)
    """
    if _is_linen_module(forward):
        model = forward
        if not isinstance(stats, Mapping) or "batch_stats" not in stats:
            raise ValueError(
                "precise_batch_stats(model, variables, ...): `variables` must be the model's "
                "variables dict with a 'batch_stats' collection (the model has no batch norm "
                "otherwise)."
            )
        variables = stats

        def linen_forward(batch_stats: Any, batch: Any) -> Any:
            args = batch if isinstance(batch, tuple) else (batch,)
            _, updates = model.apply(
                {**variables, "batch_stats": batch_stats}, *args, mutable=["batch_stats"],
                **apply_kwargs,
            )
            return updates["batch_stats"]

        new = _precise(linen_forward, variables["batch_stats"], batches, num_batches)
        return {**variables, "batch_stats": new}
    if apply_kwargs:
        raise TypeError(
            f"precise_batch_stats: keyword arguments {sorted(apply_kwargs)} are only for the linen "
            "form (a flax.linen Module as first argument); put them in `forward` instead."
        )
    if not callable(forward):
        raise TypeError(f"`forward` must be callable or a linen Module, got {type(forward)}.")
    return _precise(forward, stats, batches, num_batches)


def _precise(
    forward: Callable[[Any, Any], Any], stats: Any, batches: Iterable[Any],
    num_batches: int | None,
) -> Any:
    leaves_p, treedef = jax.tree_util.tree_flatten_with_path(stats)
    paths = [p for p, _ in leaves_p]
    leaves = [jnp.asarray(v) for _, v in leaves_p]
    is_float = [jnp.issubdtype(v.dtype, jnp.floating) for v in leaves]
    if not any(is_float):
        raise ValueError("precise_batch_stats: `stats` holds no floating-point statistics.")
    names = [_leaf_name(p) for p in paths]
    parents = [tuple(str(k) for k in p[:-1]) for p in paths]
    zeros_f = [jnp.zeros_like(v) for v, f in zip(leaves, is_float, strict=True) if f]
    ones_f = [jnp.ones_like(v) for v in zeros_f]
    zero_i = {i: jnp.zeros_like(v) for i, (v, f) in enumerate(zip(leaves, is_float, strict=True))
              if not f}

    def assemble(floats: list[jax.Array]) -> Any:
        it = iter(floats)
        return jax.tree_util.tree_unflatten(
            treedef, [next(it) if f else zero_i[i] for i, f in enumerate(is_float)]
        )

    @jax.jit
    def collect(batch: Any) -> list[jax.Array]:
        def step(floats: list[jax.Array]) -> list[jax.Array]:
            new = forward(assemble(floats), batch)
            new_leaves, new_def = jax.tree_util.tree_flatten(new)
            if new_def != treedef:
                raise ValueError(
                    "precise_batch_stats: `forward` must return statistics with the structure of "
                    f"`stats`; got {new_def}, expected {treedef}."
                )
            return [v for v, f in zip(new_leaves, is_float, strict=True) if f]

        new0, keep = jax.jvp(step, (zeros_f,), (ones_f,))
        out = []
        for n0, k in zip(new0, keep, strict=True):
            w = 1 - k
            out.append(jnp.where(w > 0, n0 / jnp.where(w > 0, w, jnp.ones_like(w)), jnp.nan))
        return out

    it = iter(batches) if num_batches is None else itertools.islice(batches, num_batches)
    collected: list[list[np.ndarray]] = []
    size = None
    for batch in it:
        bs = _batch_size(batch)
        if size is None:
            size = bs
        elif bs != size:
            raise ValueError(
                f"precise_batch_stats: batches must have equal sizes (the aggregation weights "
                f"them equally); got {bs} after {size}. Drop the last incomplete batch."
            )
        collected.append([np.asarray(v, np.float64) for v in collect(batch)])
    if not collected:
        raise ValueError("precise_batch_stats: `batches` is empty; give at least one batch.")
    n = len(collected)
    per_leaf = [np.stack(vals) for vals in zip(*collected, strict=True)]  # [N, ...] each
    float_index = [i for i, f in enumerate(is_float) if f]
    by_pos = dict(zip(float_index, per_leaf, strict=True))
    out_leaves = list(leaves)
    for i, vals in by_pos.items():
        valid = ~np.isnan(vals)
        cnt = valid.sum(0)
        mean = np.where(cnt > 0, np.nansum(vals, 0) / np.maximum(cnt, 1), 0.0)
        value = mean
        if names[i] == "var":
            j = next(
                (j for j in by_pos if names[j] == "mean" and parents[j] == parents[i]), None
            )
            if j is not None and by_pos[j].shape == vals.shape:
                mus = by_pos[j]
                mu = np.nanmean(np.where(valid, mus, np.nan), 0) if cnt.any() else 0.0
                spread = np.where(valid, (mus - mu) ** 2, 0.0).sum(0) / np.maximum(cnt, 1)
                value = mean + spread
        out_leaves[i] = jnp.asarray(
            np.where(cnt > 0, value, np.asarray(leaves[i], np.float64)), leaves[i].dtype
        )
    for i, f in enumerate(is_float):
        if not f and names[i] == "count":
            # A per-feature count (momentum=None modules) keeps its shape.
            out_leaves[i] = jnp.full(jnp.shape(leaves[i]), min(n, _INT32_MAX), leaves[i].dtype)
    return jax.tree_util.tree_unflatten(treedef, out_leaves)


def fold_batch_norm(
    kernel: jax.Array,
    bias: jax.Array | None,
    mean: jax.Array,
    var: jax.Array,
    scale: jax.Array | None = None,
    bn_bias: jax.Array | None = None,
    *,
    epsilon: float = 1e-5,
) -> tuple[jax.Array, jax.Array]:
    r"""Folds an inference-mode batch norm into the Dense/Conv before it.

    A layer ``z = x * W + c`` (``*`` a matmul or convolution, output features on the kernel's
    last axis, flax's layout) followed by batch norm in eval mode
    ``y = gamma (z - mu) / sqrt(var + eps) + beta`` is one layer with

    .. math::  W' = W \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}}, \qquad
               c' = \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}} (c - \mu) + \beta,

    i.e. :func:`jnorm.normalize` applied to the bias with the batch norm's statistics, and with
    mean 0 to the kernel. Used for inference (one op fewer; PyTorch's
    ``torch.nn.utils.fusion.fuse_conv_bn_eval``). The folded layer needs a bias
    (``use_bias=True``) even if the original had none (``bias=None``).

    Shapes: ``kernel: [..., O]`` (Dense ``[I, O]``, Conv ``[kh, kw, I, O]``); ``bias``,
    ``mean``, ``var``, ``scale``, ``bn_bias``: ``[O]``. Returns ``(kernel', bias')`` in the
    kernel's dtype.

    Examples:
      >>> import jax.numpy as jnp, jnorm
      >>> k, b = jnorm.fold_batch_norm(jnp.array([[2.0]]), jnp.array([1.0]), jnp.array([3.0]),
      ...                              jnp.array([4.0]), epsilon=0.0)
      >>> k.tolist(), b.tolist()  # (2x + 1 - 3) / 2 = x - 1
      ([[1.0]], [-1.0])
    """
    kernel = as_kernel(kernel, layer="fold_batch_norm")
    check_epsilon(epsilon, layer="fold_batch_norm")
    o = kernel.shape[-1]
    named = {"mean": mean, "var": var, "bias": bias, "scale": scale, "bn_bias": bn_bias}
    for name, arr in named.items():
        if arr is not None and jnp.shape(arr) != (o,):
            raise ValueError(
                f"`{name}` has shape {jnp.shape(arr)}; the kernel has {o} output features (its "
                f"last axis), so it must be ({o},). Is the batch norm after this layer?"
            )
    b = jnp.zeros((o,), kernel.dtype) if bias is None else jnp.asarray(bias)
    new_kernel = normalize(
        kernel, jnp.zeros((), jnp.float32), var, scale, None, epsilon=epsilon, dtype=kernel.dtype
    )
    new_bias = normalize(b, mean, var, scale, bn_bias, epsilon=epsilon, dtype=kernel.dtype)
    return new_kernel, new_bias
