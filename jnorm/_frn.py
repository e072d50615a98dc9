r"""Batch-independent normalization with a learned activation: FRN + TLU and EvoNorm.

* **Filter Response Normalization** (Singh & Krishnan 2019, arXiv:1911.09737, Eq. 1-3) is the
  generic scheme with ``mu = 0`` and ``sigma^2 = nu^2``, the mean square of each channel of each
  example over its spatial axes: :func:`jnorm._stats.shifted_moments` with ``center=False``
  followed by :func:`jnorm.normalize`, like :func:`jnorm.rms_norm` on other axes.
* **TLU** (Eq. 4), the thresholded linear unit ``max(y, tau)`` that must follow FRN (without
  mean centring, ReLU after FRN can leave units dead).
* **EvoNorm-S0 / B0** (Liu et al. 2020, arXiv:2004.02967, Table 1): layers found by search that
  fuse normalization and activation. S0 is the generic scheme with ``mu = 0`` applied to
  ``x sigmoid(v x)`` with ``x``'s group variance; B0 divides by the larger of the batch standard
  deviation and ``v x`` plus the instance standard deviation.

Statistics always come from :func:`jnorm._stats.shifted_moments` (stable, float32 for half
inputs); shapes follow the legend of :mod:`jnorm._layers` (``N, H, W, C``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jnorm._axes import (
    canonicalize_axes,
    feature_param,
    grouped_param,
    resolve_groups,
    spatial_axes,
)
from jnorm._checks import (
    as_batch_axes,
    as_input,
    check_batch_size,
    check_dtype,
    check_epsilon,
    check_momentum,
    check_training,
)
from jnorm._normalize import normalize, output_dtype
from jnorm._state import BatchStats, update_batch_stats
from jnorm._stats import accumulation_dtype, shifted_moments
from jnorm._typing import Axes, DTypeLike, Scalar

__all__ = ["evonorm_b0", "evonorm_s0", "filter_response_norm", "tlu"]


def filter_response_norm(
    x: jax.Array,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    feature_axes: Axes = -1,
    epsilon: Scalar = 1e-6,
    dtype: DTypeLike | None = None,
) -> jax.Array:
    r"""Filter Response Normalization (Singh & Krishnan 2019, arXiv:1911.09737, Eq. 1-3).

    .. math::  \nu^2_{nc} = \frac{1}{HW}\sum_{hw} x_{nhwc}^2, \qquad
               y_{nhwc} = \gamma_c \frac{x_{nhwc}}{\sqrt{\nu^2_{nc} + \epsilon}} + \beta_c

    No mean is subtracted and no batch statistic is used. Follow it with :func:`tlu`. For
    inputs with few spatial positions (1x1) the paper learns ``epsilon``: pass
    ``epsilon = eps0 + jnp.abs(eps_learned)`` (a traced scalar is accepted).

    Shapes: ``x: [N, H, W, C]`` (any number of spatial axes; channels at ``feature_axes``);
    ``scale``, ``bias``: ``[C]``. Returns ``x``'s shape.

    Examples:
      >>> import jax.numpy as jnp, jnorm
      >>> x = jnp.array([[[[3.0]], [[4.0]]]])  # N=1, H=2, W=1, C=1: nu^2 = 12.5
      >>> [round(v, 5) for v in jnorm.filter_response_norm(x, epsilon=0.0).ravel().tolist()]
      [0.84853, 1.13137]
    """
    x = as_input(x, layer="filter_response_norm")
    channels = canonicalize_axes(feature_axes, x.ndim, name="feature_axes")
    spatial = spatial_axes(x, channels, "filter_response_norm")
    check_epsilon(epsilon, layer="filter_response_norm")
    check_dtype(dtype, layer="filter_response_norm")
    m = shifted_moments(x, spatial, center=False)  # var = nu^2, the mean square
    return normalize(
        x, jnp.zeros((), m.var.dtype), m.var,
        feature_param(scale, x.shape, channels, name="scale"),
        feature_param(bias, x.shape, channels, name="bias"),
        epsilon=epsilon, dtype=dtype,
    )


def tlu(x: jax.Array, tau: jax.Array, *, feature_axes: Axes = -1) -> jax.Array:
    r"""Thresholded linear unit (Singh & Krishnan 2019, Eq. 4): ``z = max(y, tau)``.

    Shapes: ``x: [N, ..., C]`` (channels at ``feature_axes``);
    ``tau: [C]`` (learned, initialised to 0). Returns ``x``'s shape
    and dtype.

    Examples:
      >>> import jax.numpy as jnp, jnorm
      >>> jnorm.tlu(jnp.array([[-2.0, 0.5]]), jnp.array([-1.0, 1.0])).tolist()
      [[-1.0, 1.0]]
    """
    x = as_input(x, layer="tlu")
    channels = canonicalize_axes(feature_axes, x.ndim, name="feature_axes")
    tau = feature_param(tau, x.shape, channels, name="tau")
    assert tau is not None
    return jnp.maximum(x, tau.astype(x.dtype))


def evonorm_s0(
    x: jax.Array,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    v: jax.Array | None = None,
    *,
    num_groups: int | None = 32,
    group_size: int | None = None,
    epsilon: float = 1e-5,
    dtype: DTypeLike | None = None,
) -> jax.Array:
    r"""EvoNorm-S0 (Liu et al. 2020, arXiv:2004.02967, Table 1): batch-independent.

    .. math::  y = \frac{x\, \mathrm{sigmoid}(v x)}{\sqrt{s^2_{w,h,c/g}(x) + \epsilon}}
               \gamma + \beta

    where ``s^2_{w,h,c/g}`` is the variance over the spatial axes and the channels of a group
    (group norm's statistic, of ``x``, not of the numerator). It is the generic scheme with
    ``mu = 0`` applied to ``x sigmoid(v x)``. ``v`` (``[C]``, initialised to 1) gives the
    swish-like activation.

    Shapes: ``x: [N, H, W, C]`` (channels last, any number of spatial axes); ``scale``,
    ``bias``, ``v``: ``[C]``. Returns ``x``'s shape.

    Examples:
      >>> import jax, jax.numpy as jnp, jnorm
      >>> x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
      >>> jnorm.evonorm_s0(x, v=jnp.ones(8), num_groups=2).shape
      (2, 4, 4, 8)
    """
    x = as_input(x, layer="evonorm_s0")
    spatial_axes(x, (x.ndim - 1,), "evonorm_s0")
    c = x.shape[-1]
    groups = resolve_groups(c, num_groups, group_size, layer="evonorm_s0")
    check_epsilon(epsilon, layer="evonorm_s0")
    check_dtype(dtype, layer="evonorm_s0")
    split = x.shape[:-1] + (groups, c // groups)
    xs = x.reshape(split)
    stat_axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)
    m = shifted_moments(xs, stat_axes)
    num = xs.astype(m.var.dtype)
    if v is not None:
        vg = grouped_param(v, c, groups, "v").astype(num.dtype)
        vg = vg.reshape((1,) * (x.ndim - 1) + vg.shape)
        num = num * jax.nn.sigmoid(vg * num)
    y = normalize(
        num, jnp.zeros((), num.dtype), m.var,
        None if scale is None else grouped_param(scale, c, groups, "scale"),
        None if bias is None else grouped_param(bias, c, groups, "bias"),
        epsilon=epsilon, dtype=output_dtype(x.dtype, dtype),
    )
    return y.reshape(x.shape)


def evonorm_b0(
    x: jax.Array,
    state: BatchStats,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    v: jax.Array | None = None,
    *,
    training: bool,
    momentum: float | None = 0.99,
    epsilon: float = 1e-5,
    dtype: DTypeLike | None = None,
) -> tuple[jax.Array, BatchStats]:
    r"""EvoNorm-B0 (Liu et al. 2020, arXiv:2004.02967, Table 1): batch-dependent.

    .. math::  y = \frac{x}{\max\big(\sqrt{s^2_{b,w,h}(x) + \epsilon},\;
               v x + \sqrt{s^2_{w,h}(x) + \epsilon}\big)} \gamma + \beta

    with ``s^2_{b,w,h}`` the batch variance per channel (the running variance in eval, updated as
    :func:`jnorm.batch_norm` updates it, so ``state`` is a :class:`jnorm.BatchStats`) and
    ``s^2_{w,h}`` the variance of each channel of each example. No mean is subtracted in the
    numerator.

    Shapes: ``x: [N, H, W, C]`` (channels last); ``scale``, ``bias``, ``v`` and the state:
    ``[C]``. Returns ``(y, new_state)``.

    Examples:
      >>> import jax, jax.numpy as jnp, jnorm
      >>> x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
      >>> y, s = jnorm.evonorm_b0(x, jnorm.BatchStats.init(3), v=jnp.ones(3), training=True)
      >>> y.shape, int(s.count)
      ((2, 4, 4, 3), 1)
    """
    x = as_input(x, layer="evonorm_b0")
    check_training(training, layer="evonorm_b0")
    ch = x.ndim - 1
    spatial = spatial_axes(x, (ch,), "evonorm_b0")
    c = x.shape[ch]
    _, batch = as_batch_axes(x, state, ch, cls=BatchStats, layer="evonorm_b0")
    check_momentum(momentum, layer="evonorm_b0")
    check_epsilon(epsilon, layer="evonorm_b0")
    check_dtype(dtype, layer="evonorm_b0")
    acc = accumulation_dtype(x.dtype)
    eps = jnp.asarray(epsilon, acc)
    xa = x.astype(acc)
    if training:
        # The batch variance of one value per channel is 0: y = x / sqrt(eps), not a norm.
        check_batch_size(x, batch, None, layer="evonorm_b0")
        mb = shifted_moments(x, batch)
        batch_var = mb.var
        new_state = update_batch_stats(
            state, jnp.squeeze(mb.mean, batch), jnp.squeeze(mb.var, batch),
            jnp.squeeze(mb.count, batch), momentum=momentum,
        )
    else:
        batch_var = state.var.astype(acc).reshape((1,) * ch + (c,))
        new_state = state
    inst_var = shifted_moments(x, spatial).var
    den = jnp.sqrt(batch_var + eps)
    if v is not None:
        vb = feature_param(v, x.shape, (ch,), name="v")
        assert vb is not None
        den = jnp.maximum(den, vb.astype(acc) * xa + jnp.sqrt(inst_var + eps))
    y = xa / den
    if scale is not None:
        g = feature_param(scale, x.shape, (ch,), name="scale")
        assert g is not None
        y = y * g.astype(acc)
    if bias is not None:
        b = feature_param(bias, x.shape, (ch,), name="bias")
        assert b is not None
        y = y + b.astype(acc)
    return y.astype(output_dtype(x.dtype, dtype)), new_state

