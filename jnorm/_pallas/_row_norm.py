"""Pallas kernels: layer norm / RMS norm forward and backward over the last axis of (R, D)."""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

__all__ = ["block_rows", "row_norm_backward", "row_norm_forward", "suits", "unsupported"]

#: The forward's launch configuration ``(elements per row block, warps per program)``; one
#: row block is held at once (in registers on GPU). Chosen with ``python -m benchmarks.bench
#: --tune`` on an H200 at (131072, 1024) and (32768, 4096): see docs/benchmarks.md.
FORWARD_CONFIG = (2048, 8)
#: The backward's ``(elements per row block, warps, row blocks per program)``, chosen alike
#: (the warps grow with ``D`` beyond 4096, see :func:`row_norm_backward`).
BACKWARD_CONFIG = (4096, 8, 64)
_MIN_D, _MAX_D = 128, 16384
#: Smallest feature size for which the forward kernel is used automatically (layer norm):
#: the smallest measured, where it took 0.79x flax's time (H200, (524288, 256)).
AUTO_MIN_D = 256


def _triton_params(num_warps: int) -> Any:
    """Triton on GPU (jax's default GPU Pallas backend, Mosaic GPU, limits block copies)."""
    if num_warps < 1 or num_warps & (num_warps - 1):
        raise ValueError(f"num_warps must be a power of two >= 1, got {num_warps}")
    return pltriton.CompilerParams(num_warps=num_warps)


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


def suits(
    x: jax.Array, axes: tuple[int, ...], *params: Any, center: bool = True,
    backend: str | None = None,
) -> bool:
    """Whether the fused forward kernel is used for this call.

    The kernels handle the last axis of a float array whose size is a power of two in
    ``[128, 16384]``, with per-feature (or no) parameters. The forward kernel is used
    automatically on GPU only where it measured faster than XLA's fusion: layer norm with
    ``D >= AUTO_MIN_D`` (on an H200, 0.72-0.86x XLA's forward time at every ``D`` from 256 to
    16384), not RMS norm (XLA's fusion was 0.85-0.95x the kernel's time there). It serves
    plain evaluation only: the derivative rule computes its primal with XLA, which fuses it
    with the derivative's loops. The environment variable ``JNORM_PALLAS=0`` turns the
    automatic choice off everywhere; ``implementation="pallas"`` in :func:`jnorm.layer_norm`
    and :func:`jnorm.rms_norm` asks for the kernel whatever this says (in interpret mode off
    GPU), ``"xla"`` never uses it.
    """
    if os.environ.get("JNORM_PALLAS", "1") == "0":
        return False
    if (backend or jax.default_backend()) != "gpu":
        return False
    if unsupported(x, axes, *params) is not None:
        return False
    return center and x.shape[-1] >= AUTO_MIN_D


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
    if d < _MIN_D or d > _MAX_D or d & (d - 1):
        return (f"the last axis has size {d}, and the kernel needs a power of two in "
                f"[{_MIN_D}, {_MAX_D}]")
    if not all(p is None or p.shape == (1,) * (x.ndim - 1) + (d,) for p in params):
        return "the parameters vary along other axes than the last, and the kernel needs (D,)"
    return None


def _fwd_kernel(x_ref: Any, s_ref: Any, b_ref: Any, y_ref: Any, p_ref: Any, m_ref: Any,
                v_ref: Any, *, epsilon: float, center: bool) -> None:
    x = x_ref[...].astype(jnp.float32)
    d_size = x.shape[-1]
    if center:
        # Corrected two-pass statistics (jnorm._stats) on the row block held in registers:
        # the row's mean first, then the shifted sums around it.
        pivot = jnp.sum(x, axis=1) / d_size
        dev = x - pivot[:, None]
        mean = jnp.sum(dev, axis=1) / d_size
        var = jnp.maximum(jnp.sum(dev * dev, axis=1) / d_size - mean * mean, 0.0)
        centred = dev - mean[:, None]
        # Re-centred as shifted_moments returns them: the rounded mean and the rest.
        pivot, mean = pivot + mean, (pivot - (pivot + mean)) + mean
    else:
        pivot = jnp.zeros((x.shape[0],), jnp.float32)
        mean = pivot
        var = jnp.sum(x * x, axis=1) / d_size
        centred = x
    r = lax.rsqrt(var + epsilon)
    y = centred * r[:, None] * s_ref[...].astype(jnp.float32)[None, :]
    y = y + b_ref[...].astype(jnp.float32)[None, :]
    y_ref[...] = y.astype(y_ref.dtype)
    p_ref[...] = pivot
    m_ref[...] = mean
    v_ref[...] = var


def row_norm_forward(
    x: jax.Array, scale: jax.Array | None, bias: jax.Array | None, *, epsilon: float,
    center: bool = True, out_dtype: Any = None, interpret: bool = False,
    config: tuple[int, int] | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Fused forward over the last axis of ``x: [R, D]``.

    Returns ``(y, shift, mean_shifted, var)`` with the statistics of shape ``[R]`` in float32,
    as :func:`jnorm._stats.shifted_moments` defines them (``shift`` the row's first-pass mean,
    zero without centring). ``scale``/``bias``: ``[D]`` or None. ``config``: ``(elements per
    row block, warps per program)``, default :data:`FORWARD_CONFIG`.
    """
    rows, d = x.shape
    block_elements, num_warps = config or FORWARD_CONFIG
    br = block_rows(rows, d, block_elements)
    out_dtype = jnp.dtype(out_dtype or x.dtype)
    scale = jnp.ones((d,), jnp.float32) if scale is None else scale.reshape(d)
    bias = jnp.zeros((d,), jnp.float32) if bias is None else bias.reshape(d)
    stat = jax.ShapeDtypeStruct((rows,), jnp.float32)
    row_block = pl.BlockSpec((br, d), lambda i: (i, 0))
    vec = pl.BlockSpec((d,), lambda i: (0,))
    stat_block = pl.BlockSpec((br,), lambda i: (i,))
    return pl.pallas_call(
        functools.partial(_fwd_kernel, epsilon=float(epsilon), center=center),
        out_shape=(jax.ShapeDtypeStruct((rows, d), out_dtype), stat, stat, stat),
        grid=(rows // br,),
        in_specs=[row_block, vec, vec],
        out_specs=(row_block, stat_block, stat_block, stat_block),
        interpret=interpret,
        compiler_params=_triton_params(num_warps),
    )(x, scale, bias)


def _bwd_kernel(x_ref: Any, g_ref: Any, s_ref: Any, p_ref: Any, m_ref: Any, v_ref: Any,
                dx_ref: Any, ds_ref: Any, db_ref: Any, *, epsilon: float, center: bool,
                br: int, steps: int) -> None:
    """One program: `steps` row blocks of `br` rows in turn, column sums kept in registers."""
    d_size = x_ref.shape[-1]
    a = s_ref[...].astype(jnp.float32)[None, :]

    def block(j: Any, sums: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        rows = pl.ds(j * br, br)
        x = x_ref[rows, :].astype(jnp.float32)
        g = g_ref[rows, :].astype(jnp.float32)
        r = lax.rsqrt(v_ref[rows] + epsilon)[:, None]
        centred = (x - p_ref[rows][:, None]) - m_ref[rows][:, None] if center else x
        xhat = centred * r
        ag = g * a
        inner = ag - xhat * (jnp.sum(ag * xhat, axis=1)[:, None] / d_size)
        if center:
            inner = inner - jnp.sum(ag, axis=1)[:, None] / d_size
        dx_ref[rows, :] = (r * inner).astype(dx_ref.dtype)
        return sums[0] + jnp.sum(g * xhat, axis=0), sums[1] + jnp.sum(g, axis=0)

    zero = jnp.zeros((d_size,), jnp.float32)
    ds, db = lax.fori_loop(0, steps, block, (zero, zero))
    ds_ref[...] = ds[None, :]
    db_ref[...] = db[None, :]


def row_norm_backward(
    x: jax.Array, g: jax.Array, scale: jax.Array | None, shift: jax.Array,
    mean_shifted: jax.Array, var: jax.Array, *, epsilon: float, center: bool = True,
    interpret: bool = False, config: tuple[int, int, int] | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Fused backward of :func:`row_norm_forward` for the cotangent ``g: [R, D]``.

    Returns ``(dx, dscale, dbias)``: ``dx = r (a g - E[a g] - x̂ E[a g x̂])`` in one pass over
    ``x`` and ``g``, and the parameter gradients ``Σ g x̂`` and ``Σ g`` (float32, ``[D]``) as
    sums of per-program partial column sums. ``config``: ``(elements per row block, warps,
    row blocks per program)``, default :data:`BACKWARD_CONFIG`; each program walks its row
    blocks in a loop and writes one partial column sum, so more blocks per program means
    fewer partial sums to write and add up.
    """
    rows, d = x.shape
    if config is None:
        block_elements, num_warps, blocks = BACKWARD_CONFIG
        # The per-program column sums live in registers: wide rows need more threads (on an
        # H200 at (8192, 16384): 8 warps 4144 us, 32 warps 1182 us).
        num_warps = max(num_warps, min(32, d // 512))
    else:
        block_elements, num_warps, blocks = config
    br = block_rows(rows, d, block_elements)
    steps = block_rows(rows // br, 1, blocks)  # a power of two dividing the block count
    span = br * steps
    nb = rows // span
    scale = jnp.ones((d,), jnp.float32) if scale is None else scale.reshape(d)
    row_block = pl.BlockSpec((span, d), lambda i: (i, 0))
    vec = pl.BlockSpec((d,), lambda i: (0,))
    stat_block = pl.BlockSpec((span,), lambda i: (i,))
    part = pl.BlockSpec((1, d), lambda i: (i, 0))
    dx, ds, db = pl.pallas_call(
        functools.partial(_bwd_kernel, epsilon=float(epsilon), center=center, br=br,
                          steps=steps),
        out_shape=(
            jax.ShapeDtypeStruct((rows, d), x.dtype),
            jax.ShapeDtypeStruct((nb, d), jnp.float32),
            jax.ShapeDtypeStruct((nb, d), jnp.float32),
        ),
        grid=(nb,),
        in_specs=[row_block, row_block, vec, stat_block, stat_block, stat_block],
        out_specs=(row_block, part, part),
        interpret=interpret,
        compiler_params=_triton_params(num_warps),
    )(x, g, scale, shift, mean_shifted, var)
    return dx, jnp.sum(ds, axis=0), jnp.sum(db, axis=0)
