"""Running statistics of batch norm as an explicit pytree, and their update rule."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jnorm._checks import (
    as_feature_shape,
    check_batch_moments,
    check_dtype,
    check_momentum,
    check_state,
)
from jnorm._typing import DTypeLike

__all__ = ["BatchStats", "next_batch_stats", "update_batch_stats"]

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
        cls, num_features: int | Sequence[int], dtype: DTypeLike = jnp.float32, *,
        per_feature_count: bool = False,
    ) -> BatchStats:
        """Fresh statistics: mean 0, variance 1, count 0, of shape ``num_features``.

        ``per_feature_count=True`` gives ``count`` the feature shape (see the class docstring).
        A complex ``dtype`` (for complex inputs) gives a complex mean and a real variance of the
        same precision, the dtypes a complex batch leaves in the state.
        """
        shape = as_feature_shape(num_features, layer="BatchStats.init")
        check_dtype(dtype, layer="BatchStats.init")
        real = jnp.finfo(dtype).dtype  # the variance is real, also for a complex mean
        count = jnp.zeros(shape if per_feature_count else (), jnp.int32)
        return cls(jnp.zeros(shape, dtype), jnp.ones(shape, real), count)


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

    A complex batch mean (complex input) makes a real running mean complex, of the state's
    precision (``float32 -> complex64``), as flax does: the imaginary part is kept, never
    dropped. The variance stays real. To keep the state's dtypes fixed across steps (a
    ``lax.scan`` carry), create it complex: ``BatchStats.init(C, jnp.complex64)``.
    """
    check_state(state, BatchStats, {"mean": state.mean.shape, "var": state.var.shape},
                init="BatchStats.init(num_features)", layer="update_batch_stats")
    check_batch_moments(state, mean, var, count)
    check_momentum(momentum, layer="update_batch_stats")
    return next_batch_stats(state, mean, var, count, momentum=momentum,
                            unbiased_running_var=unbiased_running_var,
                            skip_nonfinite=skip_nonfinite)


def next_batch_stats(
    state: BatchStats,
    mean: jax.Array,
    var: jax.Array,
    count: jax.Array,
    *,
    momentum: float | None,
    unbiased_running_var: bool,
    skip_nonfinite: bool,
) -> BatchStats:
    """:func:`update_batch_stats` on arguments already checked (the layers' own statistics)."""
    real = state.var.dtype  # real even when the mean is complex (flax stores complex means)
    n = count.astype(real)
    if unbiased_running_var:
        var = var * jnp.where(n > 1, n / jnp.maximum(n - 1, jnp.ones_like(n)), jnp.ones_like(n))
    mean_dtype = state.mean.dtype
    if jnp.iscomplexobj(mean) and not jnp.issubdtype(mean_dtype, jnp.complexfloating):
        with jax.numpy_dtype_promotion("standard"):  # dtypes only, also under strict mode
            mean_dtype = jnp.promote_types(mean_dtype, jnp.complex64)
        state = state._replace(mean=state.mean.astype(mean_dtype))
    mean = mean.astype(mean_dtype)
    var = var.astype(state.var.dtype)
    if momentum is None:
        step = 1 / (state.count.astype(real) + 1)
        new_mean = state.mean + (mean - state.mean) * step.astype(state.mean.dtype)
        new_var = state.var + (var - state.var) * step
    else:
        keep = jnp.asarray(momentum, real)
        keep_mean = keep.astype(state.mean.dtype)  # complex means: complex weights (strict mode)
        new_mean = keep_mean * state.mean + (1 - keep_mean) * mean
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
