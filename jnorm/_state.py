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
        averaging (``momentum=None``) and to tell "no statistics yet" (``count == 0``). Shape
        ``()`` counts calls; ``F`` (``init(..., per_feature_count=True)``) counts, per feature,
        the batches that had data for it, which cumulative averaging needs when a mask or
        ``skip_nonfinite`` can leave a feature out of a batch.

    Examples:
      >>> import jnorm
      >>> state = jnorm.BatchStats.init(3)
      >>> state.mean.tolist(), state.var.tolist(), int(state.count)
      ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0], 0)
    """

    mean: jax.Array  # shape=F, dtype=float32 (or the dtype given to init)
    var: jax.Array  # shape=F, dtype=float32 (or the dtype given to init)
    count: jax.Array  # shape=() or F, dtype=int32

    @classmethod
    def init(
        cls, num_features: int | Sequence[int], dtype: Any = jnp.float32, *,
        per_feature_count: bool = False,
    ) -> BatchStats:
        """Fresh statistics: mean 0, variance 1, count 0, of shape ``num_features``.

        ``per_feature_count=True`` gives ``count`` the feature shape (see the class docstring).
        """
        shape = (num_features,) if isinstance(num_features, (int, np.integer)) else tuple(
            num_features
        )
        if any(int(s) < 1 for s in shape):
            raise ValueError(f"`num_features` must be positive, got {num_features!r}.")
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"`dtype` must be a floating dtype, got {dtype!r}.")
        count = jnp.zeros(shape if per_feature_count else (), jnp.int32)
        return cls(jnp.zeros(shape, dtype), jnp.ones(shape, dtype), count)


def check_cumulative(state: BatchStats, momentum: float | None, *, partial: bool) -> None:
    """Raises if cumulative averaging (``momentum=None``) could average in a feature's initial
    values: a call-count ``state.count`` of shape ``()`` while a mask or ``skip_nonfinite``
    (`partial`) can leave a feature without data in a batch."""
    if momentum is None and partial and jnp.ndim(state.count) == 0 and jnp.ndim(state.mean):
        raise ValueError(
            "`momentum=None` (cumulative average) with a `mask` or `skip_nonfinite` needs a "
            "count per feature, since a batch may hold no data for some features; `state.count` "
            "has shape (). Create the state with "
            f"BatchStats.init({tuple(jnp.shape(state.mean))}, per_feature_count=True)."
        )


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
    (PyTorch). ``momentum=None`` is the cumulative average ``m = count / (count + 1)``, computed
    as ``mu + (mu_B - mu) / (count + 1)`` so that it keeps learning past ``count = 2**24``
    (where ``count / (count + 1)`` rounds to 1 in float32), with the feature's own count if
    ``state.count`` has the feature shape.
    Features whose batch count is 0 (fully masked) keep their values; so do features whose batch
    statistics are not finite when ``skip_nonfinite``. A ``()``-shaped ``count`` grows by one if
    any feature was updated, a feature-shaped one where its feature was.
    """
    n = count.astype(state.mean.dtype)
    if unbiased_running_var:
        var = var * jnp.where(n > 1, n / jnp.maximum(n - 1, jnp.ones_like(n)), jnp.ones_like(n))
    mean = mean.astype(state.mean.dtype)
    var = var.astype(state.var.dtype)
    if momentum is None:
        step = 1 / (state.count.astype(state.mean.dtype) + 1)
        new_mean = state.mean + (mean - state.mean) * step
        new_var = state.var + (var - state.var) * step
    else:
        keep = jnp.asarray(momentum, state.mean.dtype)
        new_mean = keep * state.mean + (1 - keep) * mean
        new_var = keep * state.var + (1 - keep) * var
    ok = n > 0
    if skip_nonfinite:
        ok = ok & jnp.isfinite(mean) & jnp.isfinite(var)
    grow = jnp.any(ok) if jnp.ndim(state.count) == 0 else ok
    new_count = jnp.where(
        grow & (state.count < _INT32_MAX), state.count + 1, state.count
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
