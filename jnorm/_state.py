"""Running statistics of batch norm as an explicit pytree, and their update rule."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["BatchStats", "from_torch_batch_norm", "momentum_from_torch", "update_batch_stats"]

_INT32_MAX = np.iinfo(np.int32).max


class BatchStats(NamedTuple):
    """Running mean and variance of batch norm.

    A pytree (a ``NamedTuple``): it passes through ``jit``, ``vmap``, ``lax.scan`` and
    checkpointing as is. ``F`` below is the feature shape, e.g. ``(C,)``.

    Attributes:
      mean: running mean.
      var: running variance (biased by default; see ``unbiased_running_var``).
      count: number of updates so far (int32, saturating at 2**31 - 1). Used for cumulative
        averaging (``momentum=None``) and to tell "no statistics yet" (``count == 0``).

    Examples:
      >>> import jnorm
      >>> state = jnorm.BatchStats.init(3)
      >>> state.mean.tolist(), state.var.tolist(), int(state.count)
      ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0], 0)
    """

    mean: jax.Array  # shape=F, dtype=float32 (or the dtype given to init)
    var: jax.Array  # shape=F, dtype=float32 (or the dtype given to init)
    count: jax.Array  # shape=(), dtype=int32

    @classmethod
    def init(cls, num_features: int | Sequence[int], dtype: Any = jnp.float32) -> BatchStats:
        """Fresh statistics: mean 0, variance 1, count 0, of shape ``num_features``."""
        shape = (num_features,) if isinstance(num_features, (int, np.integer)) else tuple(
            num_features
        )
        if any(int(s) < 1 for s in shape):
            raise ValueError(f"`num_features` must be positive, got {num_features!r}.")
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"`dtype` must be a floating dtype, got {dtype!r}.")
        return cls(jnp.zeros(shape, dtype), jnp.ones(shape, dtype), jnp.zeros((), jnp.int32))


def update_batch_stats(
    state: BatchStats,
    mean: jax.Array,
    var: jax.Array,
    count: jax.Array,
    *,
    momentum: float | None,
    unbiased_running_var: bool = False,
    skip_nonfinite: bool = False,
) -> BatchStats:
    r"""One update of the running statistics with a batch's mean, biased variance and count.

    With ``m = momentum`` (the weight of the old value, flax's convention):

    .. math::  \hat\mu \leftarrow m\,\hat\mu + (1 - m)\,\mu_B, \qquad
               \hat\sigma^2 \leftarrow m\,\hat\sigma^2 + (1 - m)\,s^2_B

    where ``s^2_B`` is the batch variance, times ``n / (n - 1)`` if ``unbiased_running_var``
    (PyTorch). ``momentum=None`` is the cumulative average ``m = count / (count + 1)``.
    Features whose batch count is 0 (fully masked) keep their values; so do features whose batch
    statistics are not finite when ``skip_nonfinite``. ``count`` grows by one if any feature was
    updated.
    """
    real = state.var.dtype  # real even when the mean is complex (flax stores complex means)
    n = count.astype(real)
    if unbiased_running_var:
        var = var * jnp.where(n > 1, n / jnp.maximum(n - 1, jnp.ones_like(n)), jnp.ones_like(n))
    if momentum is None:
        c = state.count.astype(real)
        keep = c / (c + 1)
    else:
        keep = jnp.asarray(momentum, real)
    keep_mean = keep.astype(state.mean.dtype)  # complex means: complex weights (strict mode)
    new_mean = keep_mean * state.mean + (1 - keep_mean) * mean.astype(state.mean.dtype)
    new_var = keep * state.var + (1 - keep) * var.astype(state.var.dtype)
    ok = n > 0
    if skip_nonfinite:
        ok = ok & jnp.isfinite(mean) & jnp.isfinite(var)
    new_count = jnp.where(
        jnp.any(ok) & (state.count < _INT32_MAX), state.count + 1, state.count
    ).astype(jnp.int32)
    return BatchStats(
        jnp.where(ok, new_mean, state.mean), jnp.where(ok, new_var, state.var), new_count
    )


def momentum_from_torch(momentum: float | None) -> float | None:
    """Converts PyTorch's BatchNorm ``momentum`` (weight of the *new* value) to jnorm's.

    >>> momentum_from_torch(0.1)
    0.9
    """
    return None if momentum is None else 1.0 - float(momentum)


def from_torch_batch_norm(
    running_mean: Any,
    running_var: Any,
    num_batches_tracked: Any = None,
    weight: Any = None,
    bias: Any = None,
) -> tuple[dict[str, jax.Array], BatchStats]:
    """Converts a PyTorch BatchNorm's buffers and parameters to jnorm's params and state.

    Accepts anything ``numpy.asarray`` takes (NumPy arrays, CPU torch tensors via
    ``.detach().numpy()``). PyTorch stores the *unbiased* running variance and uses it as is in
    eval mode, so the state is copied unchanged: eval outputs match PyTorch's. To keep training
    with PyTorch's conventions, call :func:`jnorm.batch_norm` with ``unbiased_running_var=True``
    and ``momentum=momentum_from_torch(torch_momentum)``.

    Returns:
      ``(params, state)``: ``params`` holds ``scale``/``bias`` (those given), ``state`` the
      running statistics with ``count = num_batches_tracked`` (clipped to int32).

    Examples:
      >>> import numpy as np, jnorm
      >>> params, state = jnorm.from_torch_batch_norm(np.zeros(2), np.ones(2), 7, np.ones(2))
      >>> sorted(params), int(state.count)
      (['scale'], 7)
    """
    mean = jnp.asarray(np.asarray(running_mean), jnp.float32)
    var = jnp.asarray(np.asarray(running_var), jnp.float32)
    if mean.shape != var.shape or mean.ndim != 1:
        raise ValueError(
            f"`running_mean` {mean.shape} and `running_var` {var.shape} must be vectors of the "
            "same length (one value per channel)."
        )
    n = 0 if num_batches_tracked is None else int(np.asarray(num_batches_tracked))
    state = BatchStats(mean, var, jnp.asarray(min(max(n, 0), _INT32_MAX), jnp.int32))
    params: dict[str, jax.Array] = {}
    for name, value in (("scale", weight), ("bias", bias)):
        if value is not None:
            arr = jnp.asarray(np.asarray(value), jnp.float32)
            if arr.shape != mean.shape:
                raise ValueError(
                    f"torch `{'weight' if name == 'scale' else 'bias'}` has shape {arr.shape}, "
                    f"expected {mean.shape} like `running_mean`."
                )
            params[name] = arr
    return params, state
