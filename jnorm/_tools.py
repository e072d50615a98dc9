r"""Tools around batch norm: PreciseBN, folding into Dense/Conv, PyTorch and orbax interop.

None of these compute new normalization math: population statistics are averages of the batch
statistics that jnorm's layers already compute, folding applies :func:`jnorm.normalize` to a
kernel and a bias, and the converters move arrays between naming conventions. ``import jnorm``
does not import flax or orbax; the functions that need them import them when called.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jnorm._normalize import normalize
from jnorm._state import BatchStats, from_torch_batch_norm

__all__ = [
    "fold_batch_norm",
    "from_torch_state_dict",
    "precise_batch_stats",
    "restore_state",
    "save_state",
    "to_torch_state_dict",
    "torch_norm_kwargs",
]

_INT32_MAX = int(np.iinfo(np.int32).max)


# ----------------------------------------------------------------------------------- PreciseBN


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
    forward: Any,
    stats: Any,
    batches: Iterable[Any],
    *,
    num_batches: int | None = None,
    **apply_kwargs: Any,
) -> Any:
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
            out_leaves[i] = jnp.asarray(min(n, _INT32_MAX), leaves[i].dtype)
    return jax.tree_util.tree_unflatten(treedef, out_leaves)


# ------------------------------------------------------------------------------------- Folding


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
    kernel = jnp.asarray(kernel)
    if kernel.ndim < 2:
        raise ValueError(
            f"`kernel` must have at least 2 dimensions with output features last, got shape "
            f"{kernel.shape}."
        )
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


# ------------------------------------------------------------------------------------- PyTorch


def torch_norm_kwargs(layer: str, **torch_kwargs: Any) -> dict[str, Any]:
    """Converts a PyTorch norm layer's constructor arguments to the jnorm function's keywords.

    ================  =======================================  ====================================
    PyTorch           its convention                           jnorm keyword
    ================  =======================================  ====================================
    ``momentum=0.1``  weight of the *new* value; None: cum.    ``momentum=0.9`` (old value); None
    ``eps``           1e-5 for all three layers                ``epsilon`` (same value)
    running var       unbiased, ``n / (n - 1)``                ``unbiased_running_var=True``
    channels          axis 1 (NCHW)                            ``axis=1`` / ``channel_axis=1``
    normalized_shape  trailing dims of LayerNorm               ``axis=(-k, ..., -1)``
    ================  =======================================  ====================================

    ``layer`` is ``"batch_norm"``, ``"layer_norm"`` or ``"group_norm"``. Arguments without a
    jnorm counterpart (``affine``, ``elementwise_affine``, ``track_running_stats``,
    ``num_features``, ``num_channels``, ``device``, ``dtype``) are ignored.

    Examples:
      >>> import jnorm
      >>> jnorm.torch_norm_kwargs("batch_norm", momentum=0.1)
      {'axis': 1, 'epsilon': 1e-05, 'momentum': 0.9, 'unbiased_running_var': True}
      >>> jnorm.torch_norm_kwargs("layer_norm", normalized_shape=(4, 5), eps=1e-6)
      {'axis': (-2, -1), 'epsilon': 1e-06}
    """
    ignored = {"affine", "elementwise_affine", "track_running_stats", "num_features",
               "num_channels", "device", "dtype", "bias"}
    kw = {k: v for k, v in torch_kwargs.items() if k not in ignored}
    eps = float(kw.pop("eps", 1e-5))
    if layer == "batch_norm":
        momentum = kw.pop("momentum", 0.1)
        out: dict[str, Any] = {
            "axis": 1, "epsilon": eps,
            "momentum": None if momentum is None else round(1.0 - float(momentum), 12),
            "unbiased_running_var": True,
        }
    elif layer == "layer_norm":
        if "normalized_shape" not in kw:
            raise ValueError("torch_norm_kwargs('layer_norm', ...) needs `normalized_shape`.")
        shape = kw.pop("normalized_shape")
        k = 1 if isinstance(shape, int) else len(tuple(shape))
        out = {"axis": tuple(range(-k, 0)), "epsilon": eps}
    elif layer == "group_norm":
        if "num_groups" not in kw:
            raise ValueError("torch_norm_kwargs('group_norm', ...) needs `num_groups`.")
        out = {"num_groups": int(kw.pop("num_groups")), "channel_axis": 1, "epsilon": eps}
    else:
        raise ValueError(
            f"`layer` must be 'batch_norm', 'layer_norm' or 'group_norm', got {layer!r}."
        )
    if kw:
        raise TypeError(f"torch_norm_kwargs({layer!r}): unknown PyTorch arguments {sorted(kw)}.")
    return dict(sorted(out.items()))


def from_torch_state_dict(
    state_dict: Mapping[str, Any], *, prefix: str = "", batch_size: int | None = None
) -> tuple[dict[str, jax.Array], BatchStats | None]:
    """Reads a PyTorch BatchNorm/LayerNorm/GroupNorm ``state_dict`` into jnorm params (+ state).

    Keys ``prefix + "weight"`` / ``"bias"`` become ``scale`` / ``bias`` (any shape: LayerNorm's
    is ``normalized_shape``, which is what :func:`jnorm.layer_norm` expects); a BatchNorm's
    ``running_mean``, ``running_var`` and ``num_batches_tracked`` become a
    :class:`jnorm.BatchStats`. Values may be NumPy arrays or CPU tensors (anything
    ``numpy.asarray`` reads; call ``.detach()`` first), so torch need not be installed.

    PyTorch keeps the *unbiased* running variance and uses it as is in eval, so by default it is
    copied unchanged (eval outputs match PyTorch). To continue training with jnorm's default
    biased running variance, pass the training ``batch_size`` ``n``: the variance is multiplied
    by ``(n - 1) / n``. Hyperparameters are not in a state dict; see :func:`torch_norm_kwargs`.

    Examples:
      >>> import numpy as np, jnorm
      >>> sd = {"bn.weight": np.ones(2), "bn.bias": np.zeros(2), "bn.running_mean": np.zeros(2),
      ...       "bn.running_var": np.full(2, 2.0), "bn.num_batches_tracked": np.array(3)}
      >>> params, state = jnorm.from_torch_state_dict(sd, prefix="bn.", batch_size=4)
      >>> sorted(params), state.var.tolist(), int(state.count)
      (['bias', 'scale'], [1.5, 1.5], 3)
    """
    def get(name: str) -> Any:
        return state_dict.get(prefix + name)

    weight, bias = get("weight"), get("bias")
    if get("running_mean") is not None or get("running_var") is not None:
        if get("running_mean") is None or get("running_var") is None:
            raise ValueError(
                f"state dict has only one of {prefix}running_mean / {prefix}running_var; a "
                "BatchNorm state dict has both."
            )
        params, state = from_torch_batch_norm(
            get("running_mean"), get("running_var"), get("num_batches_tracked"), weight, bias
        )
        if batch_size is not None:
            state = state._replace(var=state.var * _bessel(batch_size, inverse=True))
        return params, state
    if weight is None and bias is None:
        raise ValueError(
            f"no '{prefix}weight', '{prefix}bias' or '{prefix}running_mean' key in the state dict "
            f"(keys: {sorted(state_dict)[:8]}...); check `prefix`."
        )
    if batch_size is not None:
        raise ValueError("`batch_size` only applies to BatchNorm state dicts (running_var).")
    out = {}
    if weight is not None:
        out["scale"] = jnp.asarray(np.asarray(weight), jnp.float32)
    if bias is not None:
        out["bias"] = jnp.asarray(np.asarray(bias), jnp.float32)
    return out, None


def _bessel(n: int, *, inverse: bool) -> float:
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"`batch_size` must be an int >= 2 (values per channel), got {n!r}.")
    return (n - 1) / n if inverse else n / (n - 1)


def to_torch_state_dict(
    params: Mapping[str, Any],
    state: BatchStats | None = None,
    *,
    prefix: str = "",
    batch_size: int | None = None,
) -> dict[str, np.ndarray]:
    """Writes jnorm params (+ batch norm state) as a PyTorch norm layer's ``state_dict``.

    The inverse of :func:`from_torch_state_dict`: ``scale``/``bias`` become ``weight``/``bias``
    (float32 NumPy arrays; ``torch.from_numpy`` them), a state becomes ``running_mean``,
    ``running_var`` and ``num_batches_tracked`` (int64). The variance is copied as is (eval
    outputs match) unless ``batch_size`` ``n`` is given: then jnorm's biased running variance
    is multiplied by ``n / (n - 1)``, PyTorch's convention for continued training.

    Examples:
      >>> import jax.numpy as jnp, jnorm
      >>> sd = jnorm.to_torch_state_dict({"scale": jnp.ones(2)}, jnorm.BatchStats.init(2))
      >>> sorted(sd), sd["num_batches_tracked"].dtype
      (['num_batches_tracked', 'running_mean', 'running_var', 'weight'], dtype('int64'))
    """
    unknown = set(params) - {"scale", "bias"}
    if unknown:
        raise ValueError(
            f"`params` may hold only 'scale' and 'bias' (one norm layer), got {sorted(unknown)}."
        )
    out: dict[str, np.ndarray] = {}
    if "scale" in params:
        out[prefix + "weight"] = np.asarray(params["scale"], np.float32)
    if "bias" in params:
        out[prefix + "bias"] = np.asarray(params["bias"], np.float32)
    if state is not None:
        if not isinstance(state, BatchStats):
            raise TypeError(f"`state` must be a jnorm.BatchStats, got {type(state).__name__}.")
        var = np.asarray(state.var, np.float32)
        if batch_size is not None:
            var = (var * np.float32(_bessel(batch_size, inverse=False))).astype(np.float32)
        out[prefix + "running_mean"] = np.asarray(state.mean, np.float32)
        out[prefix + "running_var"] = var
        out[prefix + "num_batches_tracked"] = np.asarray(state.count, np.int64)
    elif batch_size is not None:
        raise ValueError("`batch_size` only applies with a batch norm `state`.")
    return out


# --------------------------------------------------------------------------------------- orbax


def save_state(directory: Any, state: Any) -> None:
    """Saves a jnorm state pytree (BatchStats, WhiteningStats, dicts of them) with orbax.

    ``directory`` must be an absolute path that does not exist yet. Restore with
    :func:`restore_state` and a template of the same structure (e.g. a freshly initialised
    state), which gives back the NamedTuple types.
    """
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(directory, state)
        ckpt.wait_until_finished()


def restore_state(directory: Any, like: Any) -> Any:
    """Restores a state saved by :func:`save_state` into the structure and dtypes of ``like``."""
    import orbax.checkpoint as ocp

    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.asarray(a).dtype), like)
    with ocp.StandardCheckpointer() as ckpt:
        return ckpt.restore(directory, abstract)
