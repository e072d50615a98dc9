"""Pallas kernels: layer norm / RMS norm forward and backward over the last axis of (R, D).

Importing this module imports ``jax.experimental.pallas`` and its Triton backend; the
library imports it lazily, only where a kernel runs (:mod:`jnorm._pallas._dispatch`), so an
API change there costs the kernel, never the layers.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from jnorm._pallas._support import BACKWARD_CONFIG, FORWARD_CONFIG, block_rows

__all__ = ["row_norm_backward", "row_norm_forward"]

# Resolved at import, so API drift (a renamed class) shows as an import error the dispatch
# catches, not as a failure inside a user's traced program.
_CompilerParams = pltriton.CompilerParams


def _triton_params(num_warps: int) -> Any:
    """Triton on GPU (jax's default GPU Pallas backend, Mosaic GPU, limits block copies)."""
    if num_warps < 1 or num_warps & (num_warps - 1):
        raise ValueError(f"num_warps must be a power of two >= 1, got {num_warps}")
    return _CompilerParams(num_warps=num_warps)


def _like(shape: tuple[int, ...], dtype: Any, x: jax.Array) -> jax.ShapeDtypeStruct:
    """An output type that varies over the same manual mesh axes as `x`: inside a
    ``shard_map`` (``check_vma=True``) a Pallas call must say so (jax >= 0.10 calls it
    ``manual_axis_type``, earlier ``vma``)."""
    aval = jax.typeof(x)
    if _VARYING == "manual_axis_type":
        return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=aval.manual_axis_type)
    if _VARYING == "vma":
        return jax.ShapeDtypeStruct(shape, dtype, vma=aval.vma)
    return jax.ShapeDtypeStruct(shape, dtype)


_VARYING = next((k for k in ("manual_axis_type", "vma")
                 if k in inspect.signature(jax.ShapeDtypeStruct).parameters), None)


def _clip_negative(v: jax.Array) -> jax.Array:
    """``max(v, 0)`` that keeps NaN: Triton lowers ``jnp.maximum`` to a max that drops NaN
    (``max(NaN, 0) = 0``), where XLA and interpret mode propagate it."""
    return jnp.where(v < 0, jnp.zeros_like(v), v)


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
        var = _clip_negative(jnp.sum(dev * dev, axis=1) / d_size - mean * mean)
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
    stat = _like((rows,), jnp.float32, x)
    row_block = pl.BlockSpec((br, d), lambda i: (i, 0))
    vec = pl.BlockSpec((d,), lambda i: (0,))
    stat_block = pl.BlockSpec((br,), lambda i: (i,))
    return pl.pallas_call(
        functools.partial(_fwd_kernel, epsilon=float(epsilon), center=center),
        out_shape=(_like((rows, d), out_dtype, x), stat, stat, stat),
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
        # The per-program column sums live in registers: wide rows need more threads
        # (measured in docs/benchmarks.md, "The Pallas kernels").
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
            _like((rows, d), x.dtype, x),
            _like((nb, d), jnp.float32, x),
            _like((nb, d), jnp.float32, x),
        ),
        grid=(nb,),
        in_specs=[row_block, row_block, vec, stat_block, stat_block, stat_block],
        out_specs=(row_block, part, part),
        interpret=interpret,
        compiler_params=_triton_params(num_warps),
    )(x, g, scale, shift, mean_shifted, var)
    return dx, jnp.sum(ds, axis=0), jnp.sum(db, axis=0)
