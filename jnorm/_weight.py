r"""Normalizing the *weights* instead of the activations: kernel transforms.

Each function maps a kernel to the kernel the layer should use; :mod:`jnorm.linen` wraps any
linen layer (``Dense``, ``Conv``, ...) with them. Kernels use flax's layout: the output features
are the last axis (``Dense``: ``[I, O]``, ``Conv``: ``[kh, kw, I, O]``) and the *fan-in* is every
other axis. All three are the generic scheme applied to the kernel, with statistics over the
fan-in: :func:`jnorm._stats.shifted_moments` and :func:`jnorm.normalize`.

* **Weight standardization** (Qiao et al. 2019, arXiv:1903.10520, Eq. 5-7):
  ``W_hat = (W - mean) / sqrt(var + eps)`` per output unit.
* **Scaled weight standardization** (Brock et al. 2021, arXiv:2101.08692, Eq. 3; used by
  NFNets, arXiv:2102.06171): ``W_hat = gain * (W - mean) / sqrt(N var + eps)`` with ``N`` the
  fan-in, so that unit-variance inputs give unit-variance outputs without any activation norm.
* **Weight normalization** (Salimans & Kingma 2016, arXiv:1602.07868, Eq. 2):
  ``w = g v / ||v||``, i.e. ``mu = 0`` and ``sigma^2 = N E[v^2] = ||v||^2``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jnorm._axes import canonicalize_axes, complement_axes
from jnorm._checks import as_kernel, check_epsilon
from jnorm._normalize import normalize
from jnorm._stats import shifted_moments
from jnorm._typing import Axes

__all__ = ["kernel_norm", "scaled_standardize_weight", "standardize_weight", "weight_norm"]



def _fan_in(kernel: Any, feature_axes: Axes, name: str) -> tuple[jax.Array, tuple, tuple, int]:
    kernel = as_kernel(kernel, layer=name)
    feat = canonicalize_axes(feature_axes, kernel.ndim, name="feature_axes")
    red = complement_axes(feat, kernel.ndim)
    if not red:
        raise ValueError(
            f"{name}: `feature_axes`={feature_axes!r} leaves no fan-in axis of the kernel of "
            f"shape {kernel.shape}. Name only the output-unit axes (usually -1)."
        )
    n = 1
    for a in red:
        n *= kernel.shape[a]
    return kernel, feat, red, n


def _feature_operand(p: Any, kernel: jax.Array, feat: tuple, arg: str, name: str) -> jax.Array:
    p = jnp.asarray(p)
    fshape = tuple(kernel.shape[a] for a in feat)
    if p.shape != fshape and p.shape != ():
        raise ValueError(
            f"{name}: `{arg}` has shape {p.shape}; expected {fshape} (one per output unit) or a "
            "scalar."
        )
    shape = [1] * kernel.ndim
    if p.shape:
        for a in feat:
            shape[a] = kernel.shape[a]
    return p.reshape(shape)


def standardize_weight(
    kernel: jax.Array, *, feature_axes: Axes = -1, epsilon: float = 1e-5
) -> jax.Array:
    r"""Weight standardization (Qiao et al. 2019, arXiv:1903.10520, Eq. 5-7).

    .. math::  \hat W_{i,\cdot} = \frac{W_{i,\cdot} - \mu_{W_i}}{\sqrt{\sigma^2_{W_i} +
               \epsilon}}, \qquad \mu, \sigma^2 \text{ over the fan-in of output unit } i

    (biased variance, as in the paper's Eq. 7; the authors' code uses the unbiased standard
    deviation plus epsilon, a ``sqrt(N / (N - 1))`` difference). Meant to be combined with an
    activation norm (group norm) and trained through: gradients flow through mean and variance.

    Shapes: ``kernel: [..., O]`` with the output units on ``feature_axes``; returns its shape and
    dtype.

    Examples:
      >>> import jax.numpy as jnp, jnorm
      >>> w = jnorm.standardize_weight(jnp.array([[1.0, 0.0], [3.0, 4.0]]), epsilon=0.0)
      >>> w.tolist()
      [[-1.0, -1.0], [1.0, 1.0]]
    """
    kernel, _, red, _ = _fan_in(kernel, feature_axes, "standardize_weight")
    check_epsilon(epsilon, layer="standardize_weight")
    m = shifted_moments(kernel, red)
    return normalize(kernel, m.mean_shifted, m.var, epsilon=epsilon, shift=m.shift)


def scaled_standardize_weight(
    kernel: jax.Array,
    gain: jax.Array | None = None,
    *,
    feature_axes: Axes = -1,
    nonlinearity_gain: float = 1.0,
    epsilon: float = 1e-4,
) -> jax.Array:
    r"""Scaled weight standardization (Brock et al. 2021, arXiv:2101.08692, Eq. 3; NFNets).

    .. math::  \hat W_{i,\cdot} = \gamma\, g_i \frac{W_{i,\cdot} - \mu_{W_i}}
               {\sqrt{N \sigma^2_{W_i} + \epsilon}}

    with ``N`` the fan-in, ``g`` the learned ``gain`` (``[O]``, initialised to 1) and ``gamma``
    the ``nonlinearity_gain`` that keeps the activation's output variance at 1 (``sqrt(2 /
    (1 - 1/pi))`` ~ 1.7139 for ReLU, per the paper). NFNets' reference code uses
    ``rsqrt(max(N var, eps))``; here epsilon is added, as in every jnorm layer.

    Shapes: ``kernel: [..., O]``; ``gain: [O]`` or scalar. Returns the kernel's shape and dtype.

    Examples:
      >>> import jax, jax.numpy as jnp, jnorm
      >>> w = jax.random.normal(jax.random.key(0), (256, 4))
      >>> x = jax.random.normal(jax.random.key(1), (4096, 256))
      >>> y = x @ jnorm.scaled_standardize_weight(w, epsilon=0.0)
      >>> bool(jnp.allclose(y.var(0), 1.0, atol=0.1))
      True
    """
    kernel, feat, red, n = _fan_in(kernel, feature_axes, "scaled_standardize_weight")
    check_epsilon(epsilon, layer="scaled_standardize_weight")
    m = shifted_moments(kernel, red)
    g = jnp.asarray(nonlinearity_gain, m.var.dtype)
    if gain is not None:
        g = g * _feature_operand(gain, kernel, feat, "gain", "scaled_standardize_weight").astype(
            m.var.dtype
        )
    return normalize(
        kernel, m.mean_shifted, m.var * n, g, epsilon=epsilon, shift=m.shift
    )


def weight_norm(
    v: jax.Array, g: jax.Array | None = None, *, feature_axes: Axes = -1, epsilon: float = 0.0
) -> jax.Array:
    r"""Weight normalization (Salimans & Kingma 2016, arXiv:1602.07868, Eq. 2).

    .. math::  w_{\cdot,i} = g_i \frac{v_{\cdot,i}}{\sqrt{\lVert v_{\cdot,i} \rVert^2 +
               \epsilon}}

    per output unit ``i`` (norm over the fan-in). With ``g = ||v||`` at initialisation the layer
    computes exactly what it computed before (PyTorch's ``weight_norm`` initialises so;
    :class:`jnorm.linen.WeightNorm` does too).

    Shapes: ``v: [..., O]``; ``g: [O]`` or scalar (None: unit-norm columns). Returns ``v``'s shape
    and dtype.

    Examples:
      >>> import jax.numpy as jnp, jnorm
      >>> jnorm.weight_norm(jnp.array([[3.0], [4.0]]), jnp.array([10.0])).tolist()
      [[6.0], [8.0]]
    """
    v, feat, red, n = _fan_in(v, feature_axes, "weight_norm")
    check_epsilon(epsilon, layer="weight_norm")
    m = shifted_moments(v, red, center=False)
    scale = None
    if g is not None:
        scale = _feature_operand(g, v, feat, "g", "weight_norm")
    return normalize(v, jnp.zeros((), m.var.dtype), m.var * n, scale, epsilon=epsilon)


def kernel_norm(kernel: jax.Array, *, feature_axes: Axes = -1) -> jax.Array:
    """The L2 norm of each output unit's fan-in weights: ``g`` that makes :func:`weight_norm`
    the identity (shape: the feature shape, e.g. ``[O]``)."""
    kernel, feat, red, n = _fan_in(kernel, feature_axes, "kernel_norm")
    m = shifted_moments(kernel, red, center=False)
    return jnp.sqrt(m.var * n).reshape(tuple(kernel.shape[a] for a in feat)).astype(kernel.dtype)
