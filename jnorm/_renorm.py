r"""Batch Renormalization (Ioffe 2017, arXiv:1702.03275): batch norm that trains like it infers.

Batch norm trains with the batch's statistics and infers with the running ones; at small or
non-i.i.d. batches the two differ. Batch renorm corrects the training output towards the
running statistics with two per-feature constants treated as such by the gradient:

.. math::  r = \mathrm{sg}\Big(\mathrm{clip}_{[1/r_{max},\, r_{max}]}
               \frac{\sigma_B}{\sigma}\Big), \qquad
           d = \mathrm{sg}\Big(\mathrm{clip}_{[-d_{max},\, d_{max}]}
               \frac{\mu_B - \mu}{\sigma}\Big), \qquad
           \hat x = \frac{x - \mu_B}{\sigma_B} r + d, \qquad y = \gamma \hat x + \beta

(Algorithm 1 of the paper; ``sg`` is stop-gradient, ``sigma_B = sqrt(var_B + eps)``, and
``mu``, ``sigma = sqrt(var + eps)`` are the running statistics). With ``r = 1, d = 0`` this is
batch norm; unclipped it equals the inference output exactly. Since ``y`` is the generic scheme
with gain ``gamma r`` and offset ``gamma d + beta``,

.. math::  y = \frac{\gamma r}{\sigma_B}(x - \mu_B) + (\gamma d + \beta),

the function computes the batch moments with :func:`jnorm._stats.shifted_moments`, applies
them with :func:`jnorm.normalize` and updates the running statistics with
:func:`jnorm.update_batch_stats`: no new copy of the batch norm math.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jnorm._axes import feature_param
from jnorm._checks import as_batch_args, check_batch_size, check_nonnegative
from jnorm._layers import batch_norm
from jnorm._normalize import (
    hide_masked_nonfinite,
    normalize,
    restore_masked,
    var_of_empty_blocks,
)
from jnorm._state import BatchStats, update_batch_stats
from jnorm._stats import shifted_moments
from jnorm._typing import ArrayLike, Axes, AxisIndexGroups, AxisName, DTypeLike, Scalar

__all__ = ["batch_renorm", "batch_renorm_schedule"]


def batch_renorm_schedule(
    step: ArrayLike,
    *,
    r_max: float = 3.0,
    d_max: float = 5.0,
    warmup_steps: int = 5000,
    r_max_steps: int = 40000,
    d_max_steps: int = 25000,
) -> tuple[jax.Array, jax.Array]:
    """The paper's clipping schedule: plain batch norm first, then ``r_max``, ``d_max`` relaxed.

    Sec. 4 of Ioffe 2017: "``r_max = 1, d_max = 0`` for the first 5000 steps, after which these
    were gradually relaxed to reach ``r_max = 3`` at 40k steps, and ``d_max = 5`` at 25k steps".
    The relaxation here is linear. Works with a traced ``step`` (inside ``jit``).

    Returns:
      ``(r_max, d_max)`` as float32 scalars for :func:`batch_renorm`.

    Examples:
      >>> import jnorm
      >>> [round(float(v), 3) for v in jnorm.batch_renorm_schedule(0)]
      [1.0, 0.0]
      >>> [round(float(v), 3) for v in jnorm.batch_renorm_schedule(25000)]
      [2.143, 5.0]
    """
    if not (warmup_steps >= 0 and r_max_steps > warmup_steps and d_max_steps > warmup_steps):
        raise ValueError(
            "batch_renorm_schedule needs 0 <= warmup_steps < r_max_steps and warmup_steps < "
            f"d_max_steps, got {warmup_steps}, {r_max_steps}, {d_max_steps}. Pass steps in "
            "that order."
        )
    check_nonnegative(r_max, "r_max", minimum=1.0, layer="batch_renorm_schedule")
    check_nonnegative(d_max, "d_max", layer="batch_renorm_schedule")
    step = jnp.asarray(step, jnp.float32)

    def ramp(end: int) -> jax.Array:
        frac = (step - warmup_steps) / float(end - warmup_steps)
        return jnp.clip(frac, 0.0, 1.0)

    return 1.0 + (r_max - 1.0) * ramp(r_max_steps), d_max * ramp(d_max_steps)


def batch_renorm(
    x: jax.Array,
    state: BatchStats,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    training: bool,
    r_max: Scalar = 3.0,
    d_max: Scalar = 5.0,
    feature_axes: Axes = -1,
    momentum: float | None = 0.99,
    epsilon: float = 1e-5,
    mask: jax.Array | None = None,
    axis_name: AxisName = None,
    axis_index_groups: AxisIndexGroups = None,
    dtype: DTypeLike | None = None,
) -> tuple[jax.Array, BatchStats]:
    r"""Batch Renormalization (Ioffe 2017, arXiv:1702.03275, Algorithm 1).

    Training: ``y = gamma ((x - mu_B) / sigma_B * r + d) + beta`` with ``r``, ``d`` as in the
    module docstring (clipped to ``[1/r_max, r_max]`` and ``[-d_max, d_max]``, no gradient),
    then the running statistics are updated as in :func:`jnorm.batch_norm`. Eval: identical to
    :func:`jnorm.batch_norm` with ``training=False``.

    The running *variance* is tracked (flax's and Keras' state layout, so a BatchNorm checkpoint
    loads unchanged) and ``sigma = sqrt(var + epsilon)``; the paper's Algorithm 1 averages
    ``sigma`` itself, which differs only in where the average is taken. Use
    :func:`batch_renorm_schedule` for the paper's warm-up of ``r_max`` and ``d_max``.

    Shapes: ``x: [N, ..., C]``; ``state`` fields, ``scale``, ``bias``: the feature shape
    ``x.shape[feature_axes]``. ``r_max``, ``d_max``: scalars (may be traced). Returns
    ``(y, new_state)``.

    Args:
      x: input.
      state: running statistics (``jnorm.BatchStats.init(C)``).
      scale, bias: optional per-feature ``gamma``, ``beta``.
      training: Python bool.
      r_max: clip for ``r``, ``>= 1`` (1 with ``d_max = 0`` is batch norm).
      d_max: clip for ``d``, ``>= 0``.
      feature_axes, momentum, epsilon, mask, axis_name, axis_index_groups, dtype: as in
        :func:`jnorm.batch_norm`.

    Examples:
      >>> import jax.numpy as jnp, jnorm
      >>> x = jnp.array([[0.0, 10.0], [2.0, 30.0]])
      >>> state = jnorm.BatchStats(jnp.array([1.0, 20.0]), jnp.array([1.0, 100.0]), jnp.array(5))
      >>> y, _ = jnorm.batch_renorm(x, state, training=True, epsilon=0.0)
      >>> y_eval, _ = jnorm.batch_renorm(x, state, training=False, epsilon=0.0)
      >>> bool(jnp.allclose(y, y_eval))  # r, d unclipped: training output = inference output
      True
    """
    x, features, stat_axes, mask = as_batch_args(
        "batch_renorm", x, state, cls=BatchStats, training=training, feature_axes=feature_axes,
        momentum=momentum, epsilon=epsilon, dtype=dtype, mask=mask, axis_name=axis_name,
        axis_index_groups=axis_index_groups, partial=mask is not None,
    )
    if not training:
        return batch_norm(
            x, state, scale, bias, training=False, feature_axes=feature_axes, epsilon=epsilon,
            dtype=dtype,
        )
    check_nonnegative(r_max, "r_max", minimum=1.0, layer="batch_renorm")
    check_nonnegative(d_max, "d_max", layer="batch_renorm")
    check_batch_size(x, stat_axes, axis_name, layer="batch_renorm")
    x_raw = x
    x, keep = hide_masked_nonfinite(x, mask)
    m = shifted_moments(
        x, stat_axes, mask=mask, axis_name=axis_name, axis_index_groups=axis_index_groups
    )
    real = m.var.dtype
    eps = jnp.asarray(epsilon, real)
    bshape = tuple(1 if i in stat_axes else x.shape[i] for i in range(x.ndim))
    run_mean = state.mean.reshape(bshape).astype(real)
    run_inv_sigma = lax.rsqrt(state.var.reshape(bshape).astype(real) + eps)
    sigma_b = jnp.sqrt(m.var + eps)
    r_max_ = jnp.asarray(r_max, real)
    d_max_ = jnp.asarray(d_max, real)
    r = lax.stop_gradient(jnp.clip(sigma_b * run_inv_sigma, 1 / r_max_, r_max_))
    d = lax.stop_gradient(jnp.clip((m.mean - run_mean) * run_inv_sigma, -d_max_, d_max_))
    gamma = feature_param(scale, x.shape, features, name="scale")
    beta = feature_param(bias, x.shape, features, name="bias")
    gain = r if gamma is None else gamma.astype(real) * r
    offset = d if gamma is None else gamma.astype(real) * d
    if beta is not None:
        offset = offset + beta.astype(real)
    var = m.var if mask is None else var_of_empty_blocks(m)
    y = normalize(
        x, m.mean_shifted, var, gain, offset, epsilon=epsilon, shift=m.shift, dtype=dtype
    )
    y = restore_masked(y, x_raw, keep)
    new_state = update_batch_stats(
        state,
        jnp.squeeze(m.mean, stat_axes),
        jnp.squeeze(m.var, stat_axes),
        jnp.squeeze(m.count, stat_axes),
        momentum=momentum,
    )
    return y, new_state
