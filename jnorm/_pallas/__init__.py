"""Fused Pallas kernels for row norms (layer norm and RMS norm over the last axis).

The kernels compute exactly what :func:`jnorm._normalize.normalize_over` computes
(corrected two-pass statistics: the row's mean, then shifted sums around it; then the
affine scheme), in one read of each row block. The pure-JAX path is both their fallback and
their test oracle (``tests/core/test_pallas.py`` runs them in Pallas interpret mode on CPU).

Importing this package imports no Pallas: :func:`row_norm` (the one entry point of the
layers, :mod:`jnorm._pallas._dispatch`) decides per call, platform and sharding which program
runs and imports the kernels (:mod:`jnorm._pallas._row_norm`) only where one does.
:func:`suits` says where the forward kernel pays, :func:`unsupported` what it cannot serve;
``row_norm_forward`` / ``row_norm_backward`` (the kernels) load on first access.
"""

from __future__ import annotations

from typing import Any

from jnorm._pallas._dispatch import may_take_kernel as may_take_kernel
from jnorm._pallas._dispatch import row_norm as row_norm
from jnorm._pallas._support import AUTO_MIN_D as AUTO_MIN_D
from jnorm._pallas._support import block_rows as block_rows
from jnorm._pallas._support import suits as suits
from jnorm._pallas._support import unsupported as unsupported

__all__ = [
    "AUTO_MIN_D", "block_rows", "may_take_kernel", "row_norm", "row_norm_backward",
    "row_norm_forward", "suits", "unsupported",
]


def __getattr__(name: str) -> Any:
    """``row_norm_forward`` / ``row_norm_backward``: the kernels, imported on first access."""
    if name in ("row_norm_forward", "row_norm_backward"):
        from jnorm._pallas import _row_norm

        return getattr(_row_norm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
