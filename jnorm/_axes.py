"""Axis bookkeeping shared by every layer: canonical axes, feature shapes and checks.

Everything here runs at trace time on static shapes, so a bad argument fails before any
computation is compiled, with a message that names the argument and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

Axes = int | Sequence[int]

__all__ = ["Axes", "canonicalize_axes", "check_mask", "complement_axes", "feature_param"]


def canonicalize_axes(axes: Axes, ndim: int, *, name: str = "axis") -> tuple[int, ...]:
    """Returns `axes` as a sorted tuple of non-negative ints, checking each is in range.

    Negative axes count from the end, as in NumPy, but only within ``[-ndim, ndim)``: an axis
    outside that range is an error rather than silently wrapped.

    >>> canonicalize_axes(-1, 4)
    (3,)
    >>> canonicalize_axes((0, -2), 3, name="reduction_axes")
    (0, 1)
    """
    if isinstance(axes, (int, np.integer)):
        seq: tuple[int, ...] = (int(axes),)
    else:
        try:
            if isinstance(axes, (str, bytes)):
                raise TypeError
            seq = tuple(int(a) for a in axes)
        except (TypeError, ValueError):
            raise TypeError(
                f"`{name}` must be an int or a sequence of ints, got {axes!r}."
            ) from None
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


def complement_axes(axes: Sequence[int], ndim: int) -> tuple[int, ...]:
    """All axes of an `ndim`-dimensional array that are not in `axes` (which must be canonical).

    >>> complement_axes((3,), 4)
    (0, 1, 2)
    """
    return tuple(i for i in range(ndim) if i not in axes)


def feature_param(
    param: jnp.ndarray | None,
    shape: Sequence[int],
    feature_axes: Sequence[int],
    *,
    name: str,
) -> jnp.ndarray | None:
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


def check_mask(mask: jnp.ndarray | None, shape: Sequence[int]) -> jnp.ndarray | None:
    """Checks that `mask` broadcasts to `shape` and returns it as a boolean array of that shape."""
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    try:
        np.broadcast_shapes(mask.shape, tuple(shape))
    except ValueError:
        raise ValueError(
            f"`mask` has shape {mask.shape}, which does not broadcast to the input shape "
            f"{tuple(shape)}. Give it the input's shape, or size 1 on the axes it does not vary "
            "along."
        ) from None
    if np.broadcast_shapes(mask.shape, tuple(shape)) != tuple(shape):
        raise ValueError(
            f"`mask` of shape {mask.shape} would enlarge the input of shape {tuple(shape)}; "
            "it must broadcast to the input's shape."
        )
    if mask.dtype != jnp.bool_:
        mask = mask != 0
    return jnp.broadcast_to(mask, tuple(shape))
