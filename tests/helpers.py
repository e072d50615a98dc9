"""One list of layers and their float64 NumPy oracles, shared by every test module.

Each :class:`Case` knows how to call a jnorm layer function on an ``(N, ..., C)`` input and
which axes its statistics cover; the float64 oracle is then computed straight from the
definition ``y = a * (x - mean) / sqrt(var + eps) + b``. Tests loop over ``CASES``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

import jnorm


def ref_norm(
    x: np.ndarray,
    axes: tuple[int, ...],
    *,
    epsilon: float,
    center: bool = True,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """float64 reference of the standardisation over `axes` (no scale/bias)."""
    x = np.asarray(x, np.float64)
    w = np.ones_like(x) if mask is None else np.broadcast_to(mask, x.shape).astype(np.float64)
    n = np.maximum(w.sum(axes, keepdims=True), 1.0)
    mean = (w * x).sum(axes, keepdims=True) / n if center else 0.0
    var = (w * (x - mean) ** 2).sum(axes, keepdims=True) / n
    return (x - mean) / np.sqrt(var + epsilon)


def channel_param(p: Any, ndim: int) -> np.ndarray | None:
    """A per-channel vector reshaped to broadcast against an ``(N, ..., C)`` array."""
    return None if p is None else np.asarray(p, np.float64).reshape((1,) * (ndim - 1) + (-1,))


View = Callable[[np.ndarray], tuple[np.ndarray, tuple[int, ...]]]


def _batch_view(x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    return x, tuple(range(x.ndim - 1))


def _layer_view(x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    return x, (x.ndim - 1,)


def _instance_view(x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    return x, tuple(range(1, x.ndim - 1))


def _group_view(x: np.ndarray, groups: int = 2) -> tuple[np.ndarray, tuple[int, ...]]:
    xs = x.reshape(x.shape[:-1] + (groups, x.shape[-1] // groups))
    return xs, tuple(range(1, xs.ndim - 2)) + (xs.ndim - 1,)


@dataclasses.dataclass(frozen=True)
class Case:
    """A layer: how to call it with jnorm, and which axes its float64 oracle reduces over.

    ``view(x)`` reshapes an ``(N, ..., C)`` input (group norm splits C into 2 groups) and names
    the statistics axes of the view; scale and bias are per channel.
    """

    name: str
    call: Callable[..., jax.Array]  # (x, scale, bias, mask=None) -> y
    view: View
    epsilon: float
    center: bool = True
    has_bias: bool = True

    def __repr__(self) -> str:
        return self.name

    def ref(self, x: Any, scale: Any = None, bias: Any = None, mask: Any = None) -> np.ndarray:
        """float64 output of the definition."""
        x = np.asarray(x, np.float64)
        xv, axes = self.view(x)
        mv = None if mask is None else self.view(np.broadcast_to(mask, x.shape))[0]
        y = ref_norm(xv, axes, epsilon=self.epsilon, center=self.center, mask=mv)
        y = y.reshape(x.shape)
        if scale is not None:
            y = y * channel_param(scale, x.ndim)
        if bias is not None and self.has_bias:
            y = y + channel_param(bias, x.ndim)
        return y

    def ref_grad(self, x: Any, scale: Any, cotangent: Any) -> np.ndarray:
        """float64 gradient of ``sum(cotangent * y)`` w.r.t. ``x``, in closed form."""
        x = np.asarray(x, np.float64)
        g = np.asarray(cotangent, np.float64)
        if scale is not None:
            g = g * channel_param(scale, x.ndim)
        xv, axes = self.view(x)
        gv = self.view(g)[0]
        mu = xv.mean(axes, keepdims=True) if self.center else 0.0
        xc = xv - mu
        s2 = (xc**2).mean(axes, keepdims=True) + self.epsilon
        out = gv - (gv.mean(axes, keepdims=True) if self.center else 0.0)
        out = (out - xc / s2 * (gv * xc).mean(axes, keepdims=True)) / np.sqrt(s2)
        return out.reshape(x.shape)


def _bn_call(x: Any, scale: Any, bias: Any, mask: Any = None) -> jax.Array:
    state = jnorm.BatchStats.init(x.shape[-1])
    return jnorm.batch_norm(x, state, scale, bias, training=True, mask=mask)[0]


CASES = [
    Case("batch_norm", _bn_call, _batch_view, 1e-5),
    Case("layer_norm", lambda x, s, b, m=None: jnorm.layer_norm(x, s, b, mask=m), _layer_view,
         1e-6),
    Case("rms_norm", lambda x, s, b, m=None: jnorm.rms_norm(x, s, mask=m), _layer_view, 1e-6,
         center=False, has_bias=False),
    Case("instance_norm", lambda x, s, b, m=None: jnorm.instance_norm(x, s, b, mask=m),
         _instance_view, 1e-6),
    Case("group_norm", lambda x, s, b, m=None: jnorm.group_norm(x, s, b, num_groups=2, mask=m),
         _group_view, 1e-6),
]
CENTERED = [c for c in CASES if c.center]


def params(c: int, seed: int = 0, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """A random per-channel (scale, bias) pair."""
    rng = np.random.default_rng(seed)
    return ((1 + 0.5 * rng.standard_normal(c)).astype(dtype),
            rng.standard_normal(c).astype(dtype))


def data(shape: tuple[int, ...], *, offset: float = 0.0, spread: float = 1.0, seed: int = 0,
         dtype: Any = np.float32) -> np.ndarray:
    """``offset + spread * N(0, 1)`` rounded to `dtype` (the oracle sees the rounded values)."""
    rng = np.random.default_rng(seed)
    return np.asarray(offset + spread * rng.standard_normal(shape)).astype(dtype)


def as64(x: Any) -> np.ndarray:
    """Any array (bfloat16 too) as float64 NumPy."""
    return np.asarray(np.asarray(x).astype(np.float32) if str(np.asarray(x).dtype) == "bfloat16"
                      else np.asarray(x), np.float64)
