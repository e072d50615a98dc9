"""The generic normalization scheme, written once: ``y = a / sigma * (x - mu) + b``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jnorm._stats import accumulation_dtype

__all__ = ["normalize", "output_dtype"]


def output_dtype(x_dtype: Any, dtype: Any = None) -> jnp.dtype:
    """The dtype a layer returns: `dtype` if given, else the input's (float32 for integers)."""
    if dtype is not None:
        return jnp.dtype(dtype)
    if jnp.issubdtype(x_dtype, jnp.inexact):
        return jnp.dtype(x_dtype)
    return jnp.dtype(jnp.float32)


def _as_operand(a: Any, x: jax.Array, dtype: Any, name: str) -> jax.Array:
    """Casts `a` to `dtype` and gives it `x`'s rank, checking that it broadcasts to `x`."""
    a = jnp.asarray(a)
    if a.ndim > x.ndim:
        raise ValueError(
            f"`{name}` has shape {a.shape}, more dimensions than the input {x.shape}; give it "
            f"at most {x.ndim} dimensions (use keepdims=True statistics)."
        )
    a = a.reshape((1,) * (x.ndim - a.ndim) + a.shape)
    try:
        shape = np.broadcast_shapes(a.shape, x.shape)
    except ValueError:
        shape = None
    if shape != x.shape:
        raise ValueError(
            f"`{name}` of shape {a.shape} does not broadcast to the input shape {x.shape}; it "
            "needs the input's size or 1 along each axis (statistics with keepdims=True have "
            "this shape)."
        )
    if jnp.iscomplexobj(a) and not jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError(f"`{name}` is complex but the input {x.dtype} is real.")
    return a.astype(dtype)


def normalize(
    x: jax.Array,
    mean: jax.Array,
    var: jax.Array,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    epsilon: float,
    shift: jax.Array | None = None,
    dtype: Any = None,
) -> jax.Array:
    r"""Applies the generic normalization scheme with given statistics.

    .. math::  y = \frac{a}{\sqrt{\sigma^2 + \epsilon}} \, (x - \mu) + b

    with ``a = scale`` (1 if None), ``b = bias`` (0 if None), ``mu = mean``, ``sigma^2 = var``.
    This is the only place jnorm writes this formula; every layer calls it.

    If ``shift`` is given, ``mean`` is taken relative to it (``mu = shift + mean``) and
    ``x - mu`` is computed as ``(x - shift) - mean``: with ``shift`` a data element, this stays
    exact for data far from zero, where rounding ``mu`` to float32 first would not. The
    statistics returned by :func:`jnorm.moments` need no shift.

    The arithmetic runs in at least float32 (half-precision inputs are upcast) and the result is
    cast to ``dtype`` (default: the input's dtype; float32 for integer inputs).

    Shapes: ``x`` is any array ``[...]``; ``mean``, ``var``, ``scale``, ``bias``, ``shift`` must
    broadcast to it (NumPy rules; keepdims statistics do). Returns an array shaped like ``x``.

    Args:
      x: input.
      mean: mean ``mu`` (relative to ``shift`` if given).
      var: variance ``sigma^2`` (real, non-negative).
      scale: optional gain ``a``.
      bias: optional offset ``b``.
      epsilon: added to the variance before the square root; must be ``>= 0``.
      shift: optional pivot the mean is measured from.
      dtype: output dtype.

    Examples:
      >>> import jax.numpy as jnp, jnorm
      >>> x = jnp.array([[1.0, 3.0]])
      >>> mean, var = jnorm.moments(x, axes=1, keepdims=True)
      >>> jnorm.normalize(x, mean, var, epsilon=0.0).tolist()
      [[-1.0, 1.0]]
    """
    x = jnp.asarray(x)
    if isinstance(epsilon, (int, float, np.floating)) and not epsilon >= 0:
        raise ValueError(f"`epsilon` must be >= 0, got {epsilon!r}.")
    out = output_dtype(x.dtype, dtype)
    compute = accumulation_dtype(x.dtype)
    real = jnp.finfo(compute).dtype
    centred = x.astype(compute)
    if shift is not None:
        centred = centred - _as_operand(shift, x, compute, "shift")
    centred = centred - _as_operand(mean, x, compute, "mean")
    mul = lax.rsqrt(_as_operand(var, x, real, "var") + jnp.asarray(epsilon, real))
    mul = mul.astype(compute)
    if scale is not None:
        mul = mul * _as_operand(scale, x, compute, "scale")
    y = centred * mul
    if bias is not None:
        y = y + _as_operand(bias, x, compute, "bias")
    return y.astype(out)
