"""Fused Pallas kernels for row norms (layer norm and RMS norm over the last axis).

The kernels compute exactly what :func:`jnorm._normalize.normalize_with_moments` computes
(corrected two-pass statistics: the row's mean, then shifted sums around it; then the
affine scheme), in one
read of each row block. The pure-JAX path is both their fallback and their test oracle
(``tests/test_pallas.py`` runs them in Pallas interpret mode on CPU).

:func:`suits` says when the forward kernel is used automatically (on GPU, for shapes that
fit Triton's power-of-two blocks); :func:`row_norm_backward` is the matching fused backward
(input gradient plus per-program partial column sums for the parameters).
"""

from jnorm._pallas._row_norm import block_rows as block_rows
from jnorm._pallas._row_norm import row_norm_backward as row_norm_backward
from jnorm._pallas._row_norm import row_norm_forward as row_norm_forward
from jnorm._pallas._row_norm import suits as suits
from jnorm._pallas._row_norm import unsupported as unsupported

__all__ = ["block_rows", "row_norm_backward", "row_norm_forward", "suits", "unsupported"]
