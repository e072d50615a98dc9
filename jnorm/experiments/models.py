"""Tiny models for 8×8 images, with the normalization layer as a switch.

All normalization goes through ``jnorm.linen`` (drop-ins for flax.linen's modules).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import jnorm.linen as jnn

__all__ = ["CNN", "MLP", "NORMS", "Norm", "make_model", "scale_kernels"]

#: The normalization switches understood by :class:`Norm`.
NORMS: tuple[str, ...] = ("none", "batch", "layer", "group", "instance")


class Norm(nn.Module):
    """One normalization layer chosen by name, applied to NHWC or NC activations.

    ``layer`` normalizes all features of one example (H, W and C for images, as in the notes and
    the group-norm paper), ``group`` uses ``min(num_groups, C)`` groups, ``instance`` needs
    spatial axes.
    """

    kind: str = "none"
    bn_momentum: float = 0.9
    num_groups: int = 4

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
        raise ValueError(f"unknown norm {self.kind!r}; choose one of {NORMS}")


class CNN(nn.Module):
    """conv3×3(w) → norm → relu → conv3×3(2w, stride 2) → norm → relu → [dropout] → dense."""

    norm: str = "none"
    width: int = 8
    num_classes: int = 10
    dropout: float = 0.0
    bn_momentum: float = 0.9

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
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

    norm: str = "none"
    hidden: Sequence[int] = (64, 64)
    num_classes: int = 10
    dropout: float = 0.0
    bn_momentum: float = 0.9

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = nn.Dense(width)(x)
            x = nn.relu(Norm(self.norm, self.bn_momentum, num_groups=8)(x, train))
            if self.dropout:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


def make_model(arch: str, norm: str = "none", **kwargs) -> nn.Module:
    """``make_model("cnn" | "mlp", norm, **attributes)``."""
    if arch == "cnn":
        return CNN(norm=norm, **kwargs)
    if arch == "mlp":
        if "hidden" in kwargs:
            kwargs["hidden"] = tuple(kwargs["hidden"])
        return MLP(norm=norm, **kwargs)
    raise ValueError(f"unknown architecture {arch!r}; choose 'cnn' or 'mlp'")


def scale_kernels(params: Any, scale: float | jax.Array) -> Any:
    """Multiplies every ``kernel`` (conv and dense weights) by ``scale``; other leaves unchanged."""

    def f(path: tuple, leaf: jax.Array) -> jax.Array:
        name = getattr(path[-1], "key", None)
        return leaf * jnp.asarray(scale, leaf.dtype) if name == "kernel" else leaf

    return jax.tree_util.tree_map_with_path(f, params)
