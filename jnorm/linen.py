"""Flax linen modules: drop-in replacements for ``flax.linen``'s normalization layers.

Each module has the attributes, defaults, call signature and variables of its flax namesake
(``params``: ``scale``/``bias``; ``batch_stats``: ``mean``/``var``), so a model switches by
changing one import and its checkpoints load unchanged. The modules are plumbing only: they
create the variables and call jnorm's functions, which hold all the math; a module and its
function give bitwise-equal results.

Differences from flax, all in accuracy's favour:

* statistics are always computed with jnorm's stable one-pass algorithm; ``use_fast_variance``
  is accepted for compatibility and has no effect (jnorm's default is fast *and* accurate);
* ``force_float32_reductions`` is accepted; statistics are always accumulated in at least
  float32 (``False`` only changes the parameter dtype used in the affine step, as in flax);
* ``BatchNorm`` with ``axis_name`` combines devices by count, exactly, also with masks.

``BatchNorm(momentum=None)`` averages cumulatively (PyTorch's ``momentum=None``) and then keeps
a ``count`` in ``batch_stats``; with a float momentum the collection holds only ``mean`` and
``var``, as flax's does.

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

from typing import Any

import jax
import jax.numpy as jnp
from flax.linen import dtypes, initializers, module
from flax.linen.module import Module, compact

import jnorm._layers as F
from jnorm._axes import Axes, canonicalize_axes
from jnorm._state import BatchStats

__all__ = ["BatchNorm", "GroupNorm", "InstanceNorm", "LayerNorm", "RMSNorm"]

Dtype = Any
Initializer = Any


def _affine_params(
    mdl: Module, feature_shape: tuple[int, ...], use_scale: bool, use_bias: bool
) -> tuple[jax.Array | None, jax.Array | None]:
    """Creates (or reads) ``scale`` and ``bias`` of the feature shape, as flax names them."""
    scale = bias = None
    if use_scale:
        scale = mdl.param("scale", mdl.scale_init, feature_shape, mdl.param_dtype)
    if use_bias:
        bias = mdl.param("bias", mdl.bias_init, feature_shape, mdl.param_dtype)
    if not mdl.force_float32_reductions:
        scale = None if scale is None else jnp.asarray(scale, mdl.param_dtype)
        bias = None if bias is None else jnp.asarray(bias, mdl.param_dtype)
    return scale, bias


def _out_dtype(mdl: Module, x: jax.Array, *params: jax.Array | None) -> jnp.dtype:
    """flax's rule: ``dtype`` if set, else the promoted dtype of the input and the params.

    Only a dtype is computed here, so it uses JAX's standard promotion lattice even when the
    user runs with ``jax_numpy_dtype_promotion="strict"`` (the arrays are cast explicitly).
    """
    with jax.numpy_dtype_promotion("standard"):
        return dtypes.canonicalize_dtype(
            x, *[p for p in params if p is not None], dtype=mdl.dtype
        )


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
    axis_name: str | None = None
    axis_index_groups: Any = None
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
        use_running_average = module.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        x = jnp.asarray(x)
        features = canonicalize_axes(self.axis, x.ndim, name="axis")
        feature_shape = tuple(x.shape[a] for a in features)
        stat_dtype = jnp.float32 if self.force_float32_reductions else self.param_dtype
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, feature_shape, stat_dtype)
        ra_var = self.variable("batch_stats", "var", jnp.ones, feature_shape, stat_dtype)
        ra_count = (
            self.variable("batch_stats", "count", jnp.zeros, (), jnp.int32)
            if self.momentum is None else None
        )
        scale, bias = _affine_params(self, feature_shape, self.use_scale, self.use_bias)
        state = BatchStats(
            ra_mean.value, ra_var.value,
            ra_count.value if ra_count is not None else jnp.zeros((), jnp.int32),
        )
        y, new_state = F.batch_norm(
            x, state, scale, bias,
            training=not use_running_average,
            axis=features,
            momentum=self.momentum,
            epsilon=self.epsilon,
            mask=mask,
            axis_name=None if self.is_initializing() else self.axis_name,
            axis_index_groups=None if self.is_initializing() else self.axis_index_groups,
            unbiased_running_var=self.unbiased_running_var,
            skip_nonfinite=self.skip_nonfinite,
            dtype=_out_dtype(self, x, scale, bias),
            virtual_batch_size=self.virtual_batch_size,
        )
        if not use_running_average and not self.is_initializing():
            ra_mean.value = new_state.mean
            ra_var.value = new_state.var
            if ra_count is not None:
                ra_count.value = new_state.count
        return y


class LayerNorm(Module):
    """Layer normalization, drop-in for :class:`flax.linen.LayerNorm`, on :func:`jnorm.layer_norm`.

    Attributes are flax's: ``epsilon`` (1e-6), ``dtype``, ``param_dtype``, ``use_bias``,
    ``use_scale``, ``bias_init``, ``scale_init``, ``reduction_axes`` (-1), ``feature_axes``
    (-1), ``axis_name``, ``axis_index_groups``, ``use_fast_variance`` (no effect),
    ``force_float32_reductions``.
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
    axis_name: str | None = None
    axis_index_groups: Any = None
    use_fast_variance: bool = True
    force_float32_reductions: bool = True

    @compact
    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Normalizes ``x`` over ``reduction_axes``; params vary along ``feature_axes``."""
        x = jnp.asarray(x)
        feat = canonicalize_axes(self.feature_axes, x.ndim, name="feature_axes")
        scale, bias = _affine_params(
            self, tuple(x.shape[a] for a in feat), self.use_scale, self.use_bias
        )
        return F.layer_norm(
            x, scale, bias, axis=self.reduction_axes, feature_axes=feat, epsilon=self.epsilon,
            mask=mask, axis_name=self.axis_name, axis_index_groups=self.axis_index_groups,
            dtype=_out_dtype(self, x, scale, bias),
        )


class RMSNorm(Module):
    """RMS normalization, drop-in for :class:`flax.linen.RMSNorm`, on :func:`jnorm.rms_norm`.

    Attributes are flax's: ``epsilon`` (1e-6), ``dtype``, ``param_dtype``, ``use_scale``,
    ``scale_init``, ``reduction_axes`` (-1), ``feature_axes`` (-1), ``axis_name``,
    ``axis_index_groups``, ``use_fast_variance`` (no effect), ``force_float32_reductions``.
    """

    epsilon: float = 1e-6
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    use_scale: bool = True
    scale_init: Initializer = initializers.ones
    reduction_axes: Axes = -1
    feature_axes: Axes = -1
    axis_name: str | None = None
    axis_index_groups: Any = None
    use_fast_variance: bool = True
    force_float32_reductions: bool = True

    @compact
    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Divides ``x`` by its root mean square over ``reduction_axes``."""
        x = jnp.asarray(x)
        feat = canonicalize_axes(self.feature_axes, x.ndim, name="feature_axes")
        scale, _ = _affine_params(self, tuple(x.shape[a] for a in feat), self.use_scale, False)
        return F.rms_norm(
            x, scale, axis=self.reduction_axes, feature_axes=feat, epsilon=self.epsilon,
            mask=mask, axis_name=self.axis_name, axis_index_groups=self.axis_index_groups,
            dtype=_out_dtype(self, x, scale),
        )


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
    axis_name: str | None = None
    axis_index_groups: Any = None
    use_fast_variance: bool = True
    force_float32_reductions: bool = True

    @compact
    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Normalizes each group of channels of each example."""
        x = jnp.asarray(x)
        others = None
        if self.reduction_axes is not None:
            red = canonicalize_axes(self.reduction_axes, x.ndim, name="reduction_axes")
            if x.ndim - 1 not in red:
                raise ValueError(
                    "GroupNorm: `reduction_axes` must include the last axis, which holds the "
                    f"channels; got {self.reduction_axes!r}."
                )
            others = tuple(a for a in red if a != x.ndim - 1)
        channels = x.shape[-1]
        F.resolve_groups(channels, self.num_groups, self.group_size)
        scale, bias = _affine_params(self, (channels,), self.use_scale, self.use_bias)
        return F.group_norm(
            x, scale, bias, num_groups=self.num_groups, group_size=self.group_size,
            channel_axis=-1, reduction_axes=others, epsilon=self.epsilon, mask=mask,
            axis_name=self.axis_name, axis_index_groups=self.axis_index_groups,
            dtype=_out_dtype(self, x, scale, bias),
        )


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
    axis_name: str | None = None
    axis_index_groups: Any = None
    use_fast_variance: bool = True
    force_float32_reductions: bool = True

    @compact
    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Normalizes each channel of each example over its spatial axes."""
        x = jnp.asarray(x)
        feat = canonicalize_axes(self.feature_axes, x.ndim, name="feature_axes")
        scale, bias = _affine_params(
            self, tuple(x.shape[a] for a in feat), self.use_scale, self.use_bias
        )
        return F.instance_norm(
            x, scale, bias, channel_axis=feat, epsilon=self.epsilon, mask=mask,
            axis_name=self.axis_name, axis_index_groups=self.axis_index_groups,
            dtype=_out_dtype(self, x, scale, bias),
        )




# --------------------------------------------------------------------------------------------
# Beyond the anchors: whitening, batch renorm, FRN/EvoNorm, weight transforms (plumbing only;
# the math is in jnorm._whitening, jnorm._renorm, jnorm._frn, jnorm._weight, jnorm._lrn and
# jnorm._spectral).

from flax.linen import transforms as _transforms  # noqa: E402

import jnorm._frn as _frn  # noqa: E402
import jnorm._lrn as _lrn  # noqa: E402
import jnorm._renorm as _renorm  # noqa: E402
import jnorm._spectral as _spectral  # noqa: E402
import jnorm._weight as _weight  # noqa: E402
import jnorm._whitening as _whitening  # noqa: E402

__all__ += [
    "BatchRenorm",
    "DecorrelatedBatchNorm",
    "EvoNormB0",
    "EvoNormS0",
    "FilterResponseNorm",
    "IterNorm",
    "LocalResponseNorm",
    "SpectralNorm",
    "WeightNorm",
    "WeightStandardization",
]


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
        use_running_average = module.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        x = jnp.asarray(x)
        (ch,) = canonicalize_axes(self.axis, x.ndim, name="axis")
        c = x.shape[ch]
        init = _whitening.WhiteningStats.init(c, group_size=self.group_size)
        ra_mean = self.variable("batch_stats", "mean", lambda: init.mean)
        ra_w = self.variable("batch_stats", "whitening", lambda: init.whitening)
        ra_count = (
            self.variable("batch_stats", "count", jnp.zeros, (), jnp.int32)
            if self.momentum is None else None
        )
        scale, bias = _affine_params(self, (c,), self.use_scale, self.use_bias)
        state = _whitening.WhiteningStats(
            ra_mean.value, ra_w.value,
            ra_count.value if ra_count is not None else jnp.zeros((), jnp.int32),
        )
        kwargs = dict(
            training=not use_running_average, group_size=self.group_size, axis=ch,
            momentum=self.momentum, epsilon=self.epsilon, dtype=_out_dtype(self, x, scale, bias),
        )
        if self.iterations is None:
            y, new = _whitening.decorrelated_batch_norm(x, state, scale, bias, **kwargs)
        else:
            y, new = _whitening.iter_norm(
                x, state, scale, bias, iterations=self.iterations, **kwargs
            )
        if not use_running_average and not self.is_initializing():
            ra_mean.value, ra_w.value = new.mean, new.whitening
            if ra_count is not None:
                ra_count.value = new.count
        return y


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
    axis_name: str | None = None
    axis_index_groups: Any = None
    force_float32_reductions: bool = True

    @compact
    def __call__(
        self, x: jax.Array, use_running_average: bool | None = None, *,
        r_max: Any = None, d_max: Any = None, mask: jax.Array | None = None,
    ) -> jax.Array:
        """Renormalizes ``x`` (training) or applies the running statistics (eval)."""
        use_running_average = module.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        x = jnp.asarray(x)
        features = canonicalize_axes(self.axis, x.ndim, name="axis")
        feature_shape = tuple(x.shape[a] for a in features)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, feature_shape, jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, feature_shape, jnp.float32)
        ra_count = (
            self.variable("batch_stats", "count", jnp.zeros, (), jnp.int32)
            if self.momentum is None else None
        )
        scale, bias = _affine_params(self, feature_shape, self.use_scale, self.use_bias)
        state = BatchStats(
            ra_mean.value, ra_var.value,
            ra_count.value if ra_count is not None else jnp.zeros((), jnp.int32),
        )
        y, new = _renorm.batch_renorm(
            x, state, scale, bias, training=not use_running_average,
            r_max=self.r_max if r_max is None else r_max,
            d_max=self.d_max if d_max is None else d_max,
            axis=features, momentum=self.momentum, epsilon=self.epsilon, mask=mask,
            axis_name=None if self.is_initializing() else self.axis_name,
            axis_index_groups=None if self.is_initializing() else self.axis_index_groups,
            dtype=_out_dtype(self, x, scale, bias),
        )
        if not use_running_average and not self.is_initializing():
            ra_mean.value, ra_var.value = new.mean, new.var
            if ra_count is not None:
                ra_count.value = new.count
        return y


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
        eps: Any = self.epsilon
        if self.learned_epsilon:
            eps = eps + jnp.abs(self.param("eps", initializers.zeros, (), self.param_dtype))
        y = _frn.filter_response_norm(
            x, scale, bias, epsilon=eps, dtype=_out_dtype(self, x, scale, bias)
        )
        if self.use_tlu:
            y = _frn.tlu(y, self.param("tau", initializers.zeros, (c,), self.param_dtype))
        return y


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
        return _frn.evonorm_s0(
            x, scale, bias, v, num_groups=self.num_groups, group_size=self.group_size,
            epsilon=self.epsilon, dtype=_out_dtype(self, x, scale, bias),
        )


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
        use_running_average = module.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        x = jnp.asarray(x)
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
        ra_count = (
            self.variable("batch_stats", "count", jnp.zeros, (), jnp.int32)
            if self.momentum is None else None
        )
        scale, bias = _affine_params(self, (c,), self.use_scale, self.use_bias)
        v = self.param("v", initializers.ones, (c,), self.param_dtype) if self.use_v else None
        state = BatchStats(
            ra_mean.value, ra_var.value,
            ra_count.value if ra_count is not None else jnp.zeros((), jnp.int32),
        )
        y, new = _frn.evonorm_b0(
            x, state, scale, bias, v, training=not use_running_average, momentum=self.momentum,
            epsilon=self.epsilon, dtype=_out_dtype(self, x, scale, bias),
        )
        if not use_running_average and not self.is_initializing():
            ra_mean.value, ra_var.value = new.mean, new.var
            if ra_count is not None:
                ra_count.value = new.count
        return y


def _kernel_filter(mdl: Module, path: tuple) -> tuple[bool, str]:
    str_path = jax.tree_util.keystr(path[1:], simple=True, separator="/")  # drop "params"
    return any(f in str_path for f in mdl.variable_filter), str_path


class WeightStandardization(Module):
    """Wraps a linen layer so it uses standardized kernels (Qiao et al. 2019; Brock et al. 2021).

    ``WeightStandardization(nn.Conv(64, (3, 3)))`` calls the conv with
    :func:`jnorm.standardize_weight` of its kernel; ``scaled=True`` uses
    :func:`jnorm.scaled_standardize_weight` with a learned per-output ``gain`` (initialised to
    1; param ``<path>/gain``) and ``nonlinearity_gain``. Attributes: ``layer_instance``,
    ``scaled`` (False), ``epsilon`` (None: 1e-5, or 1e-4 when scaled), ``nonlinearity_gain``
    (1.0), ``param_dtype``, ``variable_filter`` (``{"kernel"}``: which of the layer's params are
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

        def transform(path: tuple, value: jax.Array) -> jax.Array:
            use, str_path = _kernel_filter(self, path)
            if not use or jnp.ndim(value) < 2:
                return value
            if not self.scaled:
                eps = 1e-5 if self.epsilon is None else self.epsilon
                return _weight.standardize_weight(value, epsilon=eps)
            gain = self.param(
                f"{self.layer_instance.name}/{str_path}/gain", initializers.ones,
                (value.shape[-1],), self.param_dtype,
            )
            return _weight.scaled_standardize_weight(
                value, gain, nonlinearity_gain=self.nonlinearity_gain,
                epsilon=1e-4 if self.epsilon is None else self.epsilon,
            )

        return _transforms.map_variables(
            lambda layer: layer(*args, **kwargs),
            trans_in_fn=lambda vs: jax.tree_util.tree_map_with_path(transform, vs),
            init=self.is_initializing(),
        )(self.layer_instance)


class WeightNorm(Module):
    """Wraps a linen layer with weight normalization, ``w = g v / ||v||`` (Salimans 2016).

    Unlike ``flax.linen.WeightNorm`` (``g`` initialised to 1, which changes the layer's function
    at init), ``g`` is initialised to ``||v||`` of the initial kernel, as PyTorch's
    ``weight_norm`` does: the wrapped layer computes exactly what the bare layer would. Params:
    the layer's own (its kernel is ``v``) plus ``<layer>/<path>/scale`` (``g``, ``[O]``).
    Attributes: ``layer_instance``, ``epsilon`` (0.0), ``param_dtype``, ``variable_filter``
    (``{"kernel"}``). Norms are over the fan-in (all kernel axes but the last), on
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

    @compact
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calls the wrapped layer with its kernel weight-normalized."""

        def transform(path: tuple, value: jax.Array) -> jax.Array:
            use, str_path = _kernel_filter(self, path)
            if not use or jnp.ndim(value) < 2:
                return value
            g = self.param(
                f"{self.layer_instance.name}/{str_path}/scale",
                lambda _key: _weight.kernel_norm(value).astype(self.param_dtype),
            )
            return _weight.weight_norm(value, g, epsilon=self.epsilon)

        return _transforms.map_variables(
            lambda layer: layer(*args, **kwargs),
            trans_in_fn=lambda vs: jax.tree_util.tree_map_with_path(transform, vs),
            init=self.is_initializing(),
        )(self.layer_instance)


class LocalResponseNorm(Module):
    """Local response normalization on :func:`jnorm.local_response_norm` (Krizhevsky 2012).

    Attributes are ``torch.nn.LocalResponseNorm``'s (``size`` 5, ``alpha`` 1e-4, ``beta`` 0.75,
    ``k`` 1.0, same meaning with the default ``convention="torch"``) plus ``channel_axis``
    (-1: channels last, flax's layout; 1 for ``[N, C, ...]``), ``convention`` (``"torch"`` or
    ``"tensorflow"``, see :func:`jnorm.lrn_tensorflow_args`) and ``dtype``. No variables.

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
    channel_axis: int = -1
    convention: str = "torch"
    dtype: Dtype | None = None

    @compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalizes each activation by the squares of its neighbouring channels."""
        return _lrn.local_response_norm(
            x, size=self.size, alpha=self.alpha, beta=self.beta, k=self.k,
            channel_axis=self.channel_axis, convention=self.convention, dtype=self.dtype,
        )


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

        raw: dict[str, jax.Array] = {}  # the layer's own params, restored on the way out

        def transform(path: tuple, value: jax.Array) -> jax.Array:
            value = jnp.asarray(value)
            raw[jax.tree_util.keystr(path)] = value
            if value.ndim <= 1:
                return value
            if value.ndim > 2 and self.error_on_non_matrix:
                raise ValueError(
                    f"SpectralNorm: param {path!r} is {value.ndim}-D but error_on_non_matrix "
                    "is True."
                )
            prefix = f"{self.layer_instance.name}/" + "/".join(
                str(getattr(p, "key", p)) for p in path[1:]
            )
            u_var = self.variable(
                self.collection_name, prefix + "/u",
                lambda: _spectral.spectral_norm_init(value)[None, :].astype(self.param_dtype),
            )
            sigma_var = self.variable(
                self.collection_name, prefix + "/sigma",
                lambda: jnp.zeros((), self.param_dtype),
            )
            w_sn, new_u, sigma = _spectral.spectral_norm(
                value, u_var.value[0], n_steps=self.n_steps, epsilon=self.epsilon,
            )
            if update_stats or self.is_initializing():
                u_var.value = new_u[None, :].astype(self.param_dtype)
                sigma_var.value = sigma.astype(self.param_dtype)
            if self.dtype is not None:
                w_sn = w_sn.astype(self.dtype)
            return w_sn

        return _transforms.map_variables(
            lambda layer: layer(*args, **kwargs),
            trans_in_fn=lambda vs: jax.tree_util.tree_map_with_path(transform, vs),
            # flax's writes the *normalized* kernel back into params at init: keep the raw one
            trans_out_fn=lambda vs: jax.tree_util.tree_map_with_path(
                lambda p, x: raw.get(jax.tree_util.keystr(p), x), vs
            ),
            init=self.is_initializing(),
            mutable=True,
        )(self.layer_instance)
