"""Small models for small images, with the normalization layer as a switch.

All normalization goes through ``jnorm.linen``. The MLP's depth is the number of hidden layers
(``hidden``); there are no residual connections, so a deep plain MLP is the hard case that
normalization is said to fix. The head size is the number of classes of the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import jnorm
import jnorm.linen as jnn

__all__ = ["CNN", "MLP", "NORMS", "Norm", "deep_mlp", "make_model", "scale_kernels"]

#: Width of every hidden layer of the MLPs of the depth axis.
DEPTH_WIDTH = 64

#: The normalization switches understood by :class:`Norm`.
NORMS: tuple[str, ...] = ("none", "batch", "layer", "group", "instance", "renorm",
                          "decorrelated", "iternorm")


class Norm(nn.Module):
    """One normalization layer chosen by name, applied to NHWC or NC activations.

    ``layer`` normalizes all features of one example (H, W and C for images, as in the
    group-norm paper, Wu & He 2018, Fig. 2), ``group`` uses ``min(num_groups, C)`` groups,
    ``instance`` needs spatial axes. ``renorm`` is batch renormalization with the
    ``r_max``/``d_max`` warm-up of :func:`jnorm.batch_renorm_schedule` stretched over
    ``renorm_steps`` training steps (a step counter lives in ``batch_stats``);
    ``decorrelated`` (ZCA) and ``iternorm`` (Newton–Schulz) whiten groups of ``group_size``
    features.
    """

    kind: str = "none"
    bn_momentum: float = 0.9
    num_groups: int = 4
    group_size: int = 16
    renorm_steps: int = 1000

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.kind == "none":
            return x
        if self.kind == "batch":
            return jnn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum)(x)
        if self.kind == "layer":
            return jnn.LayerNorm(reduction_axes=tuple(range(1, x.ndim)), feature_axes=-1)(x)
        if self.kind == "group":
            gn = jnn.GroupNorm(num_groups=min(self.num_groups, x.shape[-1]))
            if x.ndim == 2:  # jnorm wants a spatial axis; a length-1 one changes nothing
                return gn(x[:, None, :])[:, 0, :]
            return gn(x)
        if self.kind == "instance":
            if x.ndim < 3:
                raise ValueError("instance norm needs spatial axes (NHWC input); "
                                 "use it in the CNN, not the MLP")
            return jnn.InstanceNorm()(x)
        if self.kind == "renorm":
            step = self.variable("batch_stats", "renorm_step", lambda: jnp.zeros((), jnp.int32))
            total = self.renorm_steps
            r_max, d_max = jnorm.batch_renorm_schedule(
                step.value, warmup_steps=max(total // 10, 1), r_max_steps=max(total // 2, 2),
                d_max_steps=max(int(0.35 * total), 2))
            y = jnn.BatchRenorm(use_running_average=not train, momentum=self.bn_momentum)(
                x, r_max=r_max, d_max=d_max)
            if train and not self.is_initializing():
                step.value = step.value + 1
            return y
        if self.kind in ("decorrelated", "iternorm"):
            cls = jnn.DecorrelatedBatchNorm if self.kind == "decorrelated" else jnn.IterNorm
            return cls(use_running_average=not train, group_size=min(self.group_size,
                                                                     x.shape[-1]),
                       momentum=self.bn_momentum)(x)
        raise ValueError(f"unknown norm {self.kind!r}; choose one of {NORMS}")


class CNN(nn.Module):
    """[conv3×3(w) → norm → relu] × (depth − 1) → conv3×3(2w, stride 2) → norm → relu →
    [dropout] → dense (no residual connections)."""

    num_classes: int
    norm: str = "none"
    width: int = 8
    depth: int = 2
    dropout: float = 0.0
    bn_momentum: float = 0.9

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for _ in range(self.depth - 1):
            x = nn.Conv(self.width, (3, 3))(x)
            x = nn.relu(Norm(self.norm, self.bn_momentum)(x, train))
        x = nn.Conv(2 * self.width, (3, 3), strides=(2, 2))(x)
        x = nn.relu(Norm(self.norm, self.bn_momentum)(x, train))
        x = x.reshape(x.shape[0], -1)
        if self.dropout:
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


class MLP(nn.Module):
    """flatten → [dense → norm → relu → [dropout]] × len(hidden) → dense."""

    num_classes: int
    norm: str = "none"
    hidden: Sequence[int] = (64, 64)
    dropout: float = 0.0
    bn_momentum: float = 0.9
    renorm_steps: int = 1000

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = nn.Dense(width)(x)
            x = nn.relu(Norm(self.norm, self.bn_momentum, num_groups=8,
                             renorm_steps=self.renorm_steps)(x, train))
            if self.dropout:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


def make_model(arch: str, norm: str = "none", *, num_classes: int, **kwargs: Any) -> nn.Module:
    """``make_model("cnn" | "mlp", norm, num_classes=K, **attributes)``."""
    if arch == "cnn":
        return CNN(num_classes=num_classes, norm=norm, **kwargs)
    if arch == "mlp":
        if "hidden" in kwargs:
            kwargs["hidden"] = tuple(kwargs["hidden"])
        return MLP(num_classes=num_classes, norm=norm, **kwargs)
    raise ValueError(f"unknown architecture {arch!r}; choose 'cnn' or 'mlp'")


def scale_kernels(params: Any, scale: float | jax.Array) -> Any:
    """Multiplies every ``kernel`` (conv and dense weights) by ``scale``; other leaves unchanged."""

    def f(path: tuple, leaf: jax.Array) -> jax.Array:
        name = getattr(path[-1], "key", None)
        return leaf * jnp.asarray(scale, leaf.dtype) if name == "kernel" else leaf

    return jax.tree_util.tree_map_with_path(f, params)


def deep_mlp(norm: str, depth: int, *, num_classes: int, **kwargs: Any) -> nn.Module:
    """An MLP with ``depth`` hidden layers of :data:`DEPTH_WIDTH` units (no residuals)."""
    return make_model("mlp", norm, num_classes=num_classes, hidden=(DEPTH_WIDTH,) * depth,
                      **kwargs)
