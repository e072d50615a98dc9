"""What the fused row-norm kernels can compute and when they are worth it (no Pallas import).

Everything here is plain Python on shapes, dtypes and shardings, so the automatic choice can
be made, and explicit requests refused, without importing ``jax.experimental.pallas``.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "AUTO_MIN_D", "BACKWARD_CONFIG", "FORWARD_CONFIG", "block_rows", "sharded_features",
    "suits", "unsupported", "varying_axes",
]

#: The forward's launch configuration ``(elements per row block, warps per program)``; one
#: row block is held at once (in registers on GPU). Chosen with ``python -m benchmarks.bench
#: --tune``: see docs/benchmarks.md.
FORWARD_CONFIG = (2048, 8)
#: The backward's ``(elements per row block, warps, row blocks per program)``, chosen alike
#: (the warps grow with ``D`` beyond 4096, see :func:`jnorm._pallas.row_norm_backward`).
BACKWARD_CONFIG = (4096, 8, 64)
MIN_D, MAX_D = 128, 16384
#: Smallest feature size for which the forward kernel is used automatically (layer norm):
#: the smallest where it measured faster than XLA (docs/benchmarks.md).
AUTO_MIN_D = 256


def block_rows(rows: int, d: int, block_elements: int = FORWARD_CONFIG[0]) -> int:
    """Rows per block: the largest power of two ``br`` with ``br * d <= block_elements`` that
    divides `rows` (at least 1).

    >>> block_rows(256, 128, 8192), block_rows(24, 512, 8192), block_rows(256, 128, 1024)
    (64, 8, 8)
    """
    br = max(1, block_elements // d)
    br = 1 << (br.bit_length() - 1)
    while br > 1 and rows % br:
        br //= 2
    return br


def sharded_features(x: Any) -> tuple[str, ...]:
    """The mesh axes that explicitly shard the last axis of `x` (empty if it is whole).

    Read from ``x``'s type (explicit sharding, :class:`jax.sharding.AxisType` ``Explicit``);
    inputs sharded by the partitioner (``Auto`` axes) have no sharding in their type.
    """
    spec = tuple(getattr(getattr(_aval(x), "sharding", None), "spec", None) or ())
    if len(spec) < x.ndim or spec[x.ndim - 1] is None:
        return ()
    last = spec[x.ndim - 1]
    return tuple(last) if isinstance(last, (tuple, list)) else (last,)


def _aval(x: Any) -> Any:
    typeof = getattr(jax, "typeof", None)
    return typeof(x) if typeof is not None else getattr(x, "aval", None)


def varying_axes(x: Any) -> frozenset[str]:
    """The manual mesh axes `x` varies over (inside a ``shard_map`` with ``check_vma``)."""
    aval = _aval(x)
    mat = getattr(aval, "manual_axis_type", None)
    return frozenset(getattr(mat, "varying", None) or getattr(aval, "vma", None) or ())


def unsupported(x: jax.Array, axes: tuple[int, ...], *params: Any) -> str | None:
    """Why the forward kernel cannot compute this call, or None if it can.

    >>> unsupported(jnp.zeros((8, 256)), (1,)) is None
    True
    >>> unsupported(jnp.zeros((8, 100)), (1,))
    'the last axis has size 100, and the kernel needs a power of two in [128, 16384]'
    """
    if x.ndim < 2 or axes != (x.ndim - 1,):
        return (f"the statistics are over axes {axes} of a {x.ndim}-d input, and the kernel "
                "needs exactly the last axis of an input with at least 2 axes")
    if x.dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
        return f"the input is {x.dtype}, and the kernel needs float32, bfloat16 or float16"
    d = x.shape[-1]
    if d < MIN_D or d > MAX_D or d & (d - 1):
        return (f"the last axis has size {d}, and the kernel needs a power of two in "
                f"[{MIN_D}, {MAX_D}]")
    if not all(p is None or p.shape == (1,) * (x.ndim - 1) + (d,) for p in params):
        return "the parameters vary along other axes than the last, and the kernel needs (D,)"
    split = sharded_features(x)
    if split:
        spec = tuple(_aval(x).sharding.spec) + (None,) * x.ndim
        rows = ", ".join(repr(a) for a in spec[: x.ndim - 1])
        return (f"the last axis is sharded over mesh axes {split}, and the kernel needs whole "
                "rows on each device (it runs per shard of the other axes); reshard the "
                f"input so its last axis is whole: jax.sharding.reshard(x, P({rows}, None))")
    return None


def suits(x: jax.Array, axes: tuple[int, ...], *params: Any, center: bool = True) -> bool:
    """Whether the fused forward kernel is worth using for this call on an NVIDIA GPU.

    The kernels handle the last axis of a float array whose size is a power of two in
    ``[128, 16384]``, with per-feature (or no) parameters. The forward kernel is used
    automatically only where it measured faster than XLA's fusion (docs/benchmarks.md): layer
    norm with ``D >= AUTO_MIN_D``, not RMS norm (XLA's own fusion was faster there), and not
    an empty batch. The platform is decided later, per lowering (:mod:`jnorm._pallas._dispatch`).
    The environment variable ``JNORM_PALLAS=0`` turns the automatic choice off everywhere.

    >>> suits(jnp.zeros((8, 1024)), (1,)), suits(jnp.zeros((8, 1024)), (1,), center=False)
    (True, False)
    """
    if os.environ.get("JNORM_PALLAS", "1") == "0":
        return False
    if not center or x.size == 0 or unsupported(x, axes, *params) is not None:
        return False
    return x.shape[-1] >= AUTO_MIN_D
