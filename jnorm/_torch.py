"""Conversion to and from PyTorch's norm layers: buffers, state dicts, constructor arguments.

torch is not needed to read: anything ``numpy.asarray`` takes works, and torch tensors are
read with ``.detach().cpu()``. Values are always copied, so the jnorm arrays never share memory
with the tensors they came from. :func:`to_torch_state_dict` returns torch tensors when torch
is installed (ready for ``load_state_dict``), NumPy arrays otherwise.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jnorm._checks import as_positive_int
from jnorm._state import BatchStats
from jnorm._typing import TensorLike

__all__ = [
    "from_torch_batch_norm",
    "from_torch_state_dict",
    "momentum_from_torch",
    "to_torch_state_dict",
    "torch_norm_kwargs",
]

_INT32_MAX = int(np.iinfo(np.int32).max)


def _to_numpy(value: Any) -> np.ndarray:
    """A torch tensor (on any device, with or without grad) or array-like as a NumPy copy."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return np.array(value, copy=True)


def _copy(value: Any, dtype: Any = jnp.float32) -> jax.Array:
    """`value` as a jax array that owns its memory (never a view of the caller's buffer)."""
    return jnp.array(_to_numpy(value), dtype=dtype, copy=True)


def momentum_from_torch(momentum: float | None) -> float | None:
    """Converts PyTorch's BatchNorm ``momentum`` (weight of the *new* value) to jnorm's.

    >>> momentum_from_torch(0.1)
    0.9
    """
    return None if momentum is None else 1.0 - float(momentum)


def from_torch_batch_norm(
    running_mean: TensorLike,
    running_var: TensorLike,
    num_batches_tracked: TensorLike = None,
    weight: TensorLike = None,
    bias: TensorLike = None,
) -> tuple[dict[str, jax.Array], BatchStats]:
    """Converts a PyTorch BatchNorm's buffers and parameters to jnorm's params and state.

    Accepts torch tensors and anything ``numpy.asarray`` takes; the values are copied (the
    result never shares memory with the tensors). PyTorch stores the *unbiased* running
    variance and uses it as is in eval mode, so the state is copied unchanged: eval outputs
    match PyTorch's. To keep training with PyTorch's conventions, call
    :func:`jnorm.batch_norm` with ``unbiased_running_var=True`` and
    ``momentum=momentum_from_torch(torch_momentum)``.

    Returns:
      ``(params, state)``: ``params`` holds ``scale``/``bias`` (those given), ``state`` the
      running statistics with ``count = num_batches_tracked`` (clipped to int32).

    Examples:
      >>> import numpy as np, jnorm
      >>> params, state = jnorm.from_torch_batch_norm(np.zeros(2), np.ones(2), 7, np.ones(2))
      >>> sorted(params), int(state.count)
      (['scale'], 7)
    """
    mean = _copy(running_mean)
    var = _copy(running_var)
    if mean.shape != var.shape or mean.ndim != 1:
        raise ValueError(
            f"`running_mean` {mean.shape} and `running_var` {var.shape} must be vectors of the "
            "same length (one value per channel)."
        )
    n = 0 if num_batches_tracked is None else int(_to_numpy(num_batches_tracked))
    state = BatchStats(mean, var, jnp.asarray(min(max(n, 0), _INT32_MAX), jnp.int32))
    params: dict[str, jax.Array] = {}
    for name, value in (("scale", weight), ("bias", bias)):
        if value is not None:
            arr = _copy(value)
            if arr.shape != mean.shape:
                raise ValueError(
                    f"torch `{'weight' if name == 'scale' else 'bias'}` has shape {arr.shape}, "
                    f"expected {mean.shape} like `running_mean`."
                )
            params[name] = arr
    return params, state


def torch_norm_kwargs(layer: str, **torch_kwargs: Any) -> dict[str, Any]:
    """Converts a PyTorch norm layer's constructor arguments to the jnorm function's keywords.

    ================  =======================================  ====================================
    PyTorch           its convention                           jnorm keyword
    ================  =======================================  ====================================
    ``momentum=0.1``  weight of the *new* value; None: cum.    ``momentum=0.9`` (old value); None
    ``eps``           1e-5 for all three layers                ``epsilon`` (same value)
    running var       unbiased, ``n / (n - 1)``                ``unbiased_running_var=True``
    channels          axis 1 (NCHW)                            ``feature_axes=1``
    normalized_shape  trailing dims of LayerNorm               ``reduction_axes=(-k, ..., -1)``
    ================  =======================================  ====================================

    ``layer`` is ``"batch_norm"``, ``"layer_norm"`` or ``"group_norm"``. Arguments without a
    jnorm counterpart (``affine``, ``elementwise_affine``, ``track_running_stats``,
    ``num_features``, ``num_channels``, ``device``, ``dtype``) are ignored.

    Examples:
      >>> import jnorm
      >>> jnorm.torch_norm_kwargs("batch_norm", momentum=0.1)
      {'epsilon': 1e-05, 'feature_axes': 1, 'momentum': 0.9, 'unbiased_running_var': True}
      >>> jnorm.torch_norm_kwargs("layer_norm", normalized_shape=(4, 5), eps=1e-6)
      {'epsilon': 1e-06, 'reduction_axes': (-2, -1)}
    """
    ignored = {"affine", "elementwise_affine", "track_running_stats", "num_features",
               "num_channels", "device", "dtype", "bias"}
    kw = {k: v for k, v in torch_kwargs.items() if k not in ignored}
    eps = float(kw.pop("eps", 1e-5))
    if layer == "batch_norm":
        momentum = kw.pop("momentum", 0.1)
        out: dict[str, Any] = {
            "feature_axes": 1, "epsilon": eps,
            "momentum": None if momentum is None else round(1.0 - float(momentum), 12),
            "unbiased_running_var": True,
        }
    elif layer == "layer_norm":
        if "normalized_shape" not in kw:
            raise ValueError("torch_norm_kwargs('layer_norm', ...) needs `normalized_shape`.")
        shape = kw.pop("normalized_shape")
        k = 1 if isinstance(shape, int) else len(tuple(shape))
        out = {"reduction_axes": tuple(range(-k, 0)), "epsilon": eps}
    elif layer == "group_norm":
        if "num_groups" not in kw:
            raise ValueError("torch_norm_kwargs('group_norm', ...) needs `num_groups`.")
        out = {"num_groups": int(kw.pop("num_groups")), "feature_axes": 1, "epsilon": eps}
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
    :class:`jnorm.BatchStats`. Values may be torch tensors or NumPy arrays (torch need not be
    installed); they are copied.

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
        out["scale"] = _copy(weight)
    if bias is not None:
        out["bias"] = _copy(bias)
    return out, None


def _bessel(n: int, *, inverse: bool) -> float:
    n = as_positive_int(n, "batch_size", minimum=2, layer="torch state dict")
    return (n - 1) / n if inverse else n / (n - 1)


def to_torch_state_dict(
    params: Mapping[str, Any],
    state: BatchStats | None = None,
    *,
    prefix: str = "",
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Writes jnorm params (+ batch norm state) as a PyTorch norm layer's ``state_dict``.

    The inverse of :func:`from_torch_state_dict`: ``scale``/``bias`` become ``weight``/``bias``
    (float32), a state becomes ``running_mean``, ``running_var`` and ``num_batches_tracked``
    (int64). The values are torch tensors when torch is installed, so
    ``module.load_state_dict(sd)`` takes the result as is; NumPy arrays otherwise. The
    variance is copied as is (eval outputs match) unless ``batch_size`` ``n`` is given: then
    jnorm's biased running variance is multiplied by ``n / (n - 1)``, PyTorch's convention
    for continued training.

    Examples:
      >>> import jax.numpy as jnp, jnorm
      >>> sd = jnorm.to_torch_state_dict({"scale": jnp.ones(2)}, jnorm.BatchStats.init(2))
      >>> sorted(sd), str(sd["num_batches_tracked"].dtype).removeprefix("torch.")
      (['num_batches_tracked', 'running_mean', 'running_var', 'weight'], 'int64')
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
            raise TypeError(
                f"to_torch_state_dict: `state` must be a jnorm.BatchStats, got "
                f"{type(state).__name__}. Pass the batch norm's state, or None."
            )
        var = np.asarray(state.var, np.float32)
        if batch_size is not None:
            var = (var * np.float32(_bessel(batch_size, inverse=False))).astype(np.float32)
        out[prefix + "running_mean"] = np.asarray(state.mean, np.float32)
        out[prefix + "running_var"] = var
        # torch counts calls: a per-feature count gives its largest entry.
        out[prefix + "num_batches_tracked"] = np.asarray(np.max(state.count), np.int64)
    elif batch_size is not None:
        raise ValueError("`batch_size` only applies with a batch norm `state`.")
    if importlib.util.find_spec("torch") is None:
        return out
    import torch

    return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in out.items()}
