"""Layout: which axes a layer reduces over, its feature shapes, how parameters broadcast.

Each function takes the input's static shape and the user's axis arguments, checks them (one
message style: the argument, the value, the fix) and returns canonical values: sorted
non-negative axes, the statistics axes of a layer, parameters reshaped to broadcast.
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jnorm._typing import Axes

__all__ = [
    "Layout",
    "batch_axes",
    "canonicalize_axes",
    "complement_axes",
    "feature_param",
    "group_layout",
    "grouped_param",
    "instance_layout",
    "is_int",
    "one_axis",
    "per_feature",
    "resolve_groups",
    "row_layout",
    "spatial_axes",
]


def is_int(value: Any) -> bool:
    """Whether `value` is an integer usable as an axis or a size: not a bool (``True`` is no
    axis 1), not a float."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def canonicalize_axes(
    axes: Axes, ndim: int, *, name: str = "axis", allow_empty: bool = True
) -> tuple[int, ...]:
    """Returns `axes` as a sorted tuple of non-negative ints, checking each is in range.

    Negative axes count from the end, as in NumPy, but only within ``[-ndim, ndim)``: an axis
    outside that range is an error rather than silently wrapped. Only ints count as axes
    (``1.5`` and ``True`` are errors, not axis 1).

    >>> canonicalize_axes(-1, 4)
    (3,)
    >>> canonicalize_axes((0, -2), 3, name="reduction_axes")
    (0, 1)
    """
    fix = f"Pass an int or a sequence of ints in [{-ndim}, {ndim - 1}]."
    if is_int(axes):
        seq: tuple[int, ...] = (operator.index(axes),)
    else:
        if isinstance(axes, (str, bytes)) or not isinstance(axes, (Sequence, np.ndarray)):
            raise TypeError(
                f"`{name}` must be an int or a sequence of ints, got {axes!r}. {fix}"
            )
        if not all(is_int(a) for a in axes):
            raise TypeError(
                f"`{name}`={axes!r} must be an int or a sequence of ints, not "
                f"{[type(a).__name__ for a in axes]}. {fix}"
            )
        seq = tuple(operator.index(a) for a in axes)
    if not seq and not allow_empty:
        raise ValueError(
            f"`{name}`={axes!r} names no axis, so every statistic would cover a single value "
            f"(the output would be the bias alone). {fix}"
        )
    out = []
    for a in seq:
        if not -ndim <= a < ndim:
            raise ValueError(
                f"`{name}`={axes!r} is out of range for an input with {ndim} dimensions: each "
                f"axis must lie in [{-ndim}, {ndim - 1}]. Pass an axis that exists in the input."
            )
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ValueError(
            f"`{name}`={axes!r} names the same axis twice (axes are taken modulo {ndim}); "
            "list each axis once."
        )
    return tuple(sorted(out))


def one_axis(axis: Axes, ndim: int, name: str) -> int:
    """A single axis (channels of group norm, FRN, LRN, whitening): an int, or a sequence of one."""
    axes = canonicalize_axes(axis, ndim, name=name)
    if len(axes) != 1:
        raise ValueError(
            f"`{name}`={axis!r} must name exactly one axis (this layer has one channel axis). "
            "Pass an int."
        )
    return axes[0]


def complement_axes(axes: Sequence[int], ndim: int) -> tuple[int, ...]:
    """All axes of an `ndim`-dimensional array that are not in `axes` (which must be canonical).

    >>> complement_axes((3,), 4)
    (0, 1, 2)
    """
    return tuple(i for i in range(ndim) if i not in axes)


def spatial_axes(
    x: jax.Array, channel_axes: tuple[int, ...], layer: str, strict: bool = True
) -> tuple[int, ...]:
    """The axes of an image layer's statistics: all but the batch axis 0 and the channels.

    With ``strict=False`` (the modules, as flax) an input without spatial axes gives ``()``.
    """
    if 0 in channel_axes:
        raise ValueError(
            f"{layer}: `feature_axes` includes axis 0, which is the batch axis. Put the channels "
            "on another axis (e.g. -1 for NHWC, 1 for NCHW). (flax: The channel axes cannot "
            "include the leading dimension as this is assumed to be the batch axis.)"
        )
    spatial = tuple(i for i in range(1, x.ndim) if i not in channel_axes)
    if not spatial and strict:
        raise ValueError(
            f"{layer}: an input of shape {x.shape} has no spatial axis (it is (N, C)), so each "
            "statistic would cover a single value. Give the input spatial axes, e.g. (N, H, W, "
            "C), or use layer_norm for (N, C) features."
        )
    return spatial


def feature_param(
    param: jax.Array | None,
    shape: Sequence[int],
    feature_axes: Sequence[int],
    *,
    name: str,
) -> jax.Array | None:
    """Checks a per-feature parameter and reshapes it to broadcast against `shape`.

    `param` must have exactly the feature shape ``tuple(shape[a] for a in feature_axes)``;
    the result has ones on the other axes. ``None`` passes through.
    """
    if param is None:
        return None
    param = jnp.asarray(param)
    feature_shape = tuple(shape[a] for a in feature_axes)
    if param.shape != feature_shape:
        raise ValueError(
            f"`{name}` has shape {param.shape}, but the input of shape {tuple(shape)} has feature "
            f"shape {feature_shape} (its axes {tuple(feature_axes)}). Create `{name}` with shape "
            f"{feature_shape}, or pass the feature axes that match it."
        )
    bshape = [1] * len(shape)
    for a in feature_axes:
        bshape[a] = shape[a]
    return param.reshape(bshape)


def grouped_param(param: Any, channels: int, groups: int, name: str) -> jax.Array:
    """A per-channel parameter ``[C]`` reshaped to ``[G, C/G]``."""
    param = jnp.asarray(param)
    if param.shape != (channels,):
        raise ValueError(
            f"`{name}` has shape {param.shape}, expected ({channels},): one value per channel."
        )
    return param.reshape(groups, channels // groups)


def resolve_groups(
    channels: int, num_groups: int | None, group_size: int | None,
    *, layer: str = "group_norm",
) -> int:
    """The number of groups from exactly one of `num_groups` / `group_size`, checked."""
    if (num_groups is None) == (group_size is None):
        raise ValueError(
            f"{layer}: give exactly one of `num_groups` and `group_size` (to use "
            "`group_size`, also pass `num_groups=None`, since num_groups defaults to 32)."
        )
    divisors = [d for d in range(1, channels + 1) if channels % d == 0]
    if group_size is not None:
        if not is_int(group_size) or group_size <= 0 or channels % group_size:
            raise ValueError(
                f"{layer}: `group_size`={group_size!r} does not divide the {channels} "
                f"channels. Pick one of {divisors}."
            )
        return channels // int(group_size)
    if not is_int(num_groups) or num_groups <= 0 or channels % num_groups:
        raise ValueError(
            f"{layer}: `num_groups`={num_groups!r} does not divide the {channels} channels. "
            f"Pick one of {divisors}, or pass `group_size`."
        )
    return int(num_groups)


def batch_axes(ndim: int, feature_axes: Axes) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A batch-statistics layer's ``(feature_axes, statistics_axes)``: the statistics cover
    every axis that is not a feature axis.

    >>> batch_axes(4, -1)
    ((3,), (0, 1, 2))
    """
    features = canonicalize_axes(feature_axes, ndim, name="feature_axes")
    return features, complement_axes(features, ndim)


class Layout(NamedTuple):
    """A layer's statistics axes and its parameters broadcast to the (reshaped) input."""

    #: the shape the layer normalizes the input as (group norm splits the channels)
    shape: tuple[int, ...]
    #: the statistics axes of that shape, canonical
    stat_axes: tuple[int, ...]
    scale: jax.Array | None
    bias: jax.Array | None


def per_feature(
    shape: Sequence[int], stat_axes: tuple[int, ...], feature_axes: Sequence[int],
    scale: Any, bias: Any,
) -> Layout:
    """The layout of statistics over `stat_axes` with parameters on `feature_axes`
    (:func:`feature_param` checks each)."""
    shape = tuple(shape)
    return Layout(shape, stat_axes, feature_param(scale, shape, feature_axes, name="scale"),
                  feature_param(bias, shape, feature_axes, name="bias"))


def row_layout(
    shape: Sequence[int], reduction_axes: Axes, feature_axes: Axes | None, scale: Any, bias: Any
) -> Layout:
    """Layer and RMS norm: statistics over `reduction_axes`, parameters on `feature_axes`
    (default: the same axes)."""
    ndim = len(shape)
    stat = canonicalize_axes(reduction_axes, ndim, name="reduction_axes", allow_empty=False)
    feat = stat if feature_axes is None else canonicalize_axes(
        feature_axes, ndim, name="feature_axes")
    return per_feature(shape, stat, feat, scale, bias)


def instance_layout(x: jax.Array, feature_axes: Axes, strict: bool, scale: Any, bias: Any
                    ) -> Layout:
    """Instance norm: statistics over the spatial axes (:func:`spatial_axes`), parameters on
    the channels."""
    channels = canonicalize_axes(feature_axes, x.ndim, name="feature_axes")
    spatial = spatial_axes(x, channels, "instance_norm", strict)
    return per_feature(x.shape, spatial, channels, scale, bias)


def group_layout(
    x: jax.Array, feature_axes: Axes, reduction_axes: Axes | None, num_groups: int | None,
    group_size: int | None, scale: Any, bias: Any,
) -> Layout:
    """Group norm: the channel axis split into ``(G, C/G)``; the statistics cover the
    non-channel axes (`reduction_axes`, default all but the batch axis 0) and the within-group
    axis; the parameters are ``(G, C/G)`` there."""
    ch = one_axis(feature_axes, x.ndim, "feature_axes")
    if reduction_axes is None:
        if ch == 0:
            spatial_axes(x, (ch,), "group_norm")  # raises: axis 0 is the batch axis
        others = tuple(i for i in range(1, x.ndim) if i != ch)
    else:
        others = canonicalize_axes(reduction_axes, x.ndim, name="reduction_axes")
        if ch in others:
            raise ValueError(
                "group_norm: `reduction_axes` must not include the channel axis; the channels "
                "of a group are always reduced over."
            )
    channels = x.shape[ch]
    groups = resolve_groups(channels, num_groups, group_size)
    if not others and channels == groups:
        raise ValueError(
            f"group_norm: an input of shape {x.shape} with groups of one channel and no spatial "
            "axis would normalize single values. Use fewer groups, or give the input spatial "
            "axes (N, H, W, C)."
        )
    split = x.shape[:ch] + (groups, channels // groups) + x.shape[ch + 1:]
    moved = tuple(a + 1 if a > ch else a for a in others)
    return per_feature(
        split, moved + (ch + 1,), (ch, ch + 1),
        None if scale is None else grouped_param(scale, channels, groups, "scale"),
        None if bias is None else grouped_param(bias, channels, groups, "bias"),
    )
