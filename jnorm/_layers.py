"""The layer functions: each is the generic scheme with its own axes.

Every function below checks its arguments (:func:`jnorm._checks.as_layer_args`), chooses its
*layout* (:mod:`jnorm._axes`: the statistics axes, what the mean and variance are taken over,
and the parameters broadcast along the feature axes), then calls
:func:`jnorm._normalize.normalize_over`, which is :func:`jnorm._stats.shifted_moments`
followed by the scheme of :func:`jnorm.normalize`. No layer computes statistics or the affine
map itself.

Shape legend used in the docstrings: ``N`` batch, ``H, W`` spatial (any number of spatial axes
works), ``C`` channels, ``G`` groups, ``F`` the feature shape.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jnorm._axes import group_layout, instance_layout, per_feature, row_layout
from jnorm._checks import as_batch_args, as_layer_args, as_positive_int, check_batch_size
from jnorm._normalize import normalize, normalize_over
from jnorm._state import BatchStats, next_batch_stats
from jnorm._stats import accumulation_dtype
from jnorm._typing import Axes, AxisIndexGroups, AxisName, DTypeLike, Implementation, Scalar

__all__ = ["batch_norm", "group_norm", "instance_norm", "layer_norm", "rms_norm"]


def _row_norm(
    layer: str, x: jax.Array, scale: jax.Array | None, bias: jax.Array | None, *,
    center: bool, reduction_axes: Axes, feature_axes: Axes | None, epsilon: Scalar,
    mask: jax.Array | None, axis_name: AxisName, axis_index_groups: AxisIndexGroups,
    dtype: DTypeLike | None, implementation: Implementation, zero_centered_scale: bool,
) -> jax.Array:
    """Layer norm (`center`) and RMS norm: statistics over `reduction_axes`, parameters on
    `feature_axes` (default: the same axes)."""
    x, mask = as_layer_args(layer, x, epsilon=epsilon, dtype=dtype, mask=mask,
                            axis_name=axis_name, axis_index_groups=axis_index_groups,
                            implementation=implementation)
    scale = _zero_centered(scale, zero_centered_scale, layer)
    lay = row_layout(x.shape, reduction_axes, feature_axes, scale, bias)
    return normalize_over(
        x, lay.stat_axes, lay.scale, lay.bias, epsilon=epsilon, center=center, mask=mask,
        axis_name=axis_name, axis_index_groups=axis_index_groups, dtype=dtype,
        implementation=implementation,
    )[0]


def _zero_centered(scale: jax.Array | None, zero_centered: object, layer: str
                   ) -> jax.Array | None:
    """``1 + scale`` (in at least float32) for a zero-centred scale, else ``scale``."""
    if not isinstance(zero_centered, (bool, np.bool_)):
        raise TypeError(
            f"{layer}: `zero_centered_scale` must be a Python bool (it changes what the stored "
            f"`scale` means), got {zero_centered!r}."
        )
    if not zero_centered:
        return scale
    if scale is None:
        raise ValueError(
            f"{layer}: `zero_centered_scale=True` needs a `scale` (the stored gamma, applied as "
            "1 + gamma); pass the scale, or drop the option for an output without a scale."
        )
    s = jnp.asarray(scale)
    return s.astype(accumulation_dtype(s.dtype)) + 1


def layer_norm(
    x: jax.Array,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    reduction_axes: Axes = -1,
    feature_axes: Axes | None = None,
    epsilon: float = 1e-6,
    mask: jax.Array | None = None,
    axis_name: AxisName = None,
    axis_index_groups: AxisIndexGroups = None,
    dtype: DTypeLike | None = None,
    implementation: Implementation = None,
    zero_centered_scale: bool = False,
) -> jax.Array:
    r"""Layer normalization (Ba et al. 2016): each example normalized over its own features.

    .. math::  y = \frac{a}{\sqrt{\mathrm{Var}_A[x] + \epsilon}} (x - E_A[x]) + b

    with ``A = reduction_axes``. For an image batch ``(N, H, W, C)`` the notes' "everything of
    a single data point" is ``reduction_axes=(1, 2, 3)``; the transformer default is ``-1``.

    Shapes: ``x: [..., F]``; ``scale``, ``bias``: the shape of ``x`` on ``feature_axes``
    (default: ``reduction_axes``), e.g. ``(C,)``. Returns ``x``'s shape.

    Args:
      x: input.
      scale, bias: optional learned gain and offset.
      reduction_axes: axes the statistics are taken over.
      feature_axes: axes the parameters vary along (default ``reduction_axes``), as flax's
        LayerNorm.
      epsilon: added to the variance.
      mask: optional boolean array broadcastable to ``x``: only ``True`` elements count in the
        statistics (all elements are normalized).
      axis_name, axis_index_groups: also reduce over a mapped axis (see :func:`jnorm.moments`).
      dtype: output dtype (default ``x``'s; float32 for integers).
      implementation: the program for the forward value. None (default): the fused Pallas
        kernel where the computation runs on an NVIDIA GPU and the kernel measured faster
        than XLA (layer norm over a last axis of 256 to 16384, a power of two), else XLA;
        decided per platform at lowering (a computation placed on the CPU runs XLA), per shard
        for rows split over explicit mesh axes, XLA for a split last axis, partitioner-sharded
        inputs or an empty batch. ``"xla"``: always XLA. ``"pallas"``: always the kernel (on
        other platforms in Pallas' interpret mode: slow, for testing); a call it cannot serve
        (not the last axis, other sizes, a mask, ``axis_name``, a sharded last axis) raises a
        ValueError saying why. Derivatives (``grad``, ``jvp``) use XLA's fused rule either
        way: it measured faster in training.
      zero_centered_scale: if True, ``scale`` holds ``gamma`` and ``a = 1 + gamma`` is applied
        (computed in at least float32): the convention of Gemma-style checkpoints (PyTorch's
        ``x * (1 + weight)``; Transformer Engine's ``zero_centered_gamma``), whose scales are
        initialised to 0 and decay towards the identity. Converting: ``gamma = scale - 1``
        from a plain checkpoint, ``scale = 1 + gamma`` back; both are exact for scales in
        ``[0.5, 2]`` (Sterbenz), so the outputs are then bitwise equal. Loading plain scales
        into a zero-centred layer (or the reverse) is the silent error to avoid: the output is
        scaled by ``1 + scale``, about twice the intended one.

    Examples:
      >>> import jax.numpy as jnp, jnorm
      >>> y = jnorm.layer_norm(jnp.array([[1.0, 2.0, 3.0]]), epsilon=0.0)
      >>> [round(v, 4) for v in y[0].tolist()]
      [-1.2247, 0.0, 1.2247]
      >>> gamma = jnp.zeros(3)  # zero-centred: applied as 1 + gamma = 1
      >>> bool((jnorm.layer_norm(jnp.array([[1.0, 2.0, 3.0]]), gamma, epsilon=0.0,
      ...                        zero_centered_scale=True) == y).all())
      True
    """
    return _row_norm(
        "layer_norm", x, scale, bias, center=True, reduction_axes=reduction_axes,
        feature_axes=feature_axes, epsilon=epsilon, mask=mask, axis_name=axis_name,
        axis_index_groups=axis_index_groups, dtype=dtype, implementation=implementation,
        zero_centered_scale=zero_centered_scale,
    )


def rms_norm(
    x: jax.Array,
    scale: jax.Array | None = None,
    *,
    reduction_axes: Axes = -1,
    feature_axes: Axes | None = None,
    epsilon: float = 1e-6,
    mask: jax.Array | None = None,
    axis_name: AxisName = None,
    axis_index_groups: AxisIndexGroups = None,
    dtype: DTypeLike | None = None,
    implementation: Implementation = None,
    zero_centered_scale: bool = False,
) -> jax.Array:
    r"""RMS normalization (Zhang & Sennrich 2019): layer norm without mean subtraction.

    .. math::  y = \frac{a}{\sqrt{E_A[x^2] + \epsilon}} \, x

    The generic scheme with ``mu = 0`` and ``sigma^2 = E[x^2]``.

    Shapes: ``x: [..., F]``; ``scale``: the shape of ``x`` on ``feature_axes`` (default
    ``reduction_axes``). Returns ``x``'s shape. Arguments as in :func:`jnorm.layer_norm`;
    ``zero_centered_scale=True`` applies ``1 + scale`` (Gemma's RMSNorm, ``x * (1 + weight)``).

    Examples:
      >>> import jax.numpy as jnp, jnorm
      >>> y = jnorm.rms_norm(jnp.array([[3.0, 4.0]]), epsilon=0.0)  # rms = sqrt(12.5)
      >>> [round(v, 5) for v in y[0].tolist()]
      [0.84853, 1.13137]
      >>> z = jnorm.rms_norm(jnp.array([[3.0, 4.0]]), jnp.array([0.0, 1.0]), epsilon=0.0,
      ...                    zero_centered_scale=True)  # applied scale (1, 2)
      >>> [round(v, 5) for v in z[0].tolist()]
      [0.84853, 2.26274]
    """
    return _row_norm(
        "rms_norm", x, scale, None, center=False, reduction_axes=reduction_axes,
        feature_axes=feature_axes, epsilon=epsilon, mask=mask, axis_name=axis_name,
        axis_index_groups=axis_index_groups, dtype=dtype, implementation=implementation,
        zero_centered_scale=zero_centered_scale,
    )


def instance_norm(
    x: jax.Array,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    feature_axes: Axes = -1,
    epsilon: float = 1e-6,
    mask: jax.Array | None = None,
    axis_name: AxisName = None,
    axis_index_groups: AxisIndexGroups = None,
    dtype: DTypeLike | None = None,
    strict: bool = True,
) -> jax.Array:
    r"""Instance normalization (Ulyanov et al. 2016): one channel of one example at a time.

    .. math::  y_{nc} = \frac{a_c}{\sqrt{\mathrm{Var}_{HW}[x_{nc}] + \epsilon}}
               (x_{nc} - E_{HW}[x_{nc}]) + b_c

    Statistics over every axis except the batch axis 0 and ``feature_axes`` (the channels).

    Shapes: ``x: [N, H, W, C]`` (any number of spatial axes; channels where ``feature_axes``
    says); ``scale``, ``bias``: ``[C]``. Returns ``x``'s shape.

    An input without spatial axes (``(N, C)``, or ``feature_axes`` covering every non-batch
    axis) has one value per statistic: it raises, unless ``strict=False``, which returns
    ``bias`` (zero without one) there, as flax does (the modules use that); a mask changes
    nothing then (flax returns NaN where it hides an element).

    Examples:
      >>> import jax.numpy as jnp, jnorm
      >>> x = jnp.arange(8.0).reshape(1, 2, 2, 2)
      >>> [round(v, 5) for v in jnorm.instance_norm(x, epsilon=0.0)[0, :, :, 0].ravel().tolist()]
      [-1.34164, -0.44721, 0.44721, 1.34164]
    """
    x, mask = as_layer_args("instance_norm", x, epsilon=epsilon, dtype=dtype, mask=mask,
                            axis_name=axis_name, axis_index_groups=axis_index_groups)
    lay = instance_layout(x, feature_axes, strict, scale, bias)
    if not lay.stat_axes:  # strict=False: each statistic is one element, x - mean = 0
        mask = None
    return normalize_over(
        x, lay.stat_axes, lay.scale, lay.bias, epsilon=epsilon, center=True, mask=mask,
        axis_name=axis_name, axis_index_groups=axis_index_groups, dtype=dtype,
        implementation=None,
    )[0]


def group_norm(
    x: jax.Array,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    num_groups: int | None = 32,
    group_size: int | None = None,
    feature_axes: Axes = -1,
    reduction_axes: Axes | None = None,
    epsilon: float = 1e-6,
    mask: jax.Array | None = None,
    axis_name: AxisName = None,
    axis_index_groups: AxisIndexGroups = None,
    dtype: DTypeLike | None = None,
) -> jax.Array:
    r"""Group normalization (Wu & He 2018): the channels of one group of one example.

    The ``C`` channels are split into ``G`` contiguous groups of ``C / G``;

    .. math::  y_{ngk} = \frac{a_{gk}}{\sqrt{\mathrm{Var}_{HW,k}[x_{ng}] + \epsilon}}
               (x_{ngk} - E_{HW,k}[x_{ng}]) + b_{gk}

    ``G = 1`` is layer norm over ``(H, W, C)``; ``G = C`` is instance norm.

    Shapes: ``x: [N, H, W, C]`` (any number of spatial axes, none too: ``(N, C)`` features
    are grouped like channels; channels at ``feature_axes``); ``scale``, ``bias``: ``[C]``.
    Returns ``x``'s shape.

    Args:
      x: input.
      scale, bias: optional per-channel gain and offset.
      num_groups: ``G``; pass ``None`` to use ``group_size`` instead.
      group_size: channels per group, ``C / G``.
      feature_axes: the channel axis, one axis.
      reduction_axes: the non-channel axes the statistics cover (default: all but 0).
      epsilon, mask, axis_name, axis_index_groups, dtype: as in :func:`jnorm.layer_norm`.

    Examples:
      >>> import jax.numpy as jnp, jnorm
      >>> x = jnp.arange(16.0).reshape(1, 2, 2, 4)
      >>> y = jnorm.group_norm(x, num_groups=2, epsilon=0.0)
      >>> round(float(y[..., :2].mean()), 6), round(float(y[..., :2].std()), 6)
      (0.0, 1.0)
    """
    x, mask = as_layer_args("group_norm", x, epsilon=epsilon, dtype=dtype, mask=mask,
                            axis_name=axis_name, axis_index_groups=axis_index_groups)
    lay = group_layout(x, feature_axes, reduction_axes, num_groups, group_size, scale, bias)
    y, _ = normalize_over(
        x.reshape(lay.shape), lay.stat_axes, lay.scale, lay.bias, epsilon=epsilon, center=True,
        mask=None if mask is None else mask.reshape(lay.shape), axis_name=axis_name,
        axis_index_groups=axis_index_groups, dtype=dtype, implementation=None,
    )
    return y.reshape(x.shape)


def batch_norm(
    x: jax.Array,
    state: BatchStats,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    training: bool,
    feature_axes: Axes = -1,
    momentum: float | None = 0.99,
    epsilon: float = 1e-5,
    mask: jax.Array | None = None,
    axis_name: AxisName = None,
    axis_index_groups: AxisIndexGroups = None,
    unbiased_running_var: bool = False,
    skip_nonfinite: bool = False,
    dtype: DTypeLike | None = None,
    virtual_batch_size: int | None = None,
    strict: bool = True,
) -> tuple[jax.Array, BatchStats]:
    r"""Batch normalization (Ioffe & Szegedy 2015) with explicit running statistics.

    Training normalizes with the statistics of the batch, over every axis except the
    ``feature_axes`` (for ``(N, H, W, C)``: ``N, H, W``), and updates the running statistics; eval
    normalizes with the running statistics and returns ``state`` unchanged:

    .. math::  y = \frac{a}{\sqrt{\sigma^2 + \epsilon}} (x - \mu) + b, \qquad
               (\mu, \sigma^2) = \begin{cases} (E_B[x], \mathrm{Var}_B[x]) & \text{training}\\
               (\hat\mu, \hat\sigma^2) & \text{eval} \end{cases}

    Running statistics follow :func:`jnorm.update_batch_stats`: ``momentum`` is the weight of
    the old value (flax's meaning; PyTorch's ``momentum=0.1`` is ``momentum=0.9`` here, see
    :func:`jnorm.momentum_from_torch`), ``momentum=None`` averages cumulatively, and
    ``unbiased_running_var=True`` stores ``n/(n-1)`` times the batch variance as PyTorch does.

    Shapes: ``x: [N, H, W, C]`` (any rank); ``state`` fields and ``scale``, ``bias``: the
    feature shape ``F = x.shape[feature_axes]``. Returns ``(y, new_state)``, ``y`` shaped like
    ``x``.

    Args:
      x: input.
      state: running statistics, e.g. ``BatchStats.init(C)``.
      scale, bias: optional per-feature gain and offset.
      training: Python bool: batch statistics (True) or running statistics (False).
      feature_axes: feature axis or axes.
      momentum: weight of the old running value, in ``[0, 1]``, or None (cumulative).
      epsilon: added to the variance.
      mask: optional boolean array broadcastable to ``x``; only ``True`` elements count in the
        batch statistics. A feature with none keeps its running statistics.
      axis_name, axis_index_groups: synchronise statistics across a mapped axis (exactly
        count-weighted; see :func:`jnorm.moments`). Running statistics stay equal on all devices.
      unbiased_running_var: store the unbiased variance (PyTorch's convention).
      skip_nonfinite: keep the running statistics where the batch's are NaN or infinite.
      dtype: output dtype (default ``x``'s).
      virtual_batch_size: ghost batch norm (Hoffer et al. 2017). Axis 0 is split into
        consecutive sub-batches of this many examples (it must divide ``x.shape[0]``), each
        normalized with its own statistics. The running statistics get *one* update per call,
        with the count-weighted average of the sub-batch means and (biased) variances; without a
        mask that is their plain mean, as Keras does. The mean then equals the full batch's, and
        the variance is the within-sub-batch variance, the one training actually normalized
        with, so eval matches training in expectation (with ``unbiased_running_var`` it is the
        pooled ``sum M2_k / sum (n_k - 1)``). One update of the average instead of one
        momentum step per sub-batch keeps the result independent of the sub-batch order. With
        ``axis_name``, sub-batch ``k`` of every device is one virtual batch (so it holds
        ``virtual_batch_size`` times the axis size examples) and the running statistics stay
        equal on all devices; for device-sized virtual batches use ``axis_index_groups``.
        Ignored when ``training=False``.
      strict: training with one value per feature (e.g. ``(1, 1, 1, C)``) raises; with
        ``strict=False`` it returns ``bias`` and updates the running statistics with that
        value and variance 0, as flax does (the modules use that).

    Examples:
      >>> import jax.numpy as jnp, jnorm
      >>> x = jnp.array([[0.0, 10.0], [2.0, 30.0]])
      >>> state = jnorm.BatchStats.init(2)
      >>> y, state = jnorm.batch_norm(x, state, training=True, epsilon=0.0)
      >>> y.tolist(), [round(m, 4) for m in state.mean.tolist()]
      ([[-1.0, -1.0], [1.0, 1.0]], [0.01, 0.2])
      >>> y, _ = jnorm.batch_norm(x, state, training=False)

      Ghost batch norm, two virtual batches of two examples:

      >>> x = jnp.array([[0.0], [2.0], [10.0], [14.0]])
      >>> y, s = jnorm.batch_norm(x, jnorm.BatchStats.init(1), training=True, epsilon=0.0,
      ...                         momentum=0.0, virtual_batch_size=2)
      >>> y[:, 0].tolist(), s.mean.tolist(), s.var.tolist()  # var: mean of 1 and 4
      ([-1.0, 1.0, -1.0, 1.0], [6.5], [2.5])
    """
    x, features, stat_axes, mask = as_batch_args(
        "batch_norm", x, state, cls=BatchStats, training=training, feature_axes=feature_axes,
        momentum=momentum, epsilon=epsilon, dtype=dtype, mask=mask, axis_name=axis_name,
        axis_index_groups=axis_index_groups, partial=mask is not None or skip_nonfinite,
    )
    if virtual_batch_size is not None:
        virtual_batch_size = as_positive_int(
            virtual_batch_size, "virtual_batch_size", layer="batch_norm"
        )
    if not training:
        lay = per_feature(x.shape, stat_axes, features, scale, bias)
        shape = tuple(1 if a in stat_axes else n for a, n in enumerate(x.shape))
        y = normalize(x, state.mean.reshape(shape), state.var.reshape(shape), lay.scale,
                      lay.bias, epsilon=epsilon, dtype=dtype)
        return y, state
    if virtual_batch_size is not None:
        return _ghost_batch_norm(
            x, state, scale, bias, features, stat_axes, virtual_batch_size,
            momentum=momentum, epsilon=epsilon, mask=mask, axis_name=axis_name,
            axis_index_groups=axis_index_groups, unbiased_running_var=unbiased_running_var,
            skip_nonfinite=skip_nonfinite, dtype=dtype,
        )
    check_batch_size(x, stat_axes, axis_name, layer="batch_norm", strict=strict)
    lay = per_feature(x.shape, stat_axes, features, scale, bias)
    y, m = normalize_over(
        x, stat_axes, lay.scale, lay.bias, epsilon=epsilon, center=True, mask=mask,
        axis_name=axis_name, axis_index_groups=axis_index_groups, dtype=dtype,
        implementation=None,
    )
    new_state = next_batch_stats(
        state,
        jnp.squeeze(m.mean, stat_axes),
        jnp.squeeze(m.var, stat_axes),
        jnp.squeeze(m.count, stat_axes),
        momentum=momentum,
        unbiased_running_var=unbiased_running_var,
        skip_nonfinite=skip_nonfinite,
    )
    return y, new_state


def _ghost_batch_norm(
    x: jax.Array,
    state: BatchStats,
    scale: jax.Array | None,
    bias: jax.Array | None,
    features: tuple[int, ...],
    stat_axes: tuple[int, ...],
    size: int,
    *,
    momentum: Scalar | None,
    epsilon: Scalar,
    mask: jax.Array | None,
    axis_name: AxisName,
    axis_index_groups: AxisIndexGroups,
    unbiased_running_var: bool,
    skip_nonfinite: bool,
    dtype: DTypeLike | None,
) -> tuple[jax.Array, BatchStats]:
    """batch_norm in training with ``virtual_batch_size``: see its docstring for the rules."""
    if 0 in features:
        raise ValueError(
            "`virtual_batch_size` splits axis 0 (the batch) into sub-batches, but "
            f"`feature_axes` makes axis 0 a feature axis (features {features} of an input of "
            f"shape {x.shape}). Put the batch on axis 0, or drop `virtual_batch_size`."
        )
    n = x.shape[0]
    if n % size:
        divisors = [d for d in range(1, n + 1) if n % d == 0]
        raise ValueError(
            f"`virtual_batch_size`={size} does not divide the batch of {n} examples (axis 0 of "
            f"the input of shape {x.shape}). Pick one of {divisors}, or pad the batch and mask "
            "the padding out with `mask`."
        )
    xs = x.reshape((n // size, size, *x.shape[1:]))
    sub_stat = tuple(a + 1 for a in stat_axes)  # within one sub-batch; axis 0 counts them
    if axis_name is None and int(np.prod([xs.shape[a] for a in sub_stat])) <= 1:
        raise ValueError(
            f"`virtual_batch_size`={size} leaves one value per channel in each sub-batch of the "
            f"input of shape {x.shape}, so every output would be 0. Use a larger "
            "`virtual_batch_size`."
        )
    lay = per_feature(xs.shape, sub_stat, tuple(a + 1 for a in features), scale, bias)
    y, m = normalize_over(
        xs, sub_stat, lay.scale, lay.bias, epsilon=epsilon, center=True,
        mask=None if mask is None else mask.reshape(xs.shape), axis_name=axis_name,
        axis_index_groups=axis_index_groups, dtype=dtype, implementation=None,
    )
    # One running-statistics update with the count-weighted average over the sub-batches.
    counts = m.count
    total = jnp.sum(counts, axis=0)
    safe = jnp.maximum(total, jnp.ones_like(total))
    mean = jnp.sum(counts.astype(m.mean.dtype) * m.mean, axis=0) / safe.astype(m.mean.dtype)
    m2 = jnp.sum(counts * m.var, axis=0)
    if unbiased_running_var:
        dof = jnp.sum(jnp.maximum(counts - 1, jnp.zeros_like(counts)), axis=0)
        var = m2 / jnp.where(dof > 0, dof, safe)
    else:
        var = m2 / safe
    new_state = next_batch_stats(
        state,
        jnp.squeeze(mean, stat_axes),
        jnp.squeeze(var, stat_axes),
        jnp.squeeze(total, stat_axes),
        momentum=momentum,
        unbiased_running_var=False,
        skip_nonfinite=skip_nonfinite,
    )
    return y.reshape(x.shape), new_state
