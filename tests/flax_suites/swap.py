"""``flax.linen`` and ``flax.nnx`` with jnorm's normalization classes swapped in.

The vendored flax test files import ``nn`` / ``linen`` / ``nnx`` from here instead of from
flax (their only change): every other name is flax's own.
"""

from __future__ import annotations

import types
from typing import Any

import flax.linen
import flax.nnx

import jnorm.linen
import jnorm.nnx

SWAPPED = ("BatchNorm", "LayerNorm", "RMSNorm", "GroupNorm", "InstanceNorm")


class _Swapped(types.ModuleType):
    """A module that is ``base`` except for the names taken from ``ours``."""

    def __init__(self, base: types.ModuleType, ours: types.ModuleType) -> None:
        super().__init__(base.__name__, base.__doc__)
        self._base = base
        self._ours = {name: getattr(ours, name) for name in SWAPPED}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._ours[name] if name in self._ours else getattr(self._base, name)


linen = _Swapped(flax.linen, jnorm.linen)
nnx = _Swapped(flax.nnx, jnorm.nnx)
