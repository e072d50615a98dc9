"""Flax linen modules: drop-in replacements for ``flax.linen``'s normalization layers.

Each module has the attributes, defaults, call signature and variables of its flax namesake
(``params``: ``scale``/``bias``; ``batch_stats``: ``mean``/``var``), so a model switches by
changing one import and its checkpoints load unchanged. The modules are plumbing only: they
create the variables and call jnorm's functions, which hold all the math; a module and its
function give bitwise-equal results.

Differences from flax, all in accuracy's favour:

* statistics are always computed with the corrected two-pass algorithm of
  :func:`jnorm.moments`; ``use_fast_variance`` is accepted for compatibility and has no effect
  (jnorm's default is fast *and* accurate);
* ``force_float32_reductions`` is accepted; statistics are always accumulated in at least
  float32 (``False`` only changes the parameter dtype used in the affine step, as in flax);
* ``BatchNorm`` with ``axis_name`` combines devices by count, exactly, also with masks.

Where flax returns a value jnorm's modules return the same: running statistics are stored in
the dtype flax stores (a complex input keeps a complex running mean; ``float32``, or
``param_dtype`` with ``force_float32_reductions=False``, promoted with the batch statistics'
dtype), and inputs with a single value per statistic (``BatchNorm`` training on ``(1, 1, 1,
C)``, ``InstanceNorm`` on ``(N, C)``) give the bias, as flax's do (jnorm's functions raise
there unless ``strict=False``). The plumbing shared with :mod:`jnorm.nnx` is in
``jnorm._modules``.

``BatchNorm(momentum=None)`` averages cumulatively (PyTorch's ``momentum=None``) and then keeps
a ``count`` per feature in ``batch_stats`` (so masks work); with a float momentum the
collection holds only ``mean`` and ``var``, as flax's does.

Examples:
  >>> import jax, jax.numpy as jnp
  >>> import jnorm.linen as jnn
  >>> model = jnn.BatchNorm(use_running_average=False)
  >>> variables = model.init(jax.random.key(0), jnp.ones((4, 3)))
  >>> y, updates = model.apply(variables, jnp.ones((4, 3)), mutable=["batch_stats"])
  >>> sorted(updates["batch_stats"])
  ['mean', 'var']
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax.linen import initializers, module
from flax.linen import transforms as _transforms
from flax.linen.module import Module, compact

from jnorm._axes import canonicalize_axes
from jnorm._modules import (
    MODULE_NAMES,
    StatsKind,
    apply_batch_norm,
    apply_batch_renorm,
    apply_dynamic_tanh,
    apply_evonorm_b0,
    apply_evonorm_s0,
    apply_filter_response_norm,
    apply_group_norm,
    apply_instance_norm,
    apply_layer_norm,
    apply_local_response_norm,
    apply_rms_norm,
    apply_whitening_norm,
    initial_kernel_scale,
    initial_stats,
    kernel_selected,
    spectral_initial_u,
    spectral_kernel,
    standardized_kernel,
    stat_dtype,
    weight_normed_kernel,
)
from jnorm._typing import Axes, AxisIndexGroups, AxisName, DTypeLike, Implementation

__all__ = list(MODULE_NAMES)  # the same modules in jnorm.linen and jnorm.nnx

Dtype = DTypeLike
Initializer = jax.nn.initializers.Initializer


def _affine_params(
    mdl: Module, feature_shape: tuple[int, ...], use_scale: bool, use_bias: bool,
    scale_init: Initializer | None = None,
) -> tuple[jax.Array | None, jax.Array | None]:
    """Creates (or reads) ``scale`` and ``bias`` of the feature shape, as flax names them
    (``scale_init`` overrides the module's)."""
    scale = bias = None
    if use_scale:
        scale = mdl.param("scale", scale_init or mdl.scale_init, feature_shape, mdl.param_dtype)
    if use_bias:
        bias = mdl.param("bias", mdl.bias_init, feature_shape, mdl.param_dtype)
    if not mdl.force_float32_reductions:
        scale = None if scale is None else jnp.asarray(scale, mdl.param_dtype)
        bias = None if bias is None else jnp.asarray(bias, mdl.param_dtype)
    return scale, bias


def _running_stats(
    mdl: Module, kind: StatsKind, feature_shape: tuple[int, ...],
    use_running_average: bool, run: Any, group_size: int | None = None,
) -> jax.Array:
    """Creates (or reads) the ``batch_stats`` variables, runs ``run(stored, training=...,
    update=...)`` and writes what it returns back: the chores of every stateful module.

    As in flax, statistics are created in float32 (``param_dtype`` when
    ``force_float32_reductions=False``), follow the input's dtype when updated (a complex input
    keeps a complex mean) and are not updated while the module is initialised.
    """
    dtype = stat_dtype(mdl.param_dtype, mdl.force_float32_reductions)
    cells = {
        name: mdl.variable("batch_stats", name, init)
        for name, init in initial_stats(
            kind, feature_shape, dtype=dtype, momentum=mdl.momentum, group_size=group_size
        ).items()
    }
    update = not use_running_average and not mdl.is_initializing()
    y, new = run(
        {name: cell.value for name, cell in cells.items()},
        training=not use_running_average, update=update,
    )
    for name, value in (new or {}).items():
        cells[name].value = value
    return y


def _use_running_average(mdl: Module, given: bool | None) -> bool:
    return module.merge_param("use_running_average", mdl.use_running_average, given)


def _feature_shape(x: jax.Array, axis: Axes, name: str) -> tuple[int, ...]:
    return tuple(x.shape[a] for a in canonicalize_axes(axis, jnp.ndim(x), name=name))


class BatchNorm(Module):
    """Batch normalization, drop-in for :class:`flax.linen.BatchNorm`, on :func:`jnorm.batch_norm`.

    Attributes are flax's: ``use_running_average``, ``axis`` (feature axis, -1), ``momentum``
    (weight of the old value, 0.99; ``None`` for a cumulative average), ``epsilon`` (1e-5),
    ``dtype``, ``param_dtype``, ``use_bias``, ``use_scale``, ``bias_init``, ``scale_init``,
    ``axis_name``, ``axis_index_groups``, ``use_fast_variance`` (no effect),
    ``force_float32_reductions``; plus jnorm's ``unbiased_running_var`` (PyTorch's convention)
    and ``skip_nonfinite`` (keep running statistics when a batch's are NaN/inf), and
    ``virtual_batch_size`` (ghost batch norm; see :func:`jnorm.batch_norm`).

    As in flax, the running statistics are not updated while the module is initialised.
    """

    use_running_average: bool | None = None
    axis: int = -1
    momentum: float | None = 0.99
    epsilon: float = 1e-5
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = initializers.zeros
    scale_init: Initializer = initializers.ones
    axis_name: AxisName = None
    axis_index_groups: AxisIndexGroups = None
    use_fast_variance: bool = True
    force_float32_reductions: bool = True
    unbiased_running_var: bool = False
    skip_nonfinite: bool = False
    virtual_batch_size: int | None = None

    @compact
    def __call__(
        self, x: jax.Array, use_running_average: bool | None = None, *,
        mask: jax.Array | None = None,
    ) -> jax.Array:
        """Normalizes ``x`` with batch (training) or running (``use_running_average``) stats."""
        x = jnp.asarray(x)
        feature_shape = _feature_shape(x, self.axis, "axis")
        scale, bias = _affine_params(self, feature_shape, self.use_scale, self.use_bias)
        return _running_stats(
            self, "batch", feature_shape, _use_running_average(self, use_running_average),
            functools.partial(
                apply_batch_norm, self, x, scale, bias, mask=mask,
                collective=not self.is_initializing(),
            ),
        )


def _zero_centered_init(mdl: Module) -> Initializer | None:
    """Zeros instead of the default ones when the scale is zero-centred (applied as 1 + scale)."""
    zero = mdl.zero_centered_scale and mdl.scale_init is initializers.ones
    return initializers.zeros if zero else None


class LayerNorm(Module):
    """Layer normalization, drop-in for :class:`flax.linen.LayerNorm`, on :func:`jnorm.layer_norm`.

    Attributes are flax's: ``epsilon`` (1e-6), ``dtype``, ``param_dtype``, ``use_bias``,
    ``use_scale``, ``bias_init``, ``scale_init``, ``reduction_axes`` (-1), ``feature_axes``
    (-1), ``axis_name``, ``axis_index_groups``, ``use_fast_variance`` (no effect),
    ``force_float32_reductions``; plus jnorm's ``implementation`` (None, ``"xla"`` or
    ``"pallas"``: the forward's program, see :func:`jnorm.layer_norm`) and
    ``zero_centered_scale`` (False; True: ``scale`` is applied as ``1 + scale``, Gemma-style,
    and the default ``scale_init`` gives zeros; converting checkpoints: see
    :func:`jnorm.layer_norm`).
    """

    epsilon: float = 1e-6
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = initializers.zeros
    scale_init: Initializer = initializers.ones
    reduction_axes: Axes = -1
    feature_axes: Axes = -1
    axis_name: AxisName = None
    axis_index_groups: AxisIndexGroups = None
    use_fast_variance: bool = True
    force_float32_reductions: bool = True
    implementation: Implementation = None
    zero_centered_scale: bool = False

    @compact
    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Normalizes ``x`` over ``reduction_axes``; params vary along ``feature_axes``."""
        x = jnp.asarray(x)
        feature_shape = _feature_shape(x, self.feature_axes, "feature_axes")
        scale, bias = _affine_params(self, feature_shape, self.use_scale, self.use_bias,
                                     _zero_centered_init(self))
        return apply_layer_norm(self, x, scale, bias, mask)


class RMSNorm(Module):
    """RMS normalization, drop-in for :class:`flax.linen.RMSNorm`, on :func:`jnorm.rms_norm`.

    Attributes are flax's: ``epsilon`` (1e-6), ``dtype``, ``param_dtype``, ``use_scale``,
    ``scale_init``, ``reduction_axes`` (-1), ``feature_axes`` (-1), ``axis_name``,
    ``axis_index_groups``, ``use_fast_variance`` (no effect), ``force_float32_reductions``;
    plus jnorm's ``implementation`` (see :func:`jnorm.layer_norm`) and ``zero_centered_scale``
    (False; True: ``scale`` applied as ``1 + scale`` and initialised to zeros, Gemma's RMSNorm).
    """

    epsilon: float = 1e-6
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    use_scale: bool = True
    scale_init: Initializer = initializers.ones
    reduction_axes: Axes = -1
    feature_axes: Axes = -1
    axis_name: AxisName = None
    axis_index_groups: AxisIndexGroups = None
    use_fast_variance: bool = True
    force_float32_reductions: bool = True
    implementation: Implementation = None
    zero_centered_scale: bool = False

    @compact
    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Divides ``x`` by its root mean square over ``reduction_axes``."""
        x = jnp.asarray(x)
        feature_shape = _feature_shape(x, self.feature_axes, "feature_axes")
        scale, _ = _affine_params(self, feature_shape, self.use_scale, False,
                                  _zero_centered_init(self))
        return apply_rms_norm(self, x, scale, mask)


class DynamicTanh(Module):
    """Dynamic Tanh on :func:`jnorm.dynamic_tanh` (Zhu et al. 2025): a drop-in for
    :class:`LayerNorm` in a transformer, ``y = scale * tanh(alpha * x) + bias``.

    Attributes: ``alpha_init`` (0.5, the paper's), ``per_channel_alpha`` (False: one scalar
    ``alpha`` as in the paper; True: one per feature), ``feature_axes`` (-1), ``dtype``,
    ``param_dtype``, ``use_bias``, ``use_scale``, ``bias_init``, ``scale_init``,
    ``force_float32_reductions`` (as in :class:`LayerNorm`). Params: ``alpha``, ``scale``,
    ``bias``. The call takes ``mask`` like :class:`LayerNorm` (checked, no effect: nothing is
    reduced).

    Examples:
      >>> import jax, jax.numpy as jnp, jnorm.linen as jnn
      >>> v = jnn.DynamicTanh().init(jax.random.key(0), jnp.ones((2, 5, 8)))
      >>> v["params"]["alpha"].tolist(), v["params"]["scale"].shape
      (0.5, (8,))
    """

    alpha_init: float = 0.5
    per_channel_alpha: bool = False
    feature_axes: Axes = -1
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = initializers.zeros
    scale_init: Initializer = initializers.ones
    force_float32_reductions: bool = True

    @compact
    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Applies ``scale * tanh(alpha * x) + bias``."""
        x = jnp.asarray(x)
        feature_shape = _feature_shape(x, self.feature_axes, "feature_axes")
        scale, bias = _affine_params(self, feature_shape, self.use_scale, self.use_bias)
        alpha = self.param("alpha", initializers.constant(self.alpha_init),
                           feature_shape if self.per_channel_alpha else (), self.param_dtype)
        return apply_dynamic_tanh(self, x, scale, bias, alpha, mask)


class GroupNorm(Module):
    """Group normalization, drop-in for :class:`flax.linen.GroupNorm`, on :func:`jnorm.group_norm`.

    Attributes are flax's: ``num_groups`` (32), ``group_size``, ``epsilon`` (1e-6), ``dtype``,
    ``param_dtype``, ``use_bias``, ``use_scale``, ``bias_init``, ``scale_init``,
    ``reduction_axes`` (None: all but the batch axis 0; if given it must include the last axis,
    the channels), ``axis_name``, ``axis_index_groups``, ``use_fast_variance`` (no effect),
    ``force_float32_reductions``. Channels are the last axis, as in flax.
    """

    num_groups: int | None = 32
    group_size: int | None = None
    epsilon: float = 1e-6
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = initializers.zeros
    scale_init: Initializer = initializers.ones
    reduction_axes: Axes | None = None
    axis_name: AxisName = None
    axis_index_groups: AxisIndexGroups = None
    use_fast_variance: bool = True
    force_float32_reductions: bool = True

    @compact
    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Normalizes each group of channels of each example."""
        x = jnp.asarray(x)
        scale, bias = _affine_params(self, (x.shape[-1],), self.use_scale, self.use_bias)
        return apply_group_norm(self, x, scale, bias, mask)


class InstanceNorm(Module):
    """Instance normalization, drop-in for :class:`flax.linen.InstanceNorm`.

    On :func:`jnorm.instance_norm`. Attributes are flax's: ``epsilon`` (1e-6), ``dtype``,
    ``param_dtype``, ``use_bias``, ``use_scale``, ``bias_init``, ``scale_init``,
    ``feature_axes`` (-1), ``axis_name``, ``axis_index_groups``, ``use_fast_variance`` (no
    effect), ``force_float32_reductions``.
    """

    epsilon: float = 1e-6
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = initializers.zeros
    scale_init: Initializer = initializers.ones
    feature_axes: Axes = -1
    axis_name: AxisName = None
    axis_index_groups: AxisIndexGroups = None
    use_fast_variance: bool = True
    force_float32_reductions: bool = True

    @compact
    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Normalizes each channel of each example over its spatial axes."""
        x = jnp.asarray(x)
        feature_shape = _feature_shape(x, self.feature_axes, "feature_axes")
        scale, bias = _affine_params(self, feature_shape, self.use_scale, self.use_bias)
        return apply_instance_norm(self, x, scale, bias, mask)


# --------------------------------------------------------------------------------------------
# Beyond the anchors: whitening, batch renorm, FRN/EvoNorm, weight transforms (plumbing only;
# the math is in jnorm's functions, the plumbing shared with jnorm.nnx in jnorm._modules).


class DecorrelatedBatchNorm(Module):
    """ZCA-whitening batch norm on :func:`jnorm.decorrelated_batch_norm` (Huang et al. 2018).

    Attributes: ``use_running_average``, ``group_size`` (features whitened together; None: all),
    ``axis`` (-1), ``momentum`` (0.99, weight of the old value; None: cumulative), ``epsilon``
    (1e-5, added to the covariance's diagonal), ``dtype``, ``param_dtype``, ``use_bias``,
    ``use_scale``, ``bias_init``, ``scale_init``. Variables: ``params`` ``scale``/``bias``
    ``[C]``; ``batch_stats`` ``mean`` ``[C]``, ``whitening`` ``[C/G, G, G]`` (+ ``count`` with
    ``momentum=None``). Running statistics are not updated during ``init``.

    Examples:
      >>> import jax, jax.numpy as jnp, jnorm.linen as jnn
      >>> m = jnn.DecorrelatedBatchNorm(use_running_average=False, group_size=2)
      >>> v = m.init(jax.random.key(0), jnp.ones((8, 4)))
      >>> v["batch_stats"]["whitening"].shape
      (2, 2, 2)
    """

    use_running_average: bool | None = None
    group_size: int | None = None
    axis: int = -1
    momentum: float | None = 0.99
    epsilon: float = 1e-5
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = initializers.zeros
    scale_init: Initializer = initializers.ones
    force_float32_reductions: bool = True
    iterations: int | None = None  # None: ZCA by eigendecomposition; int: IterNorm's T

    @compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        """Whitens ``x`` with batch (training) or running statistics."""
        x = jnp.asarray(x)
        feature_shape = _feature_shape(x, self.axis, "axis")
        scale, bias = _affine_params(self, feature_shape, self.use_scale, self.use_bias)
        return _running_stats(
            self, "whitening", feature_shape, _use_running_average(self, use_running_average),
            functools.partial(apply_whitening_norm, self, x, scale, bias),
            group_size=self.group_size,
        )


class IterNorm(DecorrelatedBatchNorm):
    """IterNorm on :func:`jnorm.iter_norm` (Huang et al. 2019): Newton-Schulz whitening.

    :class:`DecorrelatedBatchNorm` with ``iterations`` (``T``, default 5) set; same attributes
    and variables.

    Examples:
      >>> import jax, jax.numpy as jnp, jnorm.linen as jnn
      >>> m = jnn.IterNorm(use_running_average=False, iterations=5)
      >>> v = m.init(jax.random.key(0), jnp.ones((8, 3)))
      >>> y, upd = m.apply(v, jnp.arange(24.0).reshape(8, 3) % 5, mutable=["batch_stats"])
      >>> sorted(upd["batch_stats"])
      ['mean', 'whitening']
    """

    iterations: int | None = 5


class BatchRenorm(Module):
    """Batch Renormalization on :func:`jnorm.batch_renorm` (Ioffe 2017).

    :class:`BatchNorm`'s attributes and variables (``mean``/``var`` in ``batch_stats``, so a
    BatchNorm checkpoint loads) plus ``r_max`` (3.0) and ``d_max`` (5.0). Both can be overridden
    per call, e.g. with :func:`jnorm.batch_renorm_schedule` of the step (traced values work).

    Examples:
      >>> import jax, jax.numpy as jnp, jnorm, jnorm.linen as jnn
      >>> m = jnn.BatchRenorm(use_running_average=False)
      >>> v = m.init(jax.random.key(0), jnp.ones((4, 3)))
      >>> r_max, d_max = jnorm.batch_renorm_schedule(100)
      >>> y, upd = m.apply(v, jnp.ones((4, 3)), r_max=r_max, d_max=d_max, mutable=["batch_stats"])
      >>> sorted(upd["batch_stats"])
      ['mean', 'var']
    """

    use_running_average: bool | None = None
    axis: int = -1
    momentum: float | None = 0.99
    epsilon: float = 1e-5
    r_max: float = 3.0
    d_max: float = 5.0
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = initializers.zeros
    scale_init: Initializer = initializers.ones
    axis_name: AxisName = None
    axis_index_groups: AxisIndexGroups = None
    force_float32_reductions: bool = True

    @compact
    def __call__(
        self, x: jax.Array, use_running_average: bool | None = None, *,
        r_max: Any = None, d_max: Any = None, mask: jax.Array | None = None,
    ) -> jax.Array:
        """Renormalizes ``x`` (training) or applies the running statistics (eval)."""
        x = jnp.asarray(x)
        feature_shape = _feature_shape(x, self.axis, "axis")
        scale, bias = _affine_params(self, feature_shape, self.use_scale, self.use_bias)
        return _running_stats(
            self, "batch", feature_shape, _use_running_average(self, use_running_average),
            functools.partial(
                apply_batch_renorm, self, x, scale, bias, mask=mask, r_max=r_max, d_max=d_max,
                collective=not self.is_initializing(),
            ),
        )


class FilterResponseNorm(Module):
    """FRN + TLU on :func:`jnorm.filter_response_norm` and :func:`jnorm.tlu` (Singh 2019).

    Attributes: ``epsilon`` (1e-6), ``learned_epsilon`` (False; if True a scalar param ``eps``
    is learned and ``epsilon + |eps|`` used, as the paper does for 1x1 inputs), ``use_tlu``
    (True; param ``tau`` ``[C]`` initialised to 0), ``dtype``, ``param_dtype``, ``use_bias``,
    ``use_scale``, ``bias_init``, ``scale_init``. Channels last.

    Examples:
      >>> import jax, jax.numpy as jnp, jnorm.linen as jnn
      >>> v = jnn.FilterResponseNorm().init(jax.random.key(0), jnp.ones((1, 4, 4, 3)))
      >>> sorted(v["params"])
      ['bias', 'scale', 'tau']
    """

    epsilon: float = 1e-6
    learned_epsilon: bool = False
    use_tlu: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = initializers.zeros
    scale_init: Initializer = initializers.ones
    force_float32_reductions: bool = True

    @compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalizes each channel of each example by its mean square, then applies TLU."""
        x = jnp.asarray(x)
        c = x.shape[-1]
        scale, bias = _affine_params(self, (c,), self.use_scale, self.use_bias)
        eps = (
            self.param("eps", initializers.zeros, (), self.param_dtype)
            if self.learned_epsilon else None
        )
        tau = (
            self.param("tau", initializers.zeros, (c,), self.param_dtype) if self.use_tlu else None
        )
        return apply_filter_response_norm(self, x, scale, bias, eps, tau)


class EvoNormS0(Module):
    """EvoNorm-S0 on :func:`jnorm.evonorm_s0` (Liu et al. 2020): batch-independent.

    Attributes: ``num_groups`` (32) / ``group_size``, ``epsilon`` (1e-5), ``use_v`` (True:
    param ``v`` ``[C]`` initialised to 1, the swish-like part), ``dtype``, ``param_dtype``,
    ``use_bias``, ``use_scale``, ``bias_init``, ``scale_init``. Channels last.
    """

    num_groups: int | None = 32
    group_size: int | None = None
    epsilon: float = 1e-5
    use_v: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = initializers.zeros
    scale_init: Initializer = initializers.ones
    force_float32_reductions: bool = True

    @compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies EvoNorm-S0 to ``x`` (``[N, ..., C]``)."""
        x = jnp.asarray(x)
        c = x.shape[-1]
        scale, bias = _affine_params(self, (c,), self.use_scale, self.use_bias)
        v = self.param("v", initializers.ones, (c,), self.param_dtype) if self.use_v else None
        return apply_evonorm_s0(self, x, scale, bias, v)


class EvoNormB0(Module):
    """EvoNorm-B0 on :func:`jnorm.evonorm_b0` (Liu et al. 2020): batch variance + instance std.

    Attributes: ``use_running_average``, ``momentum`` (0.99), ``epsilon`` (1e-5), ``use_v``
    (True), ``dtype``, ``param_dtype``, ``use_bias``, ``use_scale``, ``bias_init``,
    ``scale_init``. Variables: ``batch_stats`` ``mean``/``var`` ``[C]`` (the mean is tracked
    for inspection; B0 uses the variance). Channels last.
    """

    use_running_average: bool | None = None
    momentum: float | None = 0.99
    epsilon: float = 1e-5
    use_v: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = initializers.zeros
    scale_init: Initializer = initializers.ones
    force_float32_reductions: bool = True

    @compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        """Applies EvoNorm-B0 with batch (training) or running (eval) variance."""
        x = jnp.asarray(x)
        c = x.shape[-1]
        scale, bias = _affine_params(self, (c,), self.use_scale, self.use_bias)
        v = self.param("v", initializers.ones, (c,), self.param_dtype) if self.use_v else None
        return _running_stats(
            self, "batch", (c,), _use_running_average(self, use_running_average),
            functools.partial(apply_evonorm_b0, self, x, scale, bias, v),
        )


def _wrap_kernels(
    mdl: Module, transform: Any, args: tuple, kwargs: dict, *, keep_raw: bool = False
) -> Any:
    """Calls ``mdl.layer_instance(*args, **kwargs)`` with every param of the layer replaced by
    ``transform(path, value)`` (``path`` like ``"kernel"`` or ``"sub/kernel"``).

    With ``keep_raw`` the collections are mutable through the wrapper and the layer's own
    (untransformed) params are what ``init`` stores -- flax's SpectralNorm stores transformed
    ones."""
    raw: dict[str, jax.Array] = {}

    def trans_in(vs: Any) -> Any:
        def one(path: tuple, value: jax.Array) -> jax.Array:
            raw[jax.tree_util.keystr(path)] = value
            str_path = jax.tree_util.keystr(path[1:], simple=True, separator="/")
            return transform(str_path, value)  # path[0] is the collection ("params")

        return jax.tree_util.tree_map_with_path(one, vs)

    def trans_out(vs: Any) -> Any:
        if not keep_raw:
            return vs
        return jax.tree_util.tree_map_with_path(
            lambda p, x: raw.get(jax.tree_util.keystr(p), x), vs
        )

    return _transforms.map_variables(
        lambda layer: layer(*args, **kwargs), trans_in_fn=trans_in, trans_out_fn=trans_out,
        init=mdl.is_initializing(), mutable=keep_raw,
    )(mdl.layer_instance)


class WeightStandardization(Module):
    """Wraps a linen layer so it uses standardized kernels (Qiao et al. 2019; Brock et al. 2021).

    ``WeightStandardization(nn.Conv(64, (3, 3)))`` calls the conv with
    :func:`jnorm.standardize_weight` of its kernel; ``scaled=True`` uses
    :func:`jnorm.scaled_standardize_weight` with a learned per-output ``gain`` (initialised to
    1; param ``<path>/gain``) and ``nonlinearity_gain``. Attributes: ``layer_instance``,
    ``scaled`` (False), ``epsilon`` (None: 1e-5, or 1e-4 when scaled), ``nonlinearity_gain``
    (1.0), ``param_dtype``, ``variable_filter`` (``("kernel",)``: which of the layer's params are
    transformed). The layer's own params stay where they are (``layer_instance``'s name).

    Examples:
      >>> import jax, jax.numpy as jnp, flax.linen as nn, jnorm.linen as jnn
      >>> m = jnn.WeightStandardization(nn.Dense(3))
      >>> v = m.init(jax.random.key(0), jnp.ones((2, 4)))
      >>> m.apply(v, jnp.ones((2, 4))).shape
      (2, 3)
    """

    layer_instance: Module
    scaled: bool = False
    epsilon: float | None = None
    nonlinearity_gain: float = 1.0
    param_dtype: Dtype = jnp.float32
    variable_filter: Any = ("kernel",)

    @compact
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calls the wrapped layer with its kernel standardized."""

        def transform(path: str, value: jax.Array) -> jax.Array:
            if not kernel_selected(path, value, self.variable_filter):
                return value
            gain = self.param(
                f"{self.layer_instance.name}/{path}/gain", initializers.ones,
                (value.shape[-1],), self.param_dtype,
            ) if self.scaled else None
            return standardized_kernel(self, value, gain)

        return _wrap_kernels(self, transform, args, kwargs)


class WeightNorm(Module):
    """Wraps a linen layer with weight normalization, ``w = g v / ||v||`` (Salimans 2016).

    Unlike ``flax.linen.WeightNorm`` (``g`` initialised to 1, which changes the layer's function
    at init), ``g`` is initialised to ``||v||`` of the initial kernel, as PyTorch's
    ``weight_norm`` does: the wrapped layer computes exactly what the bare layer would. Params:
    the layer's own (its kernel is ``v``) plus ``<layer>/<path>/scale`` (``g``, ``[O]``).
    Attributes: ``layer_instance``, ``epsilon`` (0.0), ``param_dtype``, ``variable_filter``
    (``("kernel",)``), ``scale_init`` (None: ``||v||`` as above; an initializer, e.g. flax's
    ``ones``, gives flax's behaviour). Norms are over the fan-in (all kernel axes but the last), on
    :func:`jnorm.weight_norm`.

    Examples:
      >>> import jax, jax.numpy as jnp, flax.linen as nn, jnorm.linen as jnn
      >>> x = jnp.ones((2, 4))
      >>> v = jnn.WeightNorm(nn.Dense(3)).init(jax.random.key(0), x)
      >>> plain = {"params": v["params"]["layer_instance"]}
      >>> bool(jnp.allclose(jnn.WeightNorm(nn.Dense(3)).apply(v, x), nn.Dense(3).apply(plain, x)))
      True
    """

    layer_instance: Module
    epsilon: float = 0.0
    param_dtype: Dtype = jnp.float32
    variable_filter: Any = ("kernel",)
    scale_init: Initializer | None = None

    @compact
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calls the wrapped layer with its kernel weight-normalized."""

        def transform(path: str, value: jax.Array) -> jax.Array:
            if not kernel_selected(path, value, self.variable_filter):
                return value
            g = self.param(
                f"{self.layer_instance.name}/{path}/scale",
                lambda key: initial_kernel_scale(
                    key, value, feature_axes=-1, scale_init=self.scale_init,
                    param_dtype=self.param_dtype,
                ),
            )
            # the kernel's last axis holds the output units; the layer keeps its own dtype
            return weight_normed_kernel(value, g, feature_axes=-1, epsilon=self.epsilon,
                                          dtype=None)

        return _wrap_kernels(self, transform, args, kwargs)


class LocalResponseNorm(Module):
    """Local response normalization on :func:`jnorm.local_response_norm` (Krizhevsky 2012).

    Attributes are ``torch.nn.LocalResponseNorm``'s (``size`` 5, ``alpha`` 1e-4, ``beta`` 0.75,
    ``k`` 1.0, same meaning with the default ``convention="torch"``) plus ``feature_axes``
    (the channel axis; -1: channels last, flax's layout; 1 for ``[N, C, ...]``),
    ``convention`` (``"torch"`` or ``"tensorflow"``, see :func:`jnorm.lrn_tensorflow_args`)
    and ``dtype``. No variables.

    Examples:
      >>> import jax, jax.numpy as jnp, jnorm.linen as jnn
      >>> m = jnn.LocalResponseNorm(size=3)
      >>> m.apply({}, jnp.ones((2, 4, 4, 8))).shape
      (2, 4, 4, 8)
    """

    size: int = 5
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 1.0
    feature_axes: int = -1
    convention: str = "torch"
    dtype: Dtype | None = None

    @compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalizes each activation by the squares of its neighbouring channels."""
        return apply_local_response_norm(self, x)


class SpectralNorm(Module):
    """Wraps a linen layer with spectral normalization, ``W / sigma_max(W)`` (Miyato 2018).

    Drop-in for ``flax.linen.SpectralNorm``: same attributes (``layer_instance``, ``n_steps``
    1, ``epsilon`` 1e-12, ``dtype``, ``param_dtype``, ``error_on_non_matrix``,
    ``collection_name`` ``"batch_stats"``), same call (``update_stats`` keyword: write the new
    power-iteration state back) and same variables (``<layer>/<path>/u`` ``[1, O]`` and
    ``<layer>/<path>/sigma`` ``[]`` in ``collection_name``), so flax checkpoints load. Every
    parameter of the layer with 2 or more dimensions is normalized (kernels ``[..., O]`` viewed
    as ``[prod(...), O]``); the math is :func:`jnorm.spectral_norm`.

    Better than flax's:

    * ``u`` is initialised to the exact top singular vector of the initial kernel
      (:func:`jnorm.spectral_norm_init`) and ``sigma`` to the exact largest singular value, so
      the layer is normalized correctly from step 0 (flax's random ``u`` and a single
      iteration under-estimate ``sigma`` at first, and its stored ``sigma`` starts at 1);
    * ``sigma`` (the documented estimate of ``sigma_max`` of the layer's current kernel, as
      computed in the last call with ``update_stats=True``) is always stored, also after
      ``init`` -- read it from ``variables[collection_name]`` to monitor or regularise it;
    * ``init`` stores the layer's own initial kernel in ``params`` (flax's stores the kernel
      already divided by its estimated ``sigma``), so ``params`` and ``sigma`` agree;
    * the power iteration runs in at least float32 for half-precision parameters.

    Examples:
      >>> import jax, jax.numpy as jnp, flax.linen as nn, jnorm.linen as jnn
      >>> x = jax.random.normal(jax.random.key(1), (4, 6))
      >>> m = jnn.SpectralNorm(nn.Dense(5))
      >>> v = m.init(jax.random.key(0), x, update_stats=False)
      >>> k = v["params"]["layer_instance"]["kernel"]
      >>> sigma = v["batch_stats"]["layer_instance/kernel/sigma"]
      >>> bool(jnp.allclose(sigma, jnp.linalg.svd(k, compute_uv=False)[0], rtol=1e-5))
      True
      >>> y, upd = m.apply(v, x, update_stats=True, mutable=["batch_stats"])
      >>> upd["batch_stats"]["layer_instance/kernel/u"].shape
      (1, 5)
    """

    layer_instance: Module
    n_steps: int = 1
    epsilon: float = 1e-12
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    error_on_non_matrix: bool = False
    collection_name: str = "batch_stats"

    @compact
    def __call__(self, *args: Any, update_stats: bool, **kwargs: Any) -> Any:
        """Calls the wrapped layer with its (>= 2-D) params divided by their spectral norms."""

        def transform(path: str, value: jax.Array) -> jax.Array:
            value = jnp.asarray(value)
            if value.ndim <= 1:
                return value
            prefix = f"{self.layer_instance.name}/{path}"
            u_var = self.variable(
                self.collection_name, prefix + "/u", lambda: spectral_initial_u(self, value)
            )
            sigma_var = self.variable(
                self.collection_name, prefix + "/sigma", lambda: jnp.zeros((), self.param_dtype)
            )
            w_sn, new_u, sigma = spectral_kernel(self, value, u_var.value)
            if update_stats or self.is_initializing():
                u_var.value = new_u.astype(self.param_dtype)
                sigma_var.value = sigma.astype(self.param_dtype)
            return w_sn

        return _wrap_kernels(self, transform, args, kwargs, keep_raw=True)
