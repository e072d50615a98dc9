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


