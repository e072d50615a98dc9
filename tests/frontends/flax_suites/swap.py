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
# The nnx suite compares nnx with linen, so it swaps jnorm's wrappers in on both sides too
# (linen's NormalizationTest checks flax's own wrapper conventions, e.g. g = 1 at init).
NNX_SUITE = (*SWAPPED, "WeightNorm", "SpectralNorm")


class _Swapped(types.ModuleType):
    """A module that is ``base`` except for the names taken from ``ours``."""

    def __init__(
        self, base: types.ModuleType, ours: types.ModuleType, names: tuple[str, ...]
    ) -> None:
        super().__init__(base.__name__, base.__doc__)
        self._base = base
        self._ours = {name: getattr(ours, name) for name in names}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._ours[name] if name in self._ours else getattr(self._base, name)


linen = _Swapped(flax.linen, jnorm.linen, SWAPPED)  # for linen_test.py
nnx_suite_linen = _Swapped(flax.linen, jnorm.linen, NNX_SUITE)  # for nnx_normalization_test.py
nnx = _Swapped(flax.nnx, jnorm.nnx, NNX_SUITE)
