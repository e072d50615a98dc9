r"""Statistics kernel: mean and variance over any axes, stable, masked and cross-device.

This module holds the one place where jnorm reduces data to statistics. Layers never compute a
mean or a variance themselves; they call :func:`shifted_moments` (or its public face
:func:`moments`) with the axes that define them.

Algorithm (corrected two-pass)
------------------------------
A first reduction gives an estimate ``m`` of the mean in the accumulation dtype (over the
masked-in elements). The second reduction sums ``d = x - m`` and ``|d|^2`` around it:

.. math::  \bar d = \frac{1}{n}\sum d, \qquad
           \mathrm{Var}[x] = \frac{1}{n}\sum |d|^2 - |\bar d|^2, \qquad
           E[x] = m + \bar d.

This is the corrected two-pass algorithm (Chan, Golub & LeVeque 1983): the correction
``|\bar d|^2`` removes the first pass's rounding error ``\delta = E[x] - m`` from the variance.
Mean and variance are exactly invariant to ``m``, so it is a constant (``lax.stop_gradient``)
and every derivative (of any order) stays exact.

Error bound. With unit roundoff ``u`` (``2^-24`` in float32) and ``\gamma = c\,u`` the relative
error of a sum of ``n`` terms in XLA's reduction order (``c`` grows like ``log2 n`` for the
tree-shaped reductions XLA emits, at most ``n``), the first pass gives
``|\delta| \le \gamma\,E|x|``. ``d`` is computed exactly wherever ``x`` lies within a factor two of
``m`` (Sterbenz), else with relative error ``u``, and to first order in ``\gamma`` the
computed variance satisfies

.. math::  |\widehat{\mathrm{Var}} - \mathrm{Var}| \le 2\gamma\,(\mathrm{Var} + \delta^2)
           \le 2\gamma\,\mathrm{Var}\,(1 + \gamma^2 \kappa^2), \qquad
           \kappa = E|x| / \sqrt{\mathrm{Var}}.

Nothing in it depends on which element comes first or on where any single element sits: an
outlier enters only through ``\kappa``, which it also raises for the exact float64 answer's
conditioning, and for float32 data with ``\gamma\kappa \le 1`` (offsets up to ~1e6 times
the spread) the variance keeps a relative error of a few ``\gamma``. A one-pass shift by a
single element (the previous pivot) has ``(x_0 - E[x])^2 / \mathrm{Var}`` in place of
``\gamma^2\kappa^2``, so one outlier placed where the pivot is taken ruins it.

Layers keep the pair ``(m, \bar d)`` instead of rounding ``m + \bar d`` to the input precision:
:func:`jnorm.normalize` then computes ``(x - m) - \bar d``, which is exact where ``x - mean``
in float32 is not (at ``|mean| = 1e6`` one float32 ulp is 0.06).

Across devices (``axis_name``) every device contributes ``(n, m, \bar d, M_2)`` with
``M_2 = \sum |d - \bar d|^2``; one collective brings all of them to every device, which
combines them with Chan et al.'s parallel formula around a common pivot (the count-weighted
mean of the devices' means, so no single device's data decides it), then re-centres the
result on the rounded global mean. The combination is
exact for any per-device counts (including zero) and identical on every device. The collective
is an all-reduce of per-device slots (its result is typed as replicated under ``shard_map``, so
running statistics can leave with ``out_specs=P()``), or an ``all_gather`` with
``axis_index_groups`` (``shard_map`` has no grouped ``psum``). See ``docs/distributed.md``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jnorm._axes import canonicalize_axes
from jnorm._checks import as_input, as_mask, check_axis_name
from jnorm._plan import Plan
from jnorm._plan import plan as _plan
from jnorm._typing import Axes, AxisIndexGroups, AxisName, DTypeLike

__all__ = [
    "Moments", "accumulation_dtype", "computed_once", "moments", "private_copies", "settle",
    "shifted_moments", "staged_spread", "staged_sum",
]


class Moments(NamedTuple):
    """Statistics in shifted form, with the reduced axes kept (size 1).

    The mean is ``shift + mean_shifted``; keeping the two apart keeps ``x - mean`` exact.
    """

    shift: jax.Array  # shape=x.shape with reduced axes 1, dtype=accumulation dtype
    mean_shifted: jax.Array  # same shape and dtype: E[x] - shift
    var: jax.Array  # same shape, real accumulation dtype: biased variance (or E|x|^2 if uncentred)
    count: jax.Array  # same shape, real accumulation dtype: number of masked-in elements

    @property
    def mean(self) -> jax.Array:
        """``shift + mean_shifted`` rounded to the accumulation dtype."""
        return self.shift + self.mean_shifted


def accumulation_dtype(dtype: DTypeLike) -> jnp.dtype:
    """The dtype statistics are accumulated in: at least float32 (float64/complex kept).

    >>> accumulation_dtype(jnp.bfloat16)
    dtype('float32')
    """
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return jnp.dtype(jnp.complex128 if dtype == jnp.complex128 else jnp.complex64)
    if jnp.issubdtype(dtype, jnp.floating):
        return jnp.dtype(jnp.float64 if dtype == jnp.float64 else jnp.float32)
    # Integers and booleans: the default float (float64 only under jax_enable_x64).
    return jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))


def _abs_sq(d: jax.Array) -> jax.Array:
    if jnp.iscomplexobj(d):
        return lax.square(lax.real(d)) + lax.square(lax.imag(d))
    return lax.square(d)


def _real_dtype(dtype: DTypeLike) -> jnp.dtype:
    return jnp.finfo(dtype).dtype


Stages = tuple[tuple[int, ...], ...]


def staged_sum(v: jax.Array, stages: Stages, dtype: DTypeLike | None = None) -> jax.Array:
    """``jnp.sum(v, axes, keepdims=True)`` over the union of `stages`, one stage at a time.

    The stages (:attr:`jnorm._plan.Plan.stages`; :func:`jnorm._plan.stages` says why) are the
    same sum in another order. :func:`staged_spread` is the transpose: it broadcasts through
    the same stages, so gradients reduce in them too.
    """
    for i, stage in enumerate(stages):
        if i:
            # The barrier (on a small array) stops XLA from merging the reductions back.
            v = lax.optimization_barrier(v)
        v = jnp.sum(v, axis=stage, keepdims=True, dtype=dtype if i == 0 else None)
    return v


def staged_spread(v: jax.Array, stages: Stages, shape: tuple[int, ...]) -> jax.Array:
    """Broadcasts per-block `v` (size 1 on the axes of `stages`) to `shape`, the transpose of
    :func:`staged_sum`.

    The broadcast runs through the stages in reverse, with a barrier between them, so
    reverse-mode autodiff turns ``v * full`` into the staged reduction rather than the single
    slow one.
    """
    v = jnp.reshape(v, (1,) * (len(shape) - v.ndim) + v.shape)
    for i, stage in enumerate(reversed(stages)):
        if i:
            v = lax.optimization_barrier(v)
        v = jnp.broadcast_to(v, tuple(shape[a] if a in stage else v.shape[a]
                                      for a in range(len(shape))))
    return v


def private_copies(*arrays: jax.Array) -> tuple[jax.Array, ...]:
    """The small `arrays` again, as values XLA will not merge with other uses of them.

    A full-size elementwise expression such as ``x - shift`` that feeds two consumers XLA
    cannot fuse together (two reductions, or a reduction and the output) is written to memory
    once and read back by both: an extra write and read of the whole input. Giving each
    consumer its own copy of the per-block vectors (the pivot, a reciprocal standard
    deviation) makes the expressions distinct, so XLA recomputes each inside its consumer's
    fused loop and streams ``x`` instead (``python -m benchmarks.bench`` counts the passes).

    The copies come out of one :func:`jax.lax.optimization_barrier`, which
    common-subexpression elimination does not see through; the values are exact. XLA prunes
    unused outputs of a barrier and then merges barriers with equal operands, so every call
    site passes a different tuple (``(shift, shift)`` for the moments, ``(shift, mean)`` for
    the output, ...) and uses every output.
    """
    return tuple(lax.optimization_barrier(tuple(arrays)))


@jax.custom_jvp
def settle(v: jax.Array) -> jax.Array:
    """`v` rounded to one mantissa bit less: a pivot every compiled loop reads alike.

    Exactness rests on every user of a shift seeing the same rounded number: the shifted
    sums are taken around it, ``x - shift`` is formed from it again in the output and in the
    derivative, and :func:`_recentre` moves it by a Fast2Sum. Under ``jit`` XLA recomputes a
    cheap per-block value inside every fused loop that reads it (optimization barriers are
    gone by then), and the recomputations need not agree: the simplifier turns ``sum / n``
    into ``sum * (1/n)``, and LLVM contracts that product with the subtraction into a fused
    multiply-add (the unrounded mean) in some loops and not in others (the rounded one). At
    ``1e6 + 2 N(0, 1)`` that moved group norm's compiled scale gradient by 1.5e-2. A value
    that passes through ``reduce_precision`` is formed from the rounded product by integer
    operations on its bits, which no contraction or algebraic rewrite bypasses, so every loop
    computes the same number. One bit less moves a pivot by at most one ulp; a pivot only
    needs to be near the mean (the bound in the module docstring). Small values (the mean
    relative to the shift) need no settling: their rounding is tiny against the spread.
    """
    if jnp.iscomplexobj(v):
        return lax.complex(settle(lax.real(v)), settle(lax.imag(v)))
    info = jnp.finfo(v.dtype)
    return lax.reduce_precision(v, exponent_bits=info.nexp, mantissa_bits=info.nmant - 1)


@settle.defjvp
def _settle_jvp(primals: tuple[jax.Array], tangents: tuple[jax.Array]
                ) -> tuple[jax.Array, jax.Array]:
    """The identity: settling moves a value by at most one ulp, a rounding whose derivative
    is the value's own (``reduce_precision``'s rule would round the tangent too, one bit of
    every gradient through the mean, recomputed per element in the backward's loops)."""
    (v,), (dv,) = primals, tangents
    return settle(v), dv


def computed_once(v: jax.Array) -> jax.Array:
    """The small per-block array `v` again, as a value XLA computes once and stores.

    XLA fuses a cheap per-block expression into every loop that broadcasts it and evaluates
    it there for each element: for the statistics that is the settled pivot and mean (two
    ``reduce_precision``, a dozen integer operations) per element of every full-size loop. A
    division is an expensive operation to XLA's fusion, which does not duplicate it into a
    consumer that reuses its elements, so the quotient is computed once and each loop reads
    it. The divisor is an exact 1 that XLA cannot fold (``v == v``; 0 for NaN, which stays
    NaN), so the value and its derivative are unchanged (a subnormal may become 0 where the
    backend flushes subnormals, as XLA:CPU does in every loop that reads it anyway).
    """
    if jnp.iscomplexobj(v):
        return lax.complex(computed_once(lax.real(v)), computed_once(lax.imag(v)))
    return v / (v == v).astype(v.dtype)


def _first_mean(
    xa: jax.Array, stages: Stages, mask: jax.Array | None, count: jax.Array
) -> jax.Array:
    """The first pass: the mean of the masked-in elements of each block (0 for an empty one),
    the axes kept. Masked-out elements (even NaN) are replaced by 0 before the sum."""
    if mask is not None:
        xa = jnp.where(mask, xa, jnp.zeros_like(xa))
    safe = jnp.maximum(count, jnp.ones_like(count)).astype(xa.dtype)
    return staged_sum(xa, stages) / safe


def _recentre(shift: jax.Array, mean: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(shift, mean)`` again with the shift moved to the rounded mean ``fl(shift + mean)``
    and the rest, ``(shift - fl(shift + mean)) + mean``, kept as the relative mean (exact when
    ``|mean| <= |shift|``: Fast2Sum). A constant block then has relative mean exactly 0, so it
    normalizes to exactly the bias; and ``x - shift`` is as small as it can be. The new shift
    is a constant for differentiation like the old one (the derivative rules rely on it)."""
    # Both terms settled: the sum's operands are then no products XLA could contract, so every
    # loop that recomputes it rounds it alike (settle). The sum itself is rounded to nearest,
    # so a constant block's centre is its value and its relative mean exactly 0.
    mean = settle(mean)
    centre = lax.stop_gradient(shift + mean)
    return centre, (shift - centre) + mean


def _combine_across_devices(
    local: Moments, axis_name: AxisName, axis_index_groups: AxisIndexGroups
) -> Moments:
    """Exact count-weighted combination of per-device moments, in one collective."""
    acc = local.shift.dtype
    real = _real_dtype(acc)
    m2 = local.var * local.count  # centred sum of squares on this device
    packed = jnp.stack(
        [local.count.astype(acc), local.shift, local.mean_shifted, m2.astype(acc)], axis=0
    )
    if axis_index_groups is None:
        # One all-reduce of per-device slots rather than an all_gather: the result is the same
        # (each slot is one device's statistics plus exact zeros), but under shard_map it is
        # typed as replicated, so the running statistics can leave with out_specs=P() as flax's
        # do; all_gather's result is typed as varying. Gradients are right under shard_map
        # (with or without check_vma), pmap and vmap.
        slots = jnp.zeros((lax.axis_size(axis_name), *packed.shape), packed.dtype)
        slots = lax.dynamic_update_index_in_dim(slots, packed, lax.axis_index(axis_name), 0)
        gathered = lax.psum(slots, axis_name)
    else:
        gathered = lax.all_gather(packed, axis_name, axis_index_groups=axis_index_groups)
    counts = lax.real(gathered[:, 0]) if jnp.iscomplexobj(gathered) else gathered[:, 0]
    shifts, means, m2s = gathered[:, 1], gathered[:, 2], gathered[:, 3]
    m2s = lax.real(m2s) if jnp.iscomplexobj(m2s) else m2s
    has = counts > 0
    total = jnp.sum(counts, axis=0)
    safe = jnp.maximum(total, jnp.ones_like(total))
    counts_acc = counts.astype(acc)
    # A common pivot, the same on every device: the count-weighted mean of the devices' means
    # (a first pass over them). Not one device's mean: a device holding only an outlier would
    # make every other device's offset large, and its rounding (ulp of the outlier) would
    # reach the global mean -- the first-element pivot again, one level up. The offsets then
    # correct the pivot's own rounding (the second pass).
    local_means = jnp.where(has, shifts + means, jnp.zeros_like(means))
    common = lax.stop_gradient(jnp.sum(counts_acc * local_means, axis=0) / safe.astype(acc))
    common = settle(common)
    offsets = jnp.where(has, (shifts - common[None]) + means, jnp.zeros_like(means))
    mean = jnp.sum(counts_acc * offsets, axis=0) / safe.astype(acc)
    spread = jnp.sum(counts * _abs_sq(offsets - mean[None]), axis=0)
    var = (jnp.sum(m2s, axis=0) + spread) / safe
    # Re-centred on the rounded global mean, so a constant input gives exactly the bias.
    centre, residual = _recentre(common, mean)
    return Moments(centre, residual, var.astype(real), total.astype(real))


def shifted_moments(
    x: jax.Array,
    axes: tuple[int, ...],
    *,
    mask: jax.Array | None = None,
    center: bool = True,
    axis_name: AxisName = None,
    axis_index_groups: AxisIndexGroups = None,
    pivot: jax.Array | None = None,
    plan: Plan | None = None,
) -> Moments:
    """Mean and biased variance of `x` over `axes` in shifted form (reduced axes kept).

    This is the kernel every layer uses; see the module docstring for the algorithm. With
    ``center=False`` the shift and mean are zero and ``var`` is the mean square ``E[|x|^2]``
    (what RMS norm divides by). Masked-out elements are ignored, even when they are NaN; a
    block with no masked-in element gets mean 0, variance 0 and count 0.

    `pivot` (accumulation dtype, `x`'s shape with the reduced axes 1) replaces the first pass's
    mean as the shift; it should be close to the mean (the bound in the module docstring holds
    with ``\\delta`` its distance from the mean) and the result stays relative to it. Without
    it, the result is re-centred: ``shift`` is the rounded mean and ``mean_shifted`` the rest.
    Passing a private copy of a shift (:func:`private_copies`) computes the same statistics as
    a separate value, which XLA then fuses into a different consumer's loop.

    It checks nothing: `axes` are canonical (sorted non-negative ints, from
    :func:`jnorm._axes.canonicalize_axes`), `mask` is None or a boolean array of `x`'s shape
    (:func:`jnorm._checks.as_mask`) and `axis_name` is bound, as the public function that
    calls it has made sure. `plan` is the call's :class:`jnorm._plan.Plan` where the caller
    has made it (the layers); without it the statistics make their own.
    """
    x = jnp.asarray(x)
    if plan is None:
        plan = _plan(axes, x.ndim, masked=mask is not None, center=center)
    acc = accumulation_dtype(x.dtype)
    real = _real_dtype(acc)
    xa = x.astype(acc)

    if mask is not None:
        count = staged_sum(mask, plan.stages, dtype=real)
    else:
        size = 1
        for a in axes:
            size *= x.shape[a]
        count = jnp.full(tuple(1 if i in axes else s for i, s in enumerate(x.shape)), size,
                         dtype=real)
    safe = jnp.maximum(count, jnp.ones_like(count))
    if center:
        if pivot is None:  # one number for the sums and every later user (settle)
            shift = lax.stop_gradient(settle(_first_mean(xa, plan.stages, mask, count)))
            if plan.pivot_once:  # also where x - shift is written once (no private copies)
                shift = computed_once(shift)
        else:  # the caller's number, as it is: results are relative to it
            shift = lax.stop_gradient(pivot)
        # The mean and the square sum each subtract their own copy of the shift, so XLA streams
        # x into both reductions rather than writing x - shift to memory (jnorm._plan).
        shift_mean, shift_sq = (private_copies(shift, shift) if plan.shift_copies
                                else (shift, shift))
        d, d_sq = xa - shift_mean, xa - shift_sq
    else:
        shift = jnp.zeros(count.shape, acc)
        d = d_sq = xa
    if mask is not None:
        d = d_sq = jnp.where(mask, d, jnp.zeros_like(d))
    sq = staged_sum(_abs_sq(d_sq), plan.stages) / safe
    if center:
        mean = staged_sum(d, plan.stages) / safe.astype(acc)
        var = jnp.maximum(sq - _abs_sq(mean), jnp.zeros_like(sq))
        if pivot is None:
            shift, mean = _recentre(shift, mean)
        if plan.pivot_once:
            shift, mean = computed_once(shift), computed_once(mean)
    else:
        mean = jnp.zeros_like(shift)
        var = sq
    local = Moments(shift, mean, var, count)
    if axis_name is None:
        return local
    if not center:
        stacked = jnp.stack([var * count, count])
        if axis_index_groups is None:
            packed = lax.psum(stacked, axis_name)
        else:  # shard_map implements all_gather with groups, but not psum with groups
            packed = jnp.sum(
                lax.all_gather(stacked, axis_name, axis_index_groups=axis_index_groups), axis=0
            )
        n = packed[1]
        return Moments(shift, mean, packed[0] / jnp.maximum(n, jnp.ones_like(n)), n)
    return _combine_across_devices(local, axis_name, axis_index_groups)


def moments(
    x: jax.Array,
    reduction_axes: Axes,
    *,
    mask: jax.Array | None = None,
    axis_name: AxisName = None,
    axis_index_groups: AxisIndexGroups = None,
    center: bool = True,
    keepdims: bool = False,
) -> tuple[jax.Array, jax.Array]:
    r"""Mean and biased variance of `x` over `reduction_axes`, accurate for data far from zero.

    .. math::  \mu = \frac{1}{n}\sum_{i \in S} x_i, \qquad
               \sigma^2 = \frac{1}{n}\sum_{i \in S} |x_i - \mu|^2

    where ``S`` are the masked-in elements of each reduced block and ``n = |S|``. Computed by
    the corrected two-pass algorithm (a first pass for the mean, then shifted sums around
    it; see :mod:`jnorm._stats`), in at least float32. Its error bound,

    .. math::  |\widehat{\sigma^2} - \sigma^2| \lesssim 2\gamma\,\sigma^2
               (1 + \gamma^2\kappa^2), \qquad \kappa = E|x| / \sigma,

    with ``\gamma`` the relative error of one float32 sum (about ``u log2 n``), depends neither
    on where the data sits (``1e6 + N(0, 1)`` keeps full accuracy, unlike
    ``E[x^2] - E[x]^2``) nor on which element comes first (one outlier anywhere does not
    cancel).

    Shapes: ``x`` is any array; the results have ``x``'s shape without ``reduction_axes`` (or
    with size 1 there if ``keepdims``). They are in the accumulation dtype: float32 for
    half-precision and integer inputs, float64 / complex kept (the variance is real).

    Args:
      x: input array.
      reduction_axes: axis or axes to reduce over, each in ``[-x.ndim, x.ndim)``.
      mask: optional boolean array broadcastable to ``x``; only ``True`` elements count.
        A block with no ``True`` element gives mean 0 and variance 0.
      axis_name: name of a mapped axis (``shard_map``, ``pmap``, ``vmap``) to also reduce over.
        Devices may hold different numbers of masked-in elements: the combination is exact
        (count-weighted), in a single collective.
      axis_index_groups: optional groups of indices of ``axis_name`` reduced separately
        (equal-sized; supported under ``pmap`` and ``shard_map``).
      center: if False, return mean 0 and the mean square ``E[|x|^2]`` instead of the variance.
      keepdims: keep the reduced axes with size 1.

    Returns:
      ``(mean, var)``.

    Examples:
      >>> import jax.numpy as jnp, jnorm
      >>> x = jnp.array([[1e6 + 1.0, 1e6 + 3.0], [2.0, 4.0]], jnp.float32)
      >>> mean, var = jnorm.moments(x, reduction_axes=1)
      >>> mean.tolist(), var.tolist()
      ([1000002.0, 3.0], [1.0, 1.0])
    """
    x = as_input(x, layer="moments")
    red = canonicalize_axes(reduction_axes, x.ndim, name="reduction_axes")
    mask = as_mask(mask, x.shape)
    check_axis_name(axis_name, axis_index_groups, layer="moments")
    m = shifted_moments(
        x, red, mask=mask, center=center, axis_name=axis_name,
        axis_index_groups=axis_index_groups,
    )
    mean, var = m.mean, m.var
    if not keepdims:
        mean, var = jnp.squeeze(mean, red), jnp.squeeze(var, red)
    return mean, var
