r"""Local response normalization (Krizhevsky, Sutskever & Hinton 2012, "ImageNet Classification
with Deep Convolutional Neural Networks", Section 3.3).

Each activation is divided by a power of the summed squares of its neighbours *across
channels* at the same position (a form of lateral inhibition):

.. math::  b_c = a_c \Big/ \Big(k + \alpha' \sum_{c' \in \mathrm{window}(c)} a_{c'}^2\Big)^{\beta}

Two conventions are in use, and they differ in what ``alpha`` and the window size mean:

================  ==============================================  ===============================
\                 PyTorch ``nn.LocalResponseNorm(size, alpha,     TensorFlow ``tf.nn.local_
                  beta, k)``                                      response_normalization(
                                                                  depth_radius, bias, alpha,
                                                                  beta)``
================  ==============================================  ===============================
window of ``c``   ``c - size//2 .. c + (size-1)//2`` (``size``    ``c - r .. c + r``
                  channels, zero-padded; an even ``size`` has     (``r = depth_radius``,
                  one more channel *before* ``c``)                ``2r + 1`` channels)
``alpha'``        ``alpha / size`` (an average of squares)        ``alpha`` (a sum of squares)
constant          ``k``                                           ``bias``
defaults          ``size=5, alpha=1e-4, beta=0.75, k=1``          ``depth_radius=5, bias=1,
                                                                  alpha=1, beta=0.5``
================  ==============================================  ===============================

:func:`local_response_norm` takes PyTorch's names and defaults; ``convention="tensorflow"``
only changes ``alpha'`` to ``alpha`` (and requires an odd ``size = 2 * depth_radius + 1``, the
windows then being the same). :func:`lrn_tensorflow_args` converts TensorFlow's arguments,
defaults included: ``local_response_norm(x, **lrn_tensorflow_args(depth_radius=2))``.
The paper's own hyperparameters (``k = 2, n = 5, alpha = 1e-4, beta = 0.75``, alpha *not*
divided by ``n``) are TensorFlow's convention with ``depth_radius = 2``.

The windowed sum of squares is a direct ``lax.reduce_window`` sum of at most ``size`` terms in
at least float32 (half inputs are upcast); the output has the input's dtype. A cumulative-sum
difference would be cheaper for wide windows but loses the small windows after large ones
(measured in float32: relative error 6.8 on channels of scale 0.1 following channels of scale
300, against 2e-7 for the direct sum).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jnorm._axes import one_axis
from jnorm._checks import as_input, as_positive_int, check_dtype, check_nonnegative
from jnorm._normalize import output_dtype
from jnorm._stats import accumulation_dtype
from jnorm._typing import DTypeLike, Scalar

__all__ = ["local_response_norm", "lrn_tensorflow_args"]

_CONVENTIONS = ("torch", "tensorflow")



def local_response_norm(
    x: jax.Array,
    *,
    size: int = 5,
    alpha: Scalar = 1e-4,
    beta: Scalar = 0.75,
    k: Scalar = 1.0,
    feature_axes: int = -1,
    convention: str = "torch",
    dtype: DTypeLike | None = None,
) -> jax.Array:
    r"""Local response normalization across channels (Krizhevsky et al. 2012, Section 3.3).

    .. math::  b_c = \frac{a_c}{\big(k + \alpha' \sum_{c'=c-\lfloor s/2 \rfloor}^{c +
               \lfloor (s-1)/2 \rfloor} a_{c'}^2\big)^{\beta}}, \qquad
               \alpha' = \begin{cases} \alpha / s & \text{convention="torch"} \\
               \alpha & \text{convention="tensorflow"} \end{cases}

    with ``s = size`` and channels outside ``0 .. C-1`` counting as zero. ``convention="torch"``
    is exactly ``torch.nn.functional.local_response_norm(x, size, alpha, beta, k)`` (also for
    an even ``size``); ``convention="tensorflow"`` is
    ``tf.nn.local_response_normalization(x, depth_radius=(size - 1) // 2, bias=k, alpha=alpha,
    beta=beta)`` and needs an odd ``size``: use :func:`lrn_tensorflow_args` to convert
    TensorFlow's arguments (its defaults differ: ``depth_radius=5, bias=1, alpha=1,
    beta=0.5``). See the module docstring for the two conventions side by side.

    No parameters are learned. The sum of squares is accumulated in at least float32.

    Shapes: ``x: [N, ..., C]`` (``feature_axes=-1``, flax's layout) or ``[N, C, ...]``
    (``feature_axes=1``, PyTorch's); any rank >= 1. Returns ``x``'s shape and dtype (``dtype``
    overrides; integers give float32). Complex ``x`` is an error (as in PyTorch and TensorFlow).

    Args:
      x: the activations.
      size: number of channels in the window (``>= 1``; odd for ``convention="tensorflow"``).
      alpha: scale of the sum of squares (``>= 0``); divided by ``size`` in the torch convention.
      beta: exponent (``>= 0``).
      k: additive constant (``>= 0``; TensorFlow's ``bias``, the paper's ``k``).
      feature_axes: the channel axis, which the window slides along (one axis).
      convention: ``"torch"`` (default) or ``"tensorflow"``.
      dtype: output dtype (default: the input's).

    Examples:
      >>> import jax.numpy as jnp, jnorm
      >>> x = jnp.array([[1.0, 2.0, 3.0]])  # one position, C=3
      >>> # window of channel 0 (size 3): channels -1..1 -> 0 + 1 + 4 = 5
      >>> y = jnorm.local_response_norm(x, size=3, alpha=3.0, beta=1.0, k=1.0)
      >>> [round(v, 4) for v in y[0].tolist()]  # 1/(1+5), 2/(1+14), 3/(1+13)
      [0.1667, 0.1333, 0.2143]
      >>> yt = jnorm.local_response_norm(x, **jnorm.lrn_tensorflow_args(depth_radius=1, alpha=1.0))
      >>> [round(v, 4) for v in yt[0].tolist()]  # (1 + sum)^-0.5, alpha not divided
      [0.4082, 0.5164, 0.8018]
    """
    x = as_input(x, layer="local_response_norm")
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        # The float32 accumulation below would drop the imaginary part, and x * x of a complex
        # value is no energy: neither PyTorch nor TensorFlow defines LRN on complex input.
        raise TypeError(
            f"local_response_norm: `x` is complex ({x.dtype}); local response normalization is "
            "defined for real activations. Pass the real and imaginary parts as channels "
            "(jnp.concatenate([x.real, x.imag], axis=feature_axes)), or normalize jnp.abs(x)."
        )
    if convention not in _CONVENTIONS:
        raise ValueError(
            f"local_response_norm: `convention` must be one of {_CONVENTIONS}, got "
            f"{convention!r}."
        )
    size = as_positive_int(size, "size", layer="local_response_norm")
    if convention == "tensorflow" and size % 2 == 0:
        raise ValueError(
            f"local_response_norm: `size`={size} is even; the TensorFlow convention's window is "
            "2 * depth_radius + 1 channels. Use jnorm.lrn_tensorflow_args(depth_radius, ...) or "
            "convention='torch' for an even window."
        )
    for name, value in (("alpha", alpha), ("beta", beta), ("k", k)):
        check_nonnegative(value, name, layer="local_response_norm")
    check_dtype(dtype, layer="local_response_norm")
    ch = one_axis(feature_axes, x.ndim, "feature_axes")
    acc = accumulation_dtype(x.dtype)
    if not jnp.issubdtype(acc, jnp.floating):
        acc = jnp.dtype(jnp.float32)
    xa = x.astype(acc)
    window = [1] * x.ndim
    window[ch] = size
    padding = [(0, 0)] * x.ndim
    padding[ch] = (size // 2, (size - 1) // 2)  # torch's zero padding; symmetric when odd
    sq_sum = lax.reduce_window(
        xa * xa, np.array(0, acc), lax.add, tuple(window), (1,) * x.ndim, tuple(padding)
    )
    a = jnp.asarray(alpha, acc)
    if convention == "torch":
        a = a / size
    den = jnp.asarray(k, acc) + a * sq_sum
    y = xa * den ** (-jnp.asarray(beta, acc))
    return y.astype(output_dtype(x.dtype, dtype))


def lrn_tensorflow_args(
    depth_radius: int = 5, bias: Scalar = 1.0, alpha: Scalar = 1.0, beta: Scalar = 0.5
) -> dict[str, Any]:
    """Keyword arguments for :func:`local_response_norm` that reproduce
    ``tf.nn.local_response_normalization(x, depth_radius, bias, alpha, beta)`` (TensorFlow's
    defaults included): ``size = 2 * depth_radius + 1``, ``k = bias``, ``alpha`` not divided by
    the window size.

    Examples:
      >>> import jnorm
      >>> jnorm.lrn_tensorflow_args(2)
      {'size': 5, 'alpha': 1.0, 'beta': 0.5, 'k': 1.0, 'convention': 'tensorflow'}
    """
    depth_radius = as_positive_int(
        depth_radius, "depth_radius", minimum=0, layer="lrn_tensorflow_args"
    )
    return {"size": 2 * depth_radius + 1, "alpha": alpha, "beta": beta, "k": bias,
            "convention": "tensorflow"}
