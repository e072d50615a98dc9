"""Flax NNX modules: drop-in replacements for ``flax.nnx``'s normalization layers.

Each module has the constructor signature and defaults of its ``flax.nnx`` namesake
(``num_features`` first, ``rngs=`` keyword), the same variables (``nnx.Param`` ``scale`` /
``bias``, ``nnx.BatchStat`` ``mean`` / ``var``), the same call (``mask=``, a
``use_running_average`` override) and the same ``model.train()`` / ``model.eval()``
behaviour, so an NNX model switches by one import and ``nnx.state`` of a flax model loads with
``nnx.update`` (and back). The modules are plumbing only, shared with :mod:`jnorm.linen`
through ``jnorm._modules``: they hold the variables and call jnorm's functions, so a module,
its function and its linen twin give bitwise-equal results on the same variables.

Differences from flax, all in accuracy's favour (as in :mod:`jnorm.linen`): statistics always
use jnorm's stable algorithm (``use_fast_variance`` is accepted and has no effect); running
statistics are updated from the un-promoted stored values (flax first casts them to ``dtype``);
``BatchNorm(momentum=None)`` averages cumulatively and then holds a ``count`` ``BatchStat``.
As in flax.nnx, stored statistics keep the dtype they were created with (float32).

Examples:
  >>> import jax, jax.numpy as jnp
  >>> from flax import nnx
  >>> import jnorm.nnx as jnx
  >>> bn = jnx.BatchNorm(3, rngs=nnx.Rngs(0))
  >>> y = bn(jnp.arange(12.0).reshape(4, 3))  # training: batch statistics, updates mean/var
  >>> sorted(nnx.state(bn, nnx.BatchStat))
  ['mean', 'var']
  >>> bn.eval()
  >>> bool(bn.use_running_average)
  True
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.module import first_from
from flax.nnx.nn import dtypes, initializers

from jnorm._axes import resolve_groups
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
    spectral_initial_u,
    spectral_kernel,
    standardized_kernel,
    stat_names,
    weight_normed_kernel,
)
from jnorm._typing import Axes, AxisIndexGroups, AxisName, DTypeLike, Implementation

__all__ = list(MODULE_NAMES)  # the same modules in jnorm.linen and jnorm.nnx

Dtype = DTypeLike
Initializer = jax.nn.initializers.Initializer
_NO_METADATA: Mapping[str, Any] = MappingProxyType({})
_ZEROS = initializers.zeros_init()  # flax.nnx's defaults, created once
_ONES = initializers.ones_init()
_KERNEL = nnx.PathContains("kernel")


# --------------------------------------------------------------------------------------------
# The chores every module shares (the running statistics themselves are in jnorm._modules).


def _feature_param(
    *, use: bool, init: Initializer, metadata: Mapping[str, Any] = _NO_METADATA,
    num_features: int, param_dtype: Dtype, rngs: nnx.Rngs,
) -> Any:
    """``scale`` or ``bias`` as flax.nnx creates them: an ``nnx.Param`` of ``(num_features,)``
    from ``init`` with ``metadata``, or None when ``use`` is False."""
    if not use:
        return nnx.data(None)
    return nnx.Param(init(rngs.params(), (num_features,), param_dtype), **metadata)


def _scale_and_bias(
    *, use_scale: bool, scale_init: Initializer, use_bias: bool, bias_init: Initializer,
    num_features: int, param_dtype: Dtype, rngs: nnx.Rngs,
    scale_metadata: Mapping[str, Any] = _NO_METADATA,
    bias_metadata: Mapping[str, Any] = _NO_METADATA,
) -> tuple[Any, Any]:
    """``(scale, bias)`` of a module with both (:func:`_feature_param`, scale first)."""
    return (
        _feature_param(use=use_scale, init=scale_init, metadata=scale_metadata,
                       num_features=num_features, param_dtype=param_dtype, rngs=rngs),
        _feature_param(use=use_bias, init=bias_init, metadata=bias_metadata,
                       num_features=num_features, param_dtype=param_dtype, rngs=rngs),
    )


def _add_running_stats(
    mdl: nnx.Module, kind: StatsKind, *, num_features: int, momentum: float | None,
    group_size: int | None = None,
) -> None:
    """Creates the running statistics of ``kind`` as ``nnx.BatchStat`` attributes (float32, as
    flax.nnx's): ``mean``/``var`` or ``mean``/``whitening``, plus ``count`` with
    ``momentum=None`` (the names of :func:`jnorm._modules.initial_stats`)."""
    for name, fresh in initial_stats(
        kind, (num_features,), dtype=jnp.float32, momentum=momentum, group_size=group_size
    ).items():
        setattr(mdl, name, nnx.BatchStat(fresh()))


def _value(var: Any) -> jax.Array | None:
    return None if var is None else var[...]


def _affine(mdl: nnx.Module) -> tuple[jax.Array | None, jax.Array | None]:
    return _value(mdl.scale), _value(mdl.bias)


def _running_stats(
    mdl: nnx.Module, kind: StatsKind, given: bool | None, run: Callable[..., Any]
) -> jax.Array:
    """Runs ``run(stored, training=..., update=...)`` and writes the new statistics back."""
    use_running_average = first_from(
        given, mdl.use_running_average,
        error_msg=(
            f"No `use_running_average` argument was provided to {type(mdl).__name__}: pass it "
            "to the constructor or the call, or use model.train() / model.eval()."
        ),
    )
    names = stat_names(kind, mdl.momentum)
    y, new = run(
        {name: getattr(mdl, name)[...] for name in names},
        training=not use_running_average, update=not use_running_average,
        follow_input=False,
    )
    for name, value in (new or {}).items():
        getattr(mdl, name)[...] = value
    return y


class _Stateful(nnx.Module):
    """Base of the modules with running statistics: ``nnx.view`` support, as flax's."""

    use_running_average: bool | None
    #: flax.nnx's modules take no such argument: their statistics are always float32 (linen's
    #: ``force_float32_reductions=True``).
    force_float32_reductions: bool = True

    def set_view(self, use_running_average: bool | None = None) -> None:
        """Used by ``nnx.view``: sets ``use_running_average`` when given."""
        if use_running_average is not None:
            self.use_running_average = use_running_average


# --------------------------------------------------------------------------------------------
# The five flax.nnx layers.


class BatchNorm(_Stateful):
    """Batch normalization, drop-in for :class:`flax.nnx.BatchNorm`, on :func:`jnorm.batch_norm`.

    Arguments are flax's (``num_features``, ``use_running_average`` False, ``axis`` -1,
    ``momentum`` 0.99 (weight of the old value; None: cumulative, adds a ``count``),
    ``epsilon`` 1e-5, ``dtype``, ``param_dtype``, ``use_bias``, ``use_scale``, ``bias_init``,
    ``scale_init``, ``axis_name``, ``axis_index_groups``, ``use_fast_variance`` (no effect),
    ``promote_dtype``, ``rngs``, ``bias_metadata``, ``scale_metadata``) plus jnorm's
    ``unbiased_running_var``, ``skip_nonfinite`` and ``virtual_batch_size``
    (see :func:`jnorm.batch_norm`). Variables: ``scale``, ``bias`` (``nnx.Param``),
    ``mean``, ``var`` (``nnx.BatchStat``, float32).

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jnorm.nnx as jnx
      >>> bn = jnx.BatchNorm(2, momentum=0.9, rngs=nnx.Rngs(0))
      >>> _ = bn(jnp.array([[0.0, 10.0], [2.0, 30.0]]))
      >>> [round(v, 4) for v in bn.mean[...].tolist()]
      [0.1, 2.0]
    """

    def __init__(
        self,
        num_features: int,
        *,
        use_running_average: bool | None = False,
        axis: int = -1,
        momentum: float | None = 0.99,
        epsilon: float = 1e-5,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = _ZEROS,
        scale_init: Initializer = _ONES,
        axis_name: AxisName = None,
        axis_index_groups: AxisIndexGroups = None,
        use_fast_variance: bool = True,
        promote_dtype: Callable[..., Any] = dtypes.promote_dtype,
        rngs: nnx.Rngs,
        bias_metadata: Mapping[str, Any] = _NO_METADATA,
        scale_metadata: Mapping[str, Any] = _NO_METADATA,
        unbiased_running_var: bool = False,
        skip_nonfinite: bool = False,
        virtual_batch_size: int | None = None,
    ) -> None:
        _add_running_stats(self, "batch", num_features=num_features, momentum=momentum)
        self.scale, self.bias = _scale_and_bias(
            use_scale=use_scale, scale_init=scale_init, use_bias=use_bias, bias_init=bias_init,
            num_features=num_features, param_dtype=param_dtype, rngs=rngs,
            scale_metadata=scale_metadata, bias_metadata=bias_metadata,
        )
        self.num_features = num_features
        self.use_running_average = use_running_average
        self.axis = axis
        self.momentum = momentum
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.axis_name = axis_name
        self.axis_index_groups = axis_index_groups
        self.use_fast_variance = use_fast_variance
        self.promote_dtype = promote_dtype
        self.unbiased_running_var = unbiased_running_var
        self.skip_nonfinite = skip_nonfinite
        self.virtual_batch_size = virtual_batch_size

    def __call__(
        self, x: jax.Array, use_running_average: bool | None = None, *,
        mask: jax.Array | None = None,
    ) -> jax.Array:
        """Normalizes ``x`` with batch (training) or running (``use_running_average``) stats."""
        scale, bias = _affine(self)
        x, _, _, scale, bias = self.promote_dtype(
            (x, self.mean[...], self.var[...], scale, bias), dtype=self.dtype
        )
        return _running_stats(
            self, "batch", use_running_average,
            functools.partial(apply_batch_norm, self, x, scale, bias, mask=mask),
        )


def _zero_centered_init(zero_centered: bool, scale_init: Initializer) -> Initializer:
    """Zeros instead of the default ones when the scale is zero-centred (applied as 1 + scale)."""
    return _ZEROS if zero_centered and scale_init in (_ONES, initializers.ones) else scale_init


class LayerNorm(nnx.Module):
    """Layer normalization, drop-in for :class:`flax.nnx.LayerNorm`, on :func:`jnorm.layer_norm`.

    Arguments are flax's: ``num_features``, ``epsilon`` (1e-6), ``dtype``, ``param_dtype``,
    ``use_bias``, ``use_scale``, ``bias_init``, ``scale_init``, ``reduction_axes`` (-1),
    ``feature_axes`` (-1), ``axis_name``, ``axis_index_groups``, ``use_fast_variance`` (no
    effect), ``promote_dtype``, ``rngs``, ``bias_metadata``, ``scale_metadata``; plus jnorm's
    ``implementation`` (None, ``"xla"`` or ``"pallas"``, see :func:`jnorm.layer_norm`) and
    ``zero_centered_scale`` (False; True: ``scale`` applied as ``1 + scale``, Gemma-style, and
    the default ``scale_init`` gives zeros; converting checkpoints: see
    :func:`jnorm.layer_norm`).
    """

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-6,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = _ZEROS,
        scale_init: Initializer = _ONES,
        reduction_axes: Axes = -1,
        feature_axes: Axes = -1,
        axis_name: AxisName = None,
        axis_index_groups: AxisIndexGroups = None,
        use_fast_variance: bool = True,
        promote_dtype: Callable[..., Any] = dtypes.promote_dtype,
        rngs: nnx.Rngs,
        bias_metadata: Mapping[str, Any] = _NO_METADATA,
        scale_metadata: Mapping[str, Any] = _NO_METADATA,
        implementation: Implementation = None,
        zero_centered_scale: bool = False,
    ) -> None:
        scale_init = _zero_centered_init(zero_centered_scale, scale_init)
        self.scale, self.bias = _scale_and_bias(
            use_scale=use_scale, scale_init=scale_init, use_bias=use_bias, bias_init=bias_init,
            num_features=num_features, param_dtype=param_dtype, rngs=rngs,
            scale_metadata=scale_metadata, bias_metadata=bias_metadata,
        )
        self.num_features = num_features
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.reduction_axes = reduction_axes
        self.feature_axes = feature_axes
        self.axis_name = axis_name
        self.axis_index_groups = axis_index_groups
        self.use_fast_variance = use_fast_variance
        self.promote_dtype = promote_dtype
        self.implementation = implementation
        self.zero_centered_scale = zero_centered_scale

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Normalizes ``x`` over ``reduction_axes``; params vary along ``feature_axes``."""
        x, scale, bias = self.promote_dtype((x, *_affine(self)), dtype=self.dtype)
        return apply_layer_norm(self, x, scale, bias, mask)


class RMSNorm(nnx.Module):
    """RMS normalization, drop-in for :class:`flax.nnx.RMSNorm`, on :func:`jnorm.rms_norm`.

    Arguments are flax's: ``num_features``, ``epsilon`` (1e-6), ``dtype``, ``param_dtype``,
    ``use_scale``, ``scale_init``, ``reduction_axes`` (-1), ``feature_axes`` (-1),
    ``axis_name``, ``axis_index_groups``, ``use_fast_variance`` (no effect), ``promote_dtype``,
    ``rngs``, ``scale_metadata``; plus jnorm's ``implementation`` (see
    :func:`jnorm.layer_norm`) and ``zero_centered_scale`` (False; True: ``scale`` applied as
    ``1 + scale`` and initialised to zeros, Gemma's RMSNorm).
    """

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-6,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        use_scale: bool = True,
        scale_init: Initializer = initializers.ones,
        reduction_axes: Axes = -1,
        feature_axes: Axes = -1,
        axis_name: AxisName = None,
        axis_index_groups: AxisIndexGroups = None,
        use_fast_variance: bool = True,
        promote_dtype: Callable[..., Any] = dtypes.promote_dtype,
        rngs: nnx.Rngs,
        scale_metadata: Mapping[str, Any] = _NO_METADATA,
        implementation: Implementation = None,
        zero_centered_scale: bool = False,
    ) -> None:
        scale_init = _zero_centered_init(zero_centered_scale, scale_init)
        self.scale = _feature_param(
            use=use_scale, init=scale_init, metadata=scale_metadata,
            num_features=num_features, param_dtype=param_dtype, rngs=rngs,
        )
        self.num_features = num_features
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_scale = use_scale
        self.reduction_axes = reduction_axes
        self.feature_axes = feature_axes
        self.axis_name = axis_name
        self.axis_index_groups = axis_index_groups
        self.use_fast_variance = use_fast_variance
        self.promote_dtype = promote_dtype
        self.implementation = implementation
        self.zero_centered_scale = zero_centered_scale

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """Divides ``x`` by its root mean square over ``reduction_axes``."""
        x, scale = self.promote_dtype((x, _value(self.scale)), dtype=self.dtype)
        return apply_rms_norm(self, x, scale, mask)


class DynamicTanh(nnx.Module):
    """Dynamic Tanh on :func:`jnorm.dynamic_tanh` (Zhu et al. 2025): a drop-in for
    :class:`LayerNorm` in a transformer, ``y = scale * tanh(alpha * x) + bias``.

    Arguments: ``num_features``, ``alpha_init`` (0.5, the paper's), ``per_channel_alpha``
    (False: one scalar ``Param`` ``alpha``; True: ``[num_features]``), ``feature_axes`` (-1),
    ``dtype``, ``param_dtype``, ``use_bias``, ``use_scale``, ``bias_init``, ``scale_init``,
    ``rngs``. The call takes ``mask`` like :class:`LayerNorm` (checked, no effect).

    Examples:
      >>> import jax.numpy as jnp, jnorm.nnx as jnx
      >>> from flax import nnx
      >>> layer = jnx.DynamicTanh(8, rngs=nnx.Rngs(0))
      >>> layer(jnp.zeros((2, 5, 8))).shape, layer.alpha[...].tolist()
      ((2, 5, 8), 0.5)
    """

    def __init__(
        self,
        num_features: int,
        *,
        alpha_init: float = 0.5,
        per_channel_alpha: bool = False,
        feature_axes: Axes = -1,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = _ZEROS,
        scale_init: Initializer = _ONES,
        rngs: nnx.Rngs,
    ) -> None:
        self.scale, self.bias = _scale_and_bias(
            use_scale=use_scale, scale_init=scale_init, use_bias=use_bias, bias_init=bias_init,
            num_features=num_features, param_dtype=param_dtype, rngs=rngs,
        )
        self.num_features = num_features
        self.alpha_init = alpha_init
        self.per_channel_alpha = per_channel_alpha
        self.feature_axes = feature_axes
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.alpha = nnx.Param(jnp.full((num_features,) if per_channel_alpha else (),
                                        alpha_init, param_dtype))

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Applies ``scale * tanh(alpha * x) + bias``."""
        return apply_dynamic_tanh(self, x, *_affine(self), self.alpha[...], mask)


class GroupNorm(nnx.Module):
    """Group normalization, drop-in for :class:`flax.nnx.GroupNorm`, on :func:`jnorm.group_norm`.

    Arguments are flax's: ``num_features``, ``num_groups`` (32) or ``group_size`` (give one;
    both are stored, resolved, as flax does), ``epsilon`` (1e-6), ``dtype``, ``param_dtype``,
    ``use_bias``, ``use_scale``, ``bias_init``, ``scale_init``, ``reduction_axes`` (None: all
    but the batch axis 0; if given it must include the last axis), ``axis_name``,
    ``axis_index_groups``, ``use_fast_variance`` (no effect), ``promote_dtype``, ``rngs``,
    ``bias_metadata``, ``scale_metadata``. Channels are the last axis.
    """

    def __init__(
        self,
        num_features: int,
        num_groups: int | None = 32,
        group_size: int | None = None,
        *,
        epsilon: float = 1e-6,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = _ZEROS,
        scale_init: Initializer = _ONES,
        reduction_axes: Axes | None = None,
        axis_name: AxisName = None,
        axis_index_groups: AxisIndexGroups = None,
        use_fast_variance: bool = True,
        promote_dtype: Callable[..., Any] = dtypes.promote_dtype,
        rngs: nnx.Rngs,
        bias_metadata: Mapping[str, Any] = _NO_METADATA,
        scale_metadata: Mapping[str, Any] = _NO_METADATA,
    ) -> None:
        num_groups = resolve_groups(num_features, num_groups, group_size)  # stored resolved,
        group_size = num_features // num_groups  # both, as flax does
        self.scale, self.bias = _scale_and_bias(
            use_scale=use_scale, scale_init=scale_init, use_bias=use_bias, bias_init=bias_init,
            num_features=num_features, param_dtype=param_dtype, rngs=rngs,
            scale_metadata=scale_metadata, bias_metadata=bias_metadata,
        )
        self.num_features = num_features
        self.num_groups = num_groups
        self.group_size = group_size
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.reduction_axes = reduction_axes
        self.axis_name = axis_name
        self.axis_index_groups = axis_index_groups
        self.use_fast_variance = use_fast_variance
        self.promote_dtype = promote_dtype
        self.feature_axis = -1

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Normalizes each group of channels of each example."""
        x, scale, bias = self.promote_dtype((x, *_affine(self)), dtype=self.dtype)
        return apply_group_norm(self, x, scale, bias, mask, groups=(self.num_groups, None))


class InstanceNorm(nnx.Module):
    """Instance normalization, drop-in for :class:`flax.nnx.InstanceNorm`.

    On :func:`jnorm.instance_norm`. Arguments are flax's: ``num_features``, ``epsilon``
    (1e-6), ``dtype``, ``param_dtype``, ``use_bias``, ``use_scale``, ``bias_init``,
    ``scale_init``, ``feature_axes`` (-1), ``axis_name``, ``axis_index_groups``,
    ``use_fast_variance`` (no effect), ``promote_dtype``, ``rngs``, ``bias_metadata``,
    ``scale_metadata``. An ``(N, C)`` input returns the bias, as flax's does.
    """

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-6,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = initializers.zeros,
        scale_init: Initializer = initializers.ones,
        feature_axes: Axes = -1,
        axis_name: AxisName = None,
        axis_index_groups: AxisIndexGroups = None,
        use_fast_variance: bool = True,
        promote_dtype: Callable[..., Any] = dtypes.promote_dtype,
        rngs: nnx.Rngs,
        bias_metadata: Mapping[str, Any] = _NO_METADATA,
        scale_metadata: Mapping[str, Any] = _NO_METADATA,
    ) -> None:
        self.scale, self.bias = _scale_and_bias(
            use_scale=use_scale, scale_init=scale_init, use_bias=use_bias, bias_init=bias_init,
            num_features=num_features, param_dtype=param_dtype, rngs=rngs,
            scale_metadata=scale_metadata, bias_metadata=bias_metadata,
        )
        self.num_features = num_features
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.feature_axes = feature_axes
        self.axis_name = axis_name
        self.axis_index_groups = axis_index_groups
        self.use_fast_variance = use_fast_variance
        self.promote_dtype = promote_dtype

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Normalizes each channel of each example over its spatial axes."""
        x, scale, bias = self.promote_dtype((x, *_affine(self)), dtype=self.dtype)
        return apply_instance_norm(self, x, scale, bias, mask)


# --------------------------------------------------------------------------------------------
# Beyond flax: the same modules as jnorm.linen's, in flax.nnx's style (num_features first,
# rngs=, Param/BatchStat variables under the linen names).


class BatchRenorm(_Stateful):
    """Batch Renormalization on :func:`jnorm.batch_renorm` (Ioffe 2017).

    :class:`BatchNorm`'s arguments and variables (``mean``/``var`` ``BatchStat``, so a
    BatchNorm state loads) plus ``r_max`` (3.0) and ``d_max`` (5.0), which the call can
    override (e.g. with :func:`jnorm.batch_renorm_schedule` of the step).

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jnorm.nnx as jnx
      >>> m = jnx.BatchRenorm(3, rngs=nnx.Rngs(0))
      >>> m(jnp.ones((4, 3)), r_max=1.0, d_max=0.0).shape
      (4, 3)
    """

    def __init__(
        self,
        num_features: int,
        *,
        use_running_average: bool | None = False,
        axis: int = -1,
        momentum: float | None = 0.99,
        epsilon: float = 1e-5,
        r_max: float = 3.0,
        d_max: float = 5.0,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = _ZEROS,
        scale_init: Initializer = _ONES,
        axis_name: AxisName = None,
        axis_index_groups: AxisIndexGroups = None,
        rngs: nnx.Rngs,
    ) -> None:
        _add_running_stats(self, "batch", num_features=num_features, momentum=momentum)
        self.scale, self.bias = _scale_and_bias(
            use_scale=use_scale, scale_init=scale_init, use_bias=use_bias, bias_init=bias_init,
            num_features=num_features, param_dtype=param_dtype, rngs=rngs,
        )
        self.num_features = num_features
        self.use_running_average = use_running_average
        self.axis = axis
        self.momentum = momentum
        self.epsilon = epsilon
        self.r_max = r_max
        self.d_max = d_max
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.axis_name = axis_name
        self.axis_index_groups = axis_index_groups

    def __call__(
        self, x: jax.Array, use_running_average: bool | None = None, *, r_max: Any = None,
        d_max: Any = None, mask: jax.Array | None = None,
    ) -> jax.Array:
        """Renormalizes ``x`` (training) or applies the running statistics (eval)."""
        return _running_stats(
            self, "batch", use_running_average,
            functools.partial(
                apply_batch_renorm, self, x, *_affine(self), mask=mask, r_max=r_max, d_max=d_max
            ),
        )


class DecorrelatedBatchNorm(_Stateful):
    """ZCA-whitening batch norm on :func:`jnorm.decorrelated_batch_norm` (Huang et al. 2018).

    Arguments: ``num_features``, ``use_running_average`` (False), ``group_size`` (None: all
    features together), ``axis`` (-1), ``momentum`` (0.99; None: cumulative), ``epsilon``
    (1e-5), ``dtype``, ``param_dtype``, ``use_bias``, ``use_scale``, ``bias_init``,
    ``scale_init``, ``iterations`` (None: eigendecomposition; an int: IterNorm), ``rngs``.
    Variables: ``scale``/``bias`` ``[C]``; ``BatchStat`` ``mean`` ``[C]`` and ``whitening``
    ``[C/G, G, G]`` (+ ``count`` with ``momentum=None``).

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jnorm.nnx as jnx
      >>> m = jnx.DecorrelatedBatchNorm(4, group_size=2, rngs=nnx.Rngs(0))
      >>> m.whitening[...].shape
      (2, 2, 2)
    """

    def __init__(
        self,
        num_features: int,
        *,
        use_running_average: bool | None = False,
        group_size: int | None = None,
        axis: int = -1,
        momentum: float | None = 0.99,
        epsilon: float = 1e-5,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = _ZEROS,
        scale_init: Initializer = _ONES,
        iterations: int | None = None,
        rngs: nnx.Rngs,
    ) -> None:
        _add_running_stats(
            self, "whitening", num_features=num_features, momentum=momentum, group_size=group_size
        )
        self.scale, self.bias = _scale_and_bias(
            use_scale=use_scale, scale_init=scale_init, use_bias=use_bias, bias_init=bias_init,
            num_features=num_features, param_dtype=param_dtype, rngs=rngs,
        )
        self.num_features = num_features
        self.use_running_average = use_running_average
        self.group_size = group_size
        self.axis = axis
        self.momentum = momentum
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.iterations = iterations

    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        """Whitens ``x`` with batch (training) or running statistics."""
        return _running_stats(
            self, "whitening", use_running_average,
            functools.partial(apply_whitening_norm, self, x, *_affine(self)),
        )


class IterNorm(DecorrelatedBatchNorm):
    """IterNorm on :func:`jnorm.iter_norm` (Huang et al. 2019): Newton-Schulz whitening.

    :class:`DecorrelatedBatchNorm` with ``iterations`` (``T``) 5 by default.
    """

    def __init__(
        self,
        num_features: int,
        *,
        use_running_average: bool | None = False,
        group_size: int | None = None,
        axis: int = -1,
        momentum: float | None = 0.99,
        epsilon: float = 1e-5,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = _ZEROS,
        scale_init: Initializer = _ONES,
        iterations: int = 5,
        rngs: nnx.Rngs,
    ) -> None:
        super().__init__(
            num_features, use_running_average=use_running_average, group_size=group_size,
            axis=axis, momentum=momentum, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype,
            use_bias=use_bias, use_scale=use_scale, bias_init=bias_init, scale_init=scale_init,
            iterations=iterations, rngs=rngs,
        )


class FilterResponseNorm(nnx.Module):
    """FRN + TLU on :func:`jnorm.filter_response_norm` and :func:`jnorm.tlu` (Singh 2019).

    Arguments: ``num_features``, ``epsilon`` (1e-6), ``learned_epsilon`` (False: if True a
    scalar ``Param`` ``eps`` is learned and ``epsilon + |eps|`` used), ``use_tlu`` (True:
    ``Param`` ``tau`` ``[C]`` initialised to 0), ``dtype``, ``param_dtype``, ``use_bias``,
    ``use_scale``, ``bias_init``, ``scale_init``, ``rngs``. Channels last.
    """

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-6,
        learned_epsilon: bool = False,
        use_tlu: bool = True,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = _ZEROS,
        scale_init: Initializer = _ONES,
        rngs: nnx.Rngs,
    ) -> None:
        self.scale, self.bias = _scale_and_bias(
            use_scale=use_scale, scale_init=scale_init, use_bias=use_bias, bias_init=bias_init,
            num_features=num_features, param_dtype=param_dtype, rngs=rngs,
        )
        self.num_features = num_features
        self.epsilon = epsilon
        self.learned_epsilon = learned_epsilon
        self.use_tlu = use_tlu
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.eps = (
            nnx.Param(jnp.zeros((), param_dtype)) if learned_epsilon else nnx.data(None)
        )
        self.tau = (
            nnx.Param(jnp.zeros((num_features,), param_dtype)) if use_tlu else nnx.data(None)
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalizes each channel of each example by its mean square, then applies TLU."""
        return apply_filter_response_norm(
            self, x, *_affine(self), _value(self.eps), _value(self.tau)
        )


class EvoNormS0(nnx.Module):
    """EvoNorm-S0 on :func:`jnorm.evonorm_s0` (Liu et al. 2020): batch-independent.

    Arguments: ``num_features``, ``num_groups`` (32) / ``group_size``, ``epsilon`` (1e-5),
    ``use_v`` (True: ``Param`` ``v`` ``[C]`` initialised to 1), ``dtype``, ``param_dtype``,
    ``use_bias``, ``use_scale``, ``bias_init``, ``scale_init``, ``rngs``. Channels last.
    """

    def __init__(
        self,
        num_features: int,
        *,
        num_groups: int | None = 32,
        group_size: int | None = None,
        epsilon: float = 1e-5,
        use_v: bool = True,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = _ZEROS,
        scale_init: Initializer = _ONES,
        rngs: nnx.Rngs,
    ) -> None:
        self.scale, self.bias = _scale_and_bias(
            use_scale=use_scale, scale_init=scale_init, use_bias=use_bias, bias_init=bias_init,
            num_features=num_features, param_dtype=param_dtype, rngs=rngs,
        )
        self.num_features = num_features
        self.num_groups = num_groups
        self.group_size = group_size
        self.epsilon = epsilon
        self.use_v = use_v
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.v = nnx.Param(jnp.ones((num_features,), param_dtype)) if use_v else nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies EvoNorm-S0 to ``x`` (``[N, ..., C]``)."""
        return apply_evonorm_s0(self, x, *_affine(self), _value(self.v))


class EvoNormB0(_Stateful):
    """EvoNorm-B0 on :func:`jnorm.evonorm_b0` (Liu et al. 2020): batch variance + instance std.

    Arguments: ``num_features``, ``use_running_average`` (False), ``momentum`` (0.99),
    ``epsilon`` (1e-5), ``use_v`` (True), ``dtype``, ``param_dtype``, ``use_bias``,
    ``use_scale``, ``bias_init``, ``scale_init``, ``rngs``. Variables: ``BatchStat``
    ``mean``/``var`` ``[C]``; ``Param`` ``scale``, ``bias``, ``v``. Channels last.
    """

    def __init__(
        self,
        num_features: int,
        *,
        use_running_average: bool | None = False,
        momentum: float | None = 0.99,
        epsilon: float = 1e-5,
        use_v: bool = True,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = _ZEROS,
        scale_init: Initializer = _ONES,
        rngs: nnx.Rngs,
    ) -> None:
        _add_running_stats(self, "batch", num_features=num_features, momentum=momentum)
        self.scale, self.bias = _scale_and_bias(
            use_scale=use_scale, scale_init=scale_init, use_bias=use_bias, bias_init=bias_init,
            num_features=num_features, param_dtype=param_dtype, rngs=rngs,
        )
        self.num_features = num_features
        self.use_running_average = use_running_average
        self.momentum = momentum
        self.epsilon = epsilon
        self.use_v = use_v
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.v = nnx.Param(jnp.ones((num_features,), param_dtype)) if use_v else nnx.data(None)

    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        """Applies EvoNorm-B0 with batch (training) or running (eval) variance."""
        return _running_stats(
            self, "batch", use_running_average,
            functools.partial(apply_evonorm_b0, self, x, *_affine(self), _value(self.v)),
        )


class LocalResponseNorm(nnx.Module):
    """Local response normalization on :func:`jnorm.local_response_norm` (Krizhevsky 2012).

    Arguments are ``torch.nn.LocalResponseNorm``'s (``size`` 5, ``alpha`` 1e-4, ``beta``
    0.75, ``k`` 1.0) plus ``feature_axes`` (-1), ``convention``
    (``"torch"`` or ``"tensorflow"``) and ``dtype``; ``rngs`` is accepted and unused. No variables.
    """

    def __init__(
        self,
        size: int = 5,
        alpha: float = 1e-4,
        beta: float = 0.75,
        k: float = 1.0,
        *,
        feature_axes: int = -1,
        convention: str = "torch",
        dtype: Dtype | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        del rngs
        self.size = size
        self.alpha = alpha
        self.beta = beta
        self.k = k
        self.feature_axes = feature_axes
        self.convention = convention
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalizes each activation by the squares of its neighbouring channels."""
        return apply_local_response_norm(self, x)


# --------------------------------------------------------------------------------------------
# Kernel wrappers: the wrapped layer runs with its selected params replaced for the call.


def _selected(
    layer: nnx.Module, variable_filter: Any
) -> list[tuple[tuple[Any, ...], nnx.Variable]]:
    """``(path, Param)`` of the wrapped layer's params that pass the filter and are >= 2-D."""
    keep = nnx.filterlib.to_predicate(variable_filter)
    return [
        (path, var) for path, var in nnx.to_flat_state(nnx.state(layer, nnx.Param))
        if keep(path, var) and jnp.ndim(var[...]) >= 2
    ]


@contextlib.contextmanager
def _replaced(new: Mapping[tuple[Any, ...], jax.Array],
              variables: Mapping[tuple[Any, ...], nnx.Variable]) -> Iterator[None]:
    """Gives each Variable in ``variables`` the value in ``new`` and restores it afterwards
    (the wrapped layer's own params never change; gradients reach them through ``new``)."""
    old = {path: variables[path][...] for path in new}
    try:
        for path, value in new.items():
            variables[path].set_value(value)
        yield
    finally:
        for path, value in old.items():
            variables[path].set_value(value)


class WeightStandardization(nnx.Module):
    """Wraps an nnx layer so it uses standardized kernels (Qiao et al. 2019; Brock et al. 2021).

    ``WeightStandardization(nnx.Conv(3, 64, (3, 3), rngs=rngs), rngs=rngs)`` calls the conv
    with :func:`jnorm.standardize_weight` of its kernel; ``scaled=True`` uses
    :func:`jnorm.scaled_standardize_weight` with a learned per-output ``gain`` (``Param``s in
    ``gains``, keyed by the kernel's path, initialised to 1). Arguments: ``layer_instance``,
    ``scaled`` (False), ``epsilon`` (None: 1e-5, or 1e-4 scaled), ``nonlinearity_gain`` (1.0),
    ``param_dtype``, ``variable_filter`` (``nnx.PathContains("kernel")``), ``rngs``.
    """

    def __init__(
        self,
        layer_instance: nnx.Module,
        *,
        scaled: bool = False,
        epsilon: float | None = None,
        nonlinearity_gain: float = 1.0,
        param_dtype: Dtype = jnp.float32,
        variable_filter: Any = _KERNEL,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        del rngs
        self.layer_instance = layer_instance
        self.scaled = scaled
        self.epsilon = epsilon
        self.nonlinearity_gain = nonlinearity_gain
        self.param_dtype = param_dtype
        self.variable_filter = variable_filter
        self.gains = nnx.data({
            path: nnx.Param(jnp.ones((var[...].shape[-1],), param_dtype))
            for path, var in _selected(layer_instance, variable_filter)
        } if scaled else {})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calls the wrapped layer with its kernels standardized."""
        variables = dict(_selected(self.layer_instance, self.variable_filter))
        new = {
            path: standardized_kernel(
                self, var[...], _value(self.gains.get(path)) if self.scaled else None
            )
            for path, var in variables.items()
        }
        with _replaced(new, variables):
            return self.layer_instance(*args, **kwargs)


class WeightNorm(nnx.Module):
    """Wraps an nnx layer with weight normalization, ``w = g v / ||v||`` (Salimans 2016).

    :class:`flax.nnx.WeightNorm`'s arguments (``layer_instance``, ``feature_axes`` -1,
    ``use_scale``, ``scale_init``, ``epsilon``, ``dtype``, ``param_dtype``, ``variable_filter``
    ``nnx.PathContains("kernel")``, ``promote_dtype`` (accepted), ``rngs``) and its ``scales``
    (keyed by the kernel's path), on :func:`jnorm.weight_norm`. As :class:`jnorm.linen.WeightNorm`:
    ``scale_init=None`` (the default) initialises ``g`` to ``||v||`` of the initial kernel, so
    the wrapped layer computes what the bare layer did (pass ``nnx.initializers.ones`` for
    flax's), ``epsilon`` defaults to 0, and the layer's own kernel is never overwritten (flax's
    writes the normalized kernel into the layer at every call).
    """

    def __init__(
        self,
        layer_instance: nnx.Module,
        *,
        feature_axes: Axes = -1,
        use_scale: bool = True,
        scale_init: Initializer | None = None,
        epsilon: float = 0.0,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        variable_filter: Any = _KERNEL,
        promote_dtype: Callable[..., Any] = dtypes.promote_dtype,
        rngs: nnx.Rngs,
    ) -> None:
        self.layer_instance = layer_instance
        self.feature_axes = feature_axes
        self.use_scale = use_scale
        self.scale_init = scale_init
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.variable_filter = variable_filter
        self.promote_dtype = promote_dtype
        self.scales = nnx.data({
            path: nnx.Param(initial_kernel_scale(
                rngs.params(), var[...], feature_axes=feature_axes, scale_init=scale_init,
                param_dtype=param_dtype,
            ))
            for path, var in _selected(layer_instance, variable_filter)
        } if use_scale else {})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calls the wrapped layer with its kernels weight-normalized."""
        variables = dict(_selected(self.layer_instance, self.variable_filter))
        new = {
            path: weight_normed_kernel(
                var[...], _value(self.scales[path]) if self.use_scale else None,
                feature_axes=self.feature_axes, epsilon=self.epsilon, dtype=self.dtype,
            )
            for path, var in variables.items()
        }
        with _replaced(new, variables):
            return self.layer_instance(*args, **kwargs)


class SpectralNorm(nnx.Module):
    """Wraps an nnx layer with spectral normalization, ``W / sigma_max(W)`` (Miyato 2018).

    Drop-in for :class:`flax.nnx.SpectralNorm`: same arguments (``layer_instance``,
    ``n_steps`` 1, ``epsilon`` 1e-12, ``dtype``, ``param_dtype``, ``error_on_non_matrix``,
    ``update_stats`` True, ``rngs``), same call (``update_stats`` override; ``train()`` /
    ``eval()`` switch it) and the same ``batch_stats`` dict of ``BatchStat``: ``path + ("u",)``
    ``[1, O]`` and ``path + ("sigma",)`` ``[]`` for every param of 2 or more dimensions, on
    :func:`jnorm.spectral_norm`. As :class:`jnorm.linen.SpectralNorm`, ``u`` starts at the
    exact top singular vector and ``sigma`` at the exact largest singular value, and the
    layer's own params are never overwritten (flax's writes the normalized kernel back).
    """

    def __init__(
        self,
        layer_instance: nnx.Module,
        *,
        n_steps: int = 1,
        epsilon: float = 1e-12,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        error_on_non_matrix: bool = False,
        update_stats: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        del rngs
        self.layer_instance = layer_instance
        self.n_steps = n_steps
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.error_on_non_matrix = error_on_non_matrix
        self.use_running_average = not update_stats
        stats: dict[tuple[Any, ...], nnx.BatchStat] = {}
        for path, var in _selected(layer_instance, ...):
            _, u, sigma = spectral_kernel(
                self, var[...], spectral_initial_u(self, var[...])
            )
            stats[(*path, "u")] = nnx.BatchStat(u.astype(param_dtype))
            stats[(*path, "sigma")] = nnx.BatchStat(sigma.astype(param_dtype))
        self.batch_stats = nnx.data(stats)

    def __call__(self, *args: Any, update_stats: bool | None = None, **kwargs: Any) -> Any:
        """Calls the wrapped layer with its (>= 2-D) params divided by their spectral norms."""
        update_stats = first_from(
            update_stats, not self.use_running_average,
            error_msg="No `update_stats` argument was provided to SpectralNorm.",
        )
        variables = dict(_selected(self.layer_instance, ...))
        new = {}
        for path, var in variables.items():
            new[path], u, sigma = spectral_kernel(
                self, var[...], self.batch_stats[(*path, "u")][...]
            )
            if update_stats:  # stored in the variables' own dtypes, as flax.nnx does
                for name, value in (("u", u), ("sigma", sigma)):
                    stat = self.batch_stats[(*path, name)]
                    stat[...] = value.astype(stat[...].dtype)
        with _replaced(new, variables):
            return self.layer_instance(*args, **kwargs)
