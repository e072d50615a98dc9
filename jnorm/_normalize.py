"""The generic normalization scheme, written once: ``y = a / sigma * (x - mu) + b``."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jnorm import _pallas  # imports no Pallas: the kernels load where they run
from jnorm._checks import check_epsilon
from jnorm._plan import Plan, plan
from jnorm._stats import (
    Moments,
    accumulation_dtype,
    private_copies,
    shifted_moments,
    staged_spread,
    staged_sum,
)
from jnorm._typing import ArrayLike, AxisIndexGroups, AxisName, DTypeLike, Implementation, Scalar

__all__ = [
    "hide_masked_nonfinite", "normalize", "normalize_over", "output_dtype", "restore_masked",
    "var_of_empty_blocks",
]


def output_dtype(x_dtype: DTypeLike, dtype: DTypeLike | None = None) -> jnp.dtype:
    """The dtype a layer returns: `dtype` if given, else the input's (float32 for integers)."""
    if dtype is not None:
        return jnp.dtype(dtype)
    if jnp.issubdtype(x_dtype, jnp.inexact):
        return jnp.dtype(x_dtype)
    return jnp.dtype(jnp.float32)


def _as_operand(a: ArrayLike, x: jax.Array, dtype: DTypeLike, name: str) -> jax.Array:
    """Casts `a` to `dtype` and gives it `x`'s rank, checking that it broadcasts to `x`."""
    a = jnp.asarray(a)
    if a.ndim > x.ndim:
        raise ValueError(
            f"`{name}` has shape {a.shape}, more dimensions than the input {x.shape}; give it "
            f"at most {x.ndim} dimensions (use keepdims=True statistics)."
        )
    a = a.reshape((1,) * (x.ndim - a.ndim) + a.shape)
    try:
        shape = np.broadcast_shapes(a.shape, x.shape)
    except ValueError:
        shape = None
    if shape != x.shape:
        raise ValueError(
            f"`{name}` of shape {a.shape} does not broadcast to the input shape {x.shape}; it "
            "needs the input's size or 1 along each axis (statistics with keepdims=True have "
            "this shape)."
        )
    if jnp.iscomplexobj(a) and not jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError(f"`{name}` is complex but the input {x.dtype} is real.")
    return a.astype(dtype)


def normalize(
    x: jax.Array,
    mean: jax.Array,
    var: jax.Array,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    epsilon: float,
    shift: jax.Array | None = None,
    dtype: DTypeLike | None = None,
) -> jax.Array:
    r"""Applies the generic normalization scheme with given statistics.

    .. math::  y = \frac{a}{\sqrt{\sigma^2 + \epsilon}} \, (x - \mu) + b

    with ``a = scale`` (1 if None), ``b = bias`` (0 if None), ``mu = mean``, ``sigma^2 = var``.
    This is the only place jnorm writes this formula; every layer calls it.

    If ``shift`` is given, ``mean`` is taken relative to it (``mu = shift + mean``) and
    ``x - mu`` is computed as ``(x - shift) - mean``: with ``shift`` near the data (the rounded
    mean :func:`jnorm._stats.shifted_moments` returns), this stays
    exact for data far from zero, where rounding ``mu`` to float32 first would not. When the
    per-element factors are constant along some axis of ``x`` (batch, instance, group norm)
    the mean is folded into the offset, ``(x - shift) a' + (b - mean a')`` with
    ``a' = a / sqrt(var + eps)``: the same accuracy (both terms have the data's spread), one
    operation less per element. The statistics returned by :func:`jnorm.moments` need no
    shift.

    The arithmetic runs in at least float32 (half-precision inputs are upcast) and the result is
    cast to ``dtype`` (default: the input's dtype; float32 for integer inputs).

    Shapes: ``x`` is any array ``[...]``; ``mean``, ``var``, ``scale``, ``bias``, ``shift`` must
    broadcast to it (NumPy rules; keepdims statistics do). Returns an array shaped like ``x``.

    Args:
      x: input.
      mean: mean ``mu`` (relative to ``shift`` if given).
      var: variance ``sigma^2`` (real, non-negative).
      scale: optional gain ``a``.
      bias: optional offset ``b``.
      epsilon: added to the variance before the square root; must be ``>= 0``.
      shift: optional pivot the mean is measured from.
      dtype: output dtype.

    Examples:
      >>> import jax.numpy as jnp, jnorm
      >>> x = jnp.array([[1.0, 3.0]])
      >>> mean, var = jnorm.moments(x, reduction_axes=1, keepdims=True)
      >>> jnorm.normalize(x, mean, var, epsilon=0.0).tolist()
      [[-1.0, 1.0]]
    """
    x = jnp.asarray(x)
    check_epsilon(epsilon, layer="normalize")
    compute = accumulation_dtype(x.dtype)
    real = jnp.finfo(compute).dtype
    return _scheme(
        x, _as_operand(mean, x, compute, "mean"), _as_operand(var, x, real, "var"),
        None if scale is None else _as_operand(scale, x, compute, "scale"),
        None if bias is None else _as_operand(bias, x, compute, "bias"),
        epsilon=epsilon, shift=None if shift is None else _as_operand(shift, x, compute, "shift"),
        dtype=dtype, compute=compute,
    )


def _scheme(
    x: jax.Array,
    mean: jax.Array,
    var: jax.Array,
    scale: jax.Array | None,
    bias: jax.Array | None,
    *,
    epsilon: Scalar,
    shift: jax.Array | None,
    dtype: DTypeLike | None,
    compute: jnp.dtype,
) -> jax.Array:
    """:func:`normalize` on operands that already have `x`'s rank and broadcast to it;
    `compute` is the accumulation dtype of `x` (:func:`jnorm._stats.accumulation_dtype`)."""
    out = output_dtype(x.dtype, dtype)
    real = jnp.finfo(compute).dtype
    centred = x.astype(compute)
    mean = mean.astype(compute)
    mul = lax.rsqrt(var.astype(real) + jnp.asarray(epsilon, real)).astype(compute)
    if scale is not None:
        mul = mul * scale.astype(compute)
    offset = None if bias is None else bias.astype(compute)
    if shift is not None:
        centred = centred - shift.astype(compute)
        factors = [mean.shape, mul.shape] + ([] if offset is None else [offset.shape])
        if any(n > 1 and all(f[i] == 1 for f in factors) for i, n in enumerate(x.shape)):
            # The factors are constant along some axis of x (batch, instance, group norm):
            # fold the mean into the offset, (x - shift) mul + (bias - mean mul), one
            # full-size operation less per element. x - shift and mean both have the data's
            # spread (shift is the rounded mean), so the expansion cancels nothing.
            folded = -(mean * mul) if offset is None else offset - mean * mul
            return (centred * mul + folded).astype(out)
    y = (centred - mean) * mul
    if offset is not None:
        y = y + offset
    return y.astype(out)


def normalize_over(
    x: jax.Array,
    axes: tuple[int, ...],
    scale: jax.Array | None,
    bias: jax.Array | None,
    *,
    epsilon: Scalar,
    center: bool,
    mask: jax.Array | None,
    axis_name: AxisName,
    axis_index_groups: AxisIndexGroups,
    dtype: DTypeLike | None,
    implementation: Implementation,
) -> tuple[jax.Array, Moments]:
    """Normalizes `x` by its own statistics over `axes`: what every layer function does.

    Returns ``(y, moments)``: :func:`jnorm._stats.shifted_moments` over `axes`, then the
    scheme of :func:`normalize` with them. :func:`jnorm._plan.plan` decides, once, how XLA
    runs it, and this function follows the plan:

    * ``derivative="autodiff"``: :func:`_plain`, differentiated as it is computed (a mask,
      cross-device statistics, non-float data; on XLA:CPU layer norm, whose input inside a
      model is an unmaterialized residual stream, and batch norm, whose backward XLA fuses
      into a CNN's activation and convolution gradients);
    * otherwise :func:`_with_rule`: the same value carrying the derivative rule
      :func:`_rule_jvp` (a ``custom_jvp`` whose tangent is linear in the tangents, so forward
      mode works and reverse mode transposes it into the short backward pass); its forward is
      the fused Pallas kernel where ``plan.kernel`` and the platform allow.

    Every argument has been checked by the layer function that calls this: `axes` canonical,
    `scale`/`bias` broadcast to `x` (:func:`jnorm._axes.feature_param`), `mask` boolean.
    `implementation`: None lets :func:`jnorm._pallas.may_take_kernel` choose, ``"xla"`` never
    uses the Pallas kernel, ``"pallas"`` always does and raises a ValueError (at trace time)
    where it cannot.
    """
    if isinstance(epsilon, jax.Array) and not isinstance(epsilon, jax.core.Tracer):
        epsilon = float(epsilon)  # a concrete array: the rule takes it as a constant
    why_not = _why_no_rule(x, scale, bias, epsilon=epsilon, mask=mask, axis_name=axis_name,
                           axis_index_groups=axis_index_groups)
    if implementation == "pallas":
        why_not = why_not or _pallas.unsupported(x, axes, scale, bias)
        if why_not is not None:
            raise ValueError(
                f"implementation='pallas': the fused Pallas kernel cannot serve this call: "
                f"{why_not}. Pass implementation=None (automatic) or 'xla'."
            )
    kernel = implementation == "pallas" or (
        implementation is None and why_not is None
        and _pallas.may_take_kernel(x, axes, scale, bias, center=center)
    )
    p = plan(
        axes, x.ndim, masked=mask is not None, center=center, rule=why_not is None,
        param_shape=None if scale is None else (1,) * (x.ndim - scale.ndim) + scale.shape,
        kernel=kernel,
    )
    if p.derivative == "autodiff":
        plain = functools.partial(
            _plain, p=p, epsilon=epsilon, center=center, mask=mask, axis_name=axis_name,
            axis_index_groups=axis_index_groups, dtype=dtype)
        # recompute: the backward recomputes the forward from x (no full-size residual)
        return (jax.checkpoint(plain) if p.recompute else plain)(x, scale, bias)
    return _with_rule(p, float(epsilon), center, None if dtype is None else jnp.dtype(dtype),
                      implementation, x, scale, bias)


def _why_no_rule(
    x: jax.Array, scale: jax.Array | None, bias: jax.Array | None, *, epsilon: Scalar,
    mask: jax.Array | None, axis_name: AxisName, axis_index_groups: AxisIndexGroups,
) -> str | None:
    """Why the derivative rule (and the Pallas kernel) cannot serve a call, or None."""
    if mask is not None:
        return "a `mask`"
    if axis_name is not None or axis_index_groups is not None:
        return "cross-device statistics (`axis_name`)"
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return f"a {x.dtype} input"
    if not isinstance(epsilon, (int, float, np.floating)):
        return "a traced `epsilon`"
    if any(p is not None and not jnp.issubdtype(p.dtype, jnp.floating) for p in (scale, bias)):
        return "non-float parameters"
    return None


def hide_masked_nonfinite(
    x: jax.Array, mask: jax.Array | None
) -> tuple[jax.Array, jax.Array | None]:
    """``(x with its masked-out NaN/inf elements set to 0, where x is kept)``.

    A layer computes its output at masked-out positions too, and reverse mode multiplies their
    zero cotangents by ``x - mu``: a NaN there would make every gradient NaN (the ``where``
    trap). Layers normalize the returned array and put the hidden elements back with
    :func:`restore_masked`, so they pass through unchanged while gradients stay exact.
    Without a mask, or for integer inputs, `x` comes back as is and the second item is None.
    """
    if mask is None or not jnp.issubdtype(jnp.result_type(x), jnp.inexact):
        return x, None
    keep = mask | jnp.isfinite(x)
    return jnp.where(keep, x, jnp.zeros_like(x)), keep


def restore_masked(y: jax.Array, x: jax.Array, keep: jax.Array | None) -> jax.Array:
    """`y` with the elements :func:`hide_masked_nonfinite` hid set back to `x`'s."""
    return y if keep is None else jnp.where(keep, y, x.astype(y.dtype))


def _plain(
    x: jax.Array,
    scale: jax.Array | None,
    bias: jax.Array | None,
    p: Plan,
    *,
    epsilon: Scalar,
    center: bool,
    mask: jax.Array | None = None,
    axis_name: AxisName = None,
    axis_index_groups: AxisIndexGroups = None,
    dtype: DTypeLike | None = None,
) -> tuple[jax.Array, Moments]:
    """The value of :func:`normalize_over`, computed as written (plain autodiff applies to it).

    Masked-out NaN/inf elements are hidden from the computation and passed through
    (:func:`hide_masked_nonfinite`), so gradients stay finite and exact.
    """
    x_hidden, keep = hide_masked_nonfinite(x, mask)
    m = shifted_moments(
        x_hidden, p.axes, mask=mask, center=center, axis_name=axis_name,
        axis_index_groups=axis_index_groups, plan=p,
    )
    # Its own copy of the pivot: x - shift then fuses into the output's loop (private_copies).
    shift, mean = (m.shift if center else None), m.mean_shifted
    if p.output_copies:
        shift, mean = private_copies(shift, mean)
    var = m.var if mask is None else var_of_empty_blocks(m)
    y = _scheme(x_hidden, mean, var, scale, bias, epsilon=epsilon, shift=shift, dtype=dtype,
                compute=m.mean_shifted.dtype)
    return restore_masked(y, x, keep), m


def var_of_empty_blocks(m: Moments) -> jax.Array:
    """``m.var`` with blocks that had no masked-in element set to ``inf`` for normalizing.

    Such a block has no statistics: its normalized value is 0, so it returns the bias (an
    infinite variance gives the factor 0, and a zero gradient), not ``x / sqrt(epsilon)``,
    which overflows half precision.
    """
    return jnp.where(m.count > 0, m.var, jnp.full_like(m.var, jnp.inf))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2, 3, 4))
def _with_rule(
    p: Plan, epsilon: float, center: bool, dtype: jnp.dtype | None,
    implementation: Implementation, x: jax.Array, scale: jax.Array | None,
    bias: jax.Array | None,
) -> tuple[jax.Array, Moments]:
    """:func:`_plain`'s value, differentiated by :func:`_rule_jvp`; the forward is the fused
    Pallas kernel where ``p.kernel`` and the platform allow (:func:`jnorm._pallas.row_norm`)."""

    def xla() -> tuple[jax.Array, Moments]:
        return _plain(x, scale, bias, p, epsilon=epsilon, center=center, dtype=dtype)

    if not p.kernel:
        return xla()
    return _pallas.row_norm(x, scale, bias, axes=p.axes, epsilon=epsilon, center=center,
                            out_dtype=output_dtype(x.dtype, dtype),
                            implementation=implementation, xla=xla)


@_with_rule.defjvp
def _rule_jvp(
    p: Plan, epsilon: float, center: bool, dtype: jnp.dtype | None,
    implementation: Implementation, primals: tuple[Any, ...], tangents: tuple[Any, ...],
) -> tuple[tuple[jax.Array, Moments], tuple[jax.Array, Moments]]:
    r"""Derivative rule of :func:`_with_rule`: ``y = a \hat x + b`` with
    ``\hat x = (x - \mu) r`` and ``r = (\sigma^2 + \epsilon)^{-1/2}``.

    With ``n`` the block size and means ``E`` over the statistics axes,

    .. math::  d\mu = E[dx], \qquad d\sigma^2 = 2 E[(x - \mu)\,dx], \qquad
               dy = a r \big(dx - d\mu - (x - \mu)\, r^2 d\sigma^2 / 2\big)
                    + da\,\hat x + db

    (``d\mu = 0`` and ``x - \mu = x`` without centring). It is linear in ``(dx, da, db)``,
    so reverse mode transposes it into ``dx = a r g - E[a r g] - \hat x E[a r g \hat x]``
    (``g`` the cotangent; two row reductions), ``da = \sum g \hat x`` and ``db = \sum g``
    (column sums), all reading ``x``/``g`` in fused elementwise passes. ``x - \mu`` is formed
    from ``x - shift`` and ``mean_shifted`` as in :func:`normalize`, so gradients keep its
    accuracy far from zero.

    The formula is the same everywhere; how it is grouped decides what XLA writes to memory,
    so ``p.derivative`` (:func:`jnorm._plan.plan`) picks one of three algebraically equal
    arrangements: parameters constant over each block (batch, instance norm), the row layout
    (layer, RMS norm), and blocks reduced in stages (group norm).
    """
    del implementation  # the derivative's primal is XLA's whatever the forward used (below)
    x, scale, bias = primals
    dx, dscale, dbias = tangents
    # XLA's value even where the Pallas forward runs: XLA fuses these statistics into the
    # derivative's loops, while the kernel's output costs passes of its own.
    y, m = _plain(x, scale, bias, p, epsilon=epsilon, center=center, dtype=dtype)
    compute = accumulation_dtype(x.dtype)
    n = m.count.astype(compute)
    mu = m.mean_shifted
    r = lax.rsqrt(m.var + jnp.asarray(epsilon, compute))
    xa, dxa = x.astype(compute), dx.astype(compute)
    a = None if scale is None else scale.astype(compute)
    da = None if scale is None else dscale.astype(compute)
    db = None if bias is None else dbias.astype(compute)
    dmean = staged_sum(dxa, p.stages) / n if center else jnp.zeros_like(mu)
    if p.derivative in ("per_block", "rows"):
        # The two full-size uses of x - mu (inside dvar, and in the term whose transpose is a
        # reduction of g) each get their own copy of the pivot (private_copies): XLA then
        # recomputes x - mu inside each fused loop instead of writing it to memory.
        if center:
            shift_v, shift_t, mu_v, mu_t = private_copies(m.shift, m.shift, mu, mu)
            c_var, d_t = (xa - shift_v) - mu_v, xa - shift_t
        else:
            c_var = d_t = xa
        dvar = 2 * staged_sum(c_var * dxa, p.stages) / n
    if p.derivative == "per_block":
        # Parameters constant over each block (batch and instance norm): every per-block
        # factor is combined before it is broadcast, so the transpose needs exactly two
        # reductions of the cotangent g, sum(g) and sum(d g), shared by dx, da and db. The
        # term (x - mu) k_c is expanded to d k_c - mu k_c with d = x - shift (both have the
        # data's spread, so nothing cancels): one full-size operation less per element.
        gain = r if a is None else r * a
        k_c = -(gain * r * r * dvar / 2)
        if da is not None:
            k_c = k_c + r * da
        dy = gain * dxa + d_t * staged_spread(k_c, p.spread_stages, x.shape)
        k_0 = -(gain * dmean) - mu_t * k_c if center else None
        if db is not None:
            k_0 = db if k_0 is None else k_0 + db
        if k_0 is not None:
            dy = dy + staged_spread(k_0, p.spread_stages, x.shape)
    elif p.derivative == "rows":
        # Row layout with per-feature parameters (layer and RMS norm): dx's row reductions
        # and its elementwise part share one fused loop per row. da's column sum gets its own
        # r and is written r * (c da): its transpose scales g by r first, the cheaper order
        # for XLA:CPU's column reductions.
        inner = r * dxa - c_var * (r * r * r * dvar / 2)
        if center:
            inner = inner - r * dmean
        dy = a * inner
        (r_s,) = private_copies(r)
        dy = dy + r_s * ((d_t - mu_t if center else d_t) * da)
        if db is not None:
            dy = dy + db
    else:
        # Parameters vary inside a block that is reduced in stages (group norm). XLA writes
        # any broadcast feeding these reductions to memory, so every full-size term is `d`
        # (x minus the pivot, the array the statistics were reduced from) times factors; `d`
        # and `mu` both have the data's spread, so expanding d - mu cancels nothing. The
        # factors are constant over the axes where the parameters are (H, W) and are combined
        # before they are broadcast, so the transpose reduces g and d g once each over those
        # axes, shared by dx, da and db.
        d = xa - m.shift if center else xa
        dvar = 2 * staged_sum(d * dxa, p.stages) / n - (2 * mu * dmean if center else 0)
        k = r * r * dvar / 2
        gain = r * a
        k_d = r * da - gain * k
        k_0 = gain * (mu * k - dmean) - da * (mu * r) if center else None
        if db is not None:
            k_0 = db if k_0 is None else k_0 + db
        dy = gain * dxa + d * staged_spread(k_d, p.spread_stages, x.shape)
        if k_0 is not None:
            dy = dy + staged_spread(k_0, p.spread_stages, x.shape)
    zero = jnp.zeros_like(m.shift)
    return (y, m), (dy.astype(y.dtype), Moments(zero, dmean, dvar, jnp.zeros_like(m.count)))
