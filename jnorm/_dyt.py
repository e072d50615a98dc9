r"""Dynamic Tanh (Zhu, Chen, He, LeCun & Liu 2025, "Transformers without Normalization",
arXiv:2503.10622): an element-wise stand-in for layer norm in transformers.

``y = scale * tanh(alpha * x) + bias``. No statistic is taken over any axis, so nothing of one
element reaches another; the learned affine step is :func:`jnorm.normalize`'s (with ``mu = 0``
and ``sigma = 1``), so the affine scheme is still written once in jnorm.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jnorm._axes import canonicalize_axes, feature_param
from jnorm._checks import as_input, as_mask, check_dtype
from jnorm._normalize import normalize, output_dtype
from jnorm._stats import accumulation_dtype
from jnorm._typing import Axes, DTypeLike

__all__ = ["DYT_ALPHA_INIT", "dynamic_tanh"]

#: The paper's initial value of ``alpha`` (its Section 7 tunes it for large language models).
DYT_ALPHA_INIT = 0.5


def _alpha(alpha: jax.Array | float, shape: tuple[int, ...], feature_axes: tuple[int, ...],
           compute: jnp.dtype) -> jax.Array:
    """``alpha`` as a scalar or a per-feature array broadcasting against ``shape``."""
    a = jnp.asarray(alpha)
    if not jnp.issubdtype(a.dtype, jnp.floating) and not jnp.issubdtype(a.dtype, jnp.integer):
        raise TypeError(
            f"dynamic_tanh: `alpha` must be a real number or a real array, got dtype {a.dtype}. "
            "Pass a float such as 0.5 (the paper's initial value)."
        )
    if a.ndim == 0:
        return a.astype(compute)
    if a.shape != tuple(shape[i] for i in feature_axes):
        raise ValueError(
            f"dynamic_tanh: `alpha` has shape {a.shape}; it must be a scalar (one alpha, the "
            f"paper's choice) or have the feature shape {tuple(shape[i] for i in feature_axes)} "
            f"(one alpha per feature along `feature_axes`={tuple(feature_axes)})."
        )
    out = feature_param(a, shape, feature_axes, name="alpha")
    assert out is not None
    return out.astype(compute)


def dynamic_tanh(
    x: jax.Array,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    alpha: jax.Array | float = DYT_ALPHA_INIT,
    *,
    feature_axes: Axes = -1,
    mask: jax.Array | None = None,
    dtype: DTypeLike | None = None,
) -> jax.Array:
    r"""Dynamic Tanh (Zhu et al. 2025, arXiv:2503.10622, Eq. 1): layer norm's replacement.

    .. math::  y = \gamma \odot \tanh(\alpha x) + \beta

    ``alpha`` is learned: a scalar (the paper's choice) or one value per feature;
    ``gamma = scale`` and ``beta = bias`` vary along ``feature_axes`` like layer norm's. It
    squashes extreme activations as layer norm does in trained transformers, without taking
    any statistic: each output depends on its own input element only.

    The arithmetic runs in at least float32 (half-precision inputs are upcast, ``tanh`` and the
    affine step included) and the result is cast to ``dtype`` (default: the input's; float32
    for integer inputs), as in the normalization layers.

    Masks: ``mask`` is accepted so that a model which passes a mask to its norm layer can swap
    in Dynamic Tanh unchanged. It is checked (it must broadcast to ``x``) and otherwise has no
    effect, by construction: with no statistics, a hidden element cannot influence any other
    element, and every element is transformed (as :func:`jnorm.layer_norm` normalizes every
    element).

    Shapes: ``x: [..., F]``; ``scale``, ``bias``: the shape of ``x`` on ``feature_axes``
    (default the last axis), e.g. ``(C,)``; ``alpha``: ``()`` or that feature shape. Returns
    ``x``'s shape.

    Args:
      x: real input.
      scale, bias: optional learned ``gamma`` (initialise to 1) and ``beta`` (to 0).
      alpha: the learned steepness (initialise to ``0.5``, the paper's default; its
        Section 7 finds smaller values better for wide language models).
      feature_axes: the axes ``scale``, ``bias`` (and a per-feature ``alpha``) vary along.
      mask: optional boolean array broadcastable to ``x``; checked, no effect (see above).
      dtype: output dtype (default ``x``'s; float32 for integers).

    Examples:
      >>> import jax.numpy as jnp, jnorm
      >>> y = jnorm.dynamic_tanh(jnp.array([[0.0, 2.0, -40.0]]), alpha=0.5)
      >>> [round(v, 4) for v in y[0].tolist()]  # tanh(0.5 x): 0, tanh(1), saturated
      [0.0, 0.7616, -1.0]
    """
    x = as_input(x, layer="dynamic_tanh")
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise TypeError(
            f"dynamic_tanh: `x` must be real, got dtype {x.dtype}; tanh squashes real "
            "activations. Pass the real part, or use a normalization layer."
        )
    check_dtype(dtype, layer="dynamic_tanh")
    axes = canonicalize_axes(feature_axes, x.ndim, name="feature_axes")
    as_mask(mask, x.shape)
    compute = accumulation_dtype(x.dtype)
    squashed = jnp.tanh(_alpha(alpha, x.shape, axes, compute) * x.astype(compute))
    scale = feature_param(scale, x.shape, axes, name="scale")
    bias = feature_param(bias, x.shape, axes, name="bias")
    one = jnp.ones((), compute)
    return normalize(squashed, jnp.zeros((), compute), one, scale, bias, epsilon=0.0,
                     dtype=output_dtype(x.dtype, dtype))
