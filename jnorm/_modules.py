"""The chores every jnorm module shares, for ``jnorm.linen`` and ``jnorm.nnx`` alike.

Imported only by :mod:`jnorm.linen` and :mod:`jnorm.nnx` (never by ``jnorm/__init__``), so
``import jnorm`` stays free of flax. Nothing here computes a normalization: the modules hand
arrays to jnorm's functions, and this module decides what both frameworks must decide the same
way:

* which running statistics a module stores, their initial values and their stored dtype
  (:func:`initial_stats`, :func:`run_with_stats`);
* turning stored values into the functions' state pytree and the new state back into values
  to store (one place for ``count`` and dtypes);
* the dtype a module returns (:func:`out_dtype`, flax's rule) and which of a wrapped layer's
  params a kernel wrapper transforms (:func:`kernel_selected`);
* the call of each module: ``apply_<layer>(module, x, ...)`` calls jnorm's public function
  ``<layer>`` with the module's attributes as its keywords (``apply_batch_norm(module, x, ...)``
  is :class:`BatchNorm`'s call, :func:`jnorm.batch_norm` the function it runs), and the kernel
  wrappers' transforms (:func:`standardized_kernel`, :func:`weight_normed_kernel`,
  :func:`spectral_kernel`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Mapping
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax.linen import dtypes

from jnorm import (
    BatchStats,
    WhiteningStats,
    batch_norm,
    batch_renorm,
    decorrelated_batch_norm,
    dynamic_tanh,
    evonorm_b0,
    evonorm_s0,
    filter_response_norm,
    group_norm,
    instance_norm,
    iter_norm,
    kernel_norm,
    layer_norm,
    local_response_norm,
    rms_norm,
    scaled_standardize_weight,
    spectral_norm,
    spectral_norm_init,
    standardize_weight,
    tlu,
    weight_norm,
)
from jnorm._axes import canonicalize_axes, resolve_groups

__all__ = [
    "MODULE_NAMES",
    "StatsKind",
    "apply_batch_norm",
    "apply_batch_renorm",
    "apply_dynamic_tanh",
    "apply_evonorm_b0",
    "apply_evonorm_s0",
    "apply_filter_response_norm",
    "apply_group_norm",
    "apply_instance_norm",
    "apply_layer_norm",
    "apply_local_response_norm",
    "apply_rms_norm",
    "apply_whitening_norm",
    "initial_kernel_scale",
    "initial_stats",
    "kernel_selected",
    "out_dtype",
    "run_with_stats",
    "spectral_initial_u",
    "spectral_kernel",
    "standardized_kernel",
    "stat_dtype",
    "stat_names",
    "weight_normed_kernel",
]

# The modules jnorm.linen and jnorm.nnx both provide (each module's ``__all__``).
MODULE_NAMES: tuple[str, ...] = (
    "BatchNorm",
    "BatchRenorm",
    "DecorrelatedBatchNorm",
    "DynamicTanh",
    "EvoNormB0",
    "EvoNormS0",
    "FilterResponseNorm",
    "GroupNorm",
    "InstanceNorm",
    "IterNorm",
    "LayerNorm",
    "LocalResponseNorm",
    "RMSNorm",
    "SpectralNorm",
    "WeightNorm",
    "WeightStandardization",
)

StatsKind = Literal["batch", "whitening"]
_STATE: dict[str, type[NamedTuple]] = {"batch": BatchStats, "whitening": WhiteningStats}
# The field that follows the input's dtype (complex stays complex) and the real-valued ones.
_FIELDS: dict[str, tuple[str, str]] = {"batch": ("mean", "var"), "whitening": ("mean", "whitening")}


def stat_dtype(param_dtype: Any, force_float32_reductions: bool) -> jnp.dtype:
    """The dtype running statistics are created with: flax linen's rule."""
    return jnp.dtype(jnp.float32 if force_float32_reductions else param_dtype)


def initial_stats(
    kind: StatsKind,
    feature_shape: tuple[int, ...],
    *,
    dtype: Any,
    momentum: float | None,
    group_size: int | None = None,
) -> dict[str, Callable[[], jax.Array]]:
    """Name -> initialiser of every running statistic a module stores, in flax's order.

    ``mean``/``var`` (``kind="batch"``) or ``mean``/``whitening`` (``"whitening"``), plus
    ``count`` only with ``momentum=None`` (cumulative averaging needs it; flax's collections
    hold no count): per feature for ``"batch"`` (so masks and ``skip_nonfinite`` work), one
    for ``"whitening"``.
    """
    if kind == "batch":  # cumulative averages count per feature, so masks work (a module's
        # user cannot choose the state)
        fresh: Any = BatchStats.init(feature_shape, dtype, per_feature_count=momentum is None)
    else:
        (c,) = feature_shape
        fresh = WhiteningStats.init(c, group_size=group_size, dtype=dtype)
    return {name: functools.partial(getattr, fresh, name) for name in stat_names(kind, momentum)}


def stat_names(kind: StatsKind, momentum: float | None) -> tuple[str, ...]:
    """The names :func:`initial_stats` creates."""
    return _FIELDS[kind] + (("count",) if momentum is None else ())


def _real(dtype: jnp.dtype) -> jnp.dtype:
    return jnp.finfo(dtype).dtype if jnp.issubdtype(dtype, jnp.complexfloating) else dtype


def _batch_dtype(x: jax.Array, dtype: Any, force_float32_reductions: bool) -> jnp.dtype:
    """The dtype of flax's batch statistics for input ``x`` (flax's ``_compute_stats``)."""
    d = jnp.dtype(x.dtype if dtype is None else dtype)
    return jnp.promote_types(d, jnp.float32) if force_float32_reductions else d


def _cast(value: jax.Array, dtype: jnp.dtype) -> jax.Array:
    value = jnp.asarray(value)
    if jnp.iscomplexobj(value) and not jnp.issubdtype(dtype, jnp.complexfloating):
        value = jnp.real(value)  # what assigning into a real variable keeps, without a warning
    return value.astype(dtype)


def run_with_stats(
    kind: StatsKind,
    stored: Mapping[str, jax.Array],
    call: Callable[[Any], tuple[jax.Array, Any]],
    *,
    x: jax.Array,
    update: bool,
    dtype: Any = None,
    force_float32_reductions: bool = True,
    follow_input: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array] | None]:
    """Runs ``call(state)`` on the stored statistics; returns ``(y, values to store or None)``.

    ``stored`` maps the names of :func:`initial_stats` to their current values. The state
    handed to ``call`` has the dtypes the statistics will be stored in:

    * ``follow_input=True`` (linen): flax linen's rule, ``stored = result_type(stored,
      batch statistic)`` -- a complex input makes the running mean complex (its variance stays
      real), a float64 input (x64) float64, and half statistics with
      ``force_float32_reductions=False`` stay half;
    * ``follow_input=False`` (nnx): the stored dtype never changes, as in flax.nnx.

    With ``update=False`` (eval, or linen's ``init``) nothing is returned to store.
    """
    first, second = _FIELDS[kind]
    dtypes_ = {k: jnp.asarray(v).dtype for k, v in stored.items()}
    if follow_input:  # dtypes only: JAX's standard lattice, also under strict promotion
        with jax.numpy_dtype_promotion("standard"):
            batch = _batch_dtype(x, dtype, force_float32_reductions)
            dtypes_[first] = jnp.promote_types(dtypes_[first], batch)
            dtypes_[second] = jnp.promote_types(dtypes_[second], _real(batch))
    values = {k: _cast(v, dtypes_[k]) for k, v in stored.items()}
    values.setdefault("count", jnp.zeros((), jnp.int32))
    y, new = call(_STATE[kind](**values))
    if not update:
        return y, None
    # no stop_gradient: flax linen has none, and jnorm.precise_batch_stats differentiates the
    # update (forward mode) to read its momentum; nnx.grad does not differentiate BatchStat
    return y, {k: _cast(getattr(new, k), dtypes_[k]) for k in stored}


def out_dtype(dtype: Any, x: jax.Array, *params: jax.Array | None) -> jnp.dtype:
    """flax's rule: ``dtype`` if set, else the promoted dtype of the input and the params.

    Only a dtype is computed here, so it uses JAX's standard promotion lattice even when the
    user runs with ``jax_numpy_dtype_promotion="strict"`` (the arrays are cast explicitly).
    """
    with jax.numpy_dtype_promotion("standard"):
        return dtypes.canonicalize_dtype(x, *[p for p in params if p is not None], dtype=dtype)


def kernel_selected(path: str, value: Any, names: Collection[str]) -> bool:
    """Whether a kernel wrapper transforms the param at ``path`` ("a/b/kernel"): a name in
    ``names`` occurs in the path and the param has at least 2 dimensions."""
    return any(n in path for n in names) and jnp.ndim(value) >= 2


# --------------------------------------------------------------------------------------------
# One call per layer, ``apply_<layer>(module, x, ...)``: the module's attributes -> the keywords
# of jnorm's function ``<layer>``. ``module`` is a linen or an nnx module; both spell their
# attributes as flax does, so the plumbing is written once here.
# ``stored`` is the module's running statistics (name -> value); ``update`` whether to return
# new values to store; ``collective`` whether ``axis_name`` applies (linen's init: no).


def _shaped(p: jax.Array | None, x: jax.Array, axes: tuple[int, ...]) -> jax.Array | None:
    """A param of the feature axes' shape (nnx creates ``(num_features,)``; flax reshapes)."""
    if p is None:
        return None
    shape = tuple(x.shape[a] for a in axes)
    return p.reshape(shape) if p.shape != shape and p.size == int(np.prod(shape)) else p


def _run_with_module_stats(
    kind: StatsKind, module: Any, x: jax.Array, stored: Mapping[str, jax.Array],
    call: Callable[[Any], tuple[jax.Array, Any]], update: bool, follow_input: bool,
) -> tuple[jax.Array, dict[str, jax.Array] | None]:
    return run_with_stats(
        kind, stored, call, x=x, update=update, dtype=module.dtype,
        force_float32_reductions=module.force_float32_reductions,
        follow_input=follow_input,
    )


def apply_batch_norm(
    module: Any, x: jax.Array, scale: jax.Array | None, bias: jax.Array | None,
    stored: Mapping[str, jax.Array], *, training: bool, update: bool, collective: bool = True,
    follow_input: bool = True, mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array] | None]:
    """:func:`jnorm.batch_norm` with ``module``'s attributes (flax's, plus jnorm's extras)."""
    features = canonicalize_axes(module.axis, x.ndim, name="axis")
    scale, bias = _shaped(scale, x, features), _shaped(bias, x, features)
    return _run_with_module_stats("batch", module, x, stored, lambda st: batch_norm(
        x, st, scale, bias, training=training, feature_axes=features, momentum=module.momentum,
        epsilon=module.epsilon, mask=mask,
        axis_name=module.axis_name if collective else None,
        axis_index_groups=module.axis_index_groups if collective else None,
        unbiased_running_var=module.unbiased_running_var,
        skip_nonfinite=module.skip_nonfinite,
        dtype=out_dtype(module.dtype, x, scale, bias),
        virtual_batch_size=module.virtual_batch_size, strict=False,
    ), update, follow_input)


def apply_batch_renorm(
    module: Any, x: jax.Array, scale: jax.Array | None, bias: jax.Array | None,
    stored: Mapping[str, jax.Array], *, training: bool, update: bool, collective: bool = True,
    follow_input: bool = True, mask: jax.Array | None = None, r_max: Any = None,
    d_max: Any = None,
) -> tuple[jax.Array, dict[str, jax.Array] | None]:
    """:func:`jnorm.batch_renorm` with ``module``'s attributes; ``r_max``/``d_max`` override
    them."""
    features = canonicalize_axes(module.axis, x.ndim, name="axis")
    scale, bias = _shaped(scale, x, features), _shaped(bias, x, features)
    return _run_with_module_stats("batch", module, x, stored, lambda st: batch_renorm(
        x, st, scale, bias, training=training,
        r_max=module.r_max if r_max is None else r_max,
        d_max=module.d_max if d_max is None else d_max,
        feature_axes=features, momentum=module.momentum, epsilon=module.epsilon, mask=mask,
        axis_name=module.axis_name if collective else None,
        axis_index_groups=module.axis_index_groups if collective else None,
        dtype=out_dtype(module.dtype, x, scale, bias),
    ), update, follow_input)


def apply_whitening_norm(
    module: Any, x: jax.Array, scale: jax.Array | None, bias: jax.Array | None,
    stored: Mapping[str, jax.Array], *, training: bool, update: bool, follow_input: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array] | None]:
    """:func:`jnorm.decorrelated_batch_norm` (``module.iterations`` None) or
    :func:`jnorm.iter_norm` with ``module``'s attributes."""
    (ch,) = canonicalize_axes(module.axis, x.ndim, name="axis")
    dtype = out_dtype(module.dtype, x, scale, bias)

    def call(st: Any) -> tuple[jax.Array, Any]:
        if module.iterations is None:
            return decorrelated_batch_norm(
                x, st, scale, bias, training=training, group_size=module.group_size,
                feature_axes=ch, momentum=module.momentum, epsilon=module.epsilon, dtype=dtype,
            )
        return iter_norm(
            x, st, scale, bias, training=training, iterations=module.iterations,
            group_size=module.group_size, feature_axes=ch, momentum=module.momentum,
            epsilon=module.epsilon, dtype=dtype,
        )

    return _run_with_module_stats("whitening", module, x, stored, call, update, follow_input)


def apply_evonorm_b0(
    module: Any, x: jax.Array, scale: jax.Array | None, bias: jax.Array | None,
    v: jax.Array | None, stored: Mapping[str, jax.Array], *, training: bool, update: bool,
    follow_input: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array] | None]:
    """:func:`jnorm.evonorm_b0` with ``module``'s attributes."""
    return _run_with_module_stats("batch", module, x, stored, lambda st: evonorm_b0(
        x, st, scale, bias, v, training=training, momentum=module.momentum, epsilon=module.epsilon,
        dtype=out_dtype(module.dtype, x, scale, bias),
    ), update, follow_input)


def apply_layer_norm(
    module: Any, x: jax.Array, scale: jax.Array | None, bias: jax.Array | None,
    mask: jax.Array | None = None,
) -> jax.Array:
    """:func:`jnorm.layer_norm` with ``module``'s attributes."""
    feat = canonicalize_axes(module.feature_axes, x.ndim, name="feature_axes")
    scale, bias = _shaped(scale, x, feat), _shaped(bias, x, feat)
    return layer_norm(
        x, scale, bias, reduction_axes=module.reduction_axes, feature_axes=feat,
        epsilon=module.epsilon, mask=mask, axis_name=module.axis_name,
        axis_index_groups=module.axis_index_groups, dtype=out_dtype(module.dtype, x, scale, bias),
        implementation=module.implementation,
        zero_centered_scale=bool(module.zero_centered_scale) and scale is not None,
    )


def apply_rms_norm(
    module: Any, x: jax.Array, scale: jax.Array | None, mask: jax.Array | None = None
) -> jax.Array:
    """:func:`jnorm.rms_norm` with ``module``'s attributes."""
    feat = canonicalize_axes(module.feature_axes, x.ndim, name="feature_axes")
    scale = _shaped(scale, x, feat)
    return rms_norm(
        x, scale, reduction_axes=module.reduction_axes, feature_axes=feat,
        epsilon=module.epsilon, mask=mask, axis_name=module.axis_name,
        axis_index_groups=module.axis_index_groups, dtype=out_dtype(module.dtype, x, scale),
        implementation=module.implementation,
        zero_centered_scale=bool(module.zero_centered_scale) and scale is not None,
    )


def apply_dynamic_tanh(
    module: Any, x: jax.Array, scale: jax.Array | None, bias: jax.Array | None, alpha: jax.Array,
    mask: jax.Array | None = None,
) -> jax.Array:
    """:func:`jnorm.dynamic_tanh` with ``module``'s attributes (``mask`` is checked, no effect)."""
    feat = canonicalize_axes(module.feature_axes, x.ndim, name="feature_axes")
    scale, bias = _shaped(scale, x, feat), _shaped(bias, x, feat)
    alpha = alpha if jnp.ndim(alpha) == 0 else _shaped(alpha, x, feat)
    return dynamic_tanh(x, scale, bias, alpha, feature_axes=feat, mask=mask,
                        dtype=out_dtype(module.dtype, x, scale, bias, alpha))


def apply_group_norm(
    module: Any, x: jax.Array, scale: jax.Array | None, bias: jax.Array | None,
    mask: jax.Array | None = None, *, groups: tuple[int | None, int | None] | None = None,
) -> jax.Array:
    """:func:`jnorm.group_norm` with ``module``'s attributes; channels last, as in flax.

    ``groups`` (``(num_groups, group_size)``) overrides ``module``'s pair (nnx stores both)."""
    num_groups, group_size = (module.num_groups, module.group_size) if groups is None else groups
    others = None
    if module.reduction_axes is not None:
        red = canonicalize_axes(module.reduction_axes, x.ndim, name="reduction_axes")
        if x.ndim - 1 not in red:
            raise ValueError(
                "GroupNorm: `reduction_axes` must include the last axis, which holds the "
                f"channels; got {module.reduction_axes!r}."
            )
        others = tuple(a for a in red if a != x.ndim - 1)
    resolve_groups(x.shape[-1], num_groups, group_size)
    return group_norm(
        x, scale, bias, num_groups=num_groups, group_size=group_size,
        feature_axes=-1, reduction_axes=others, epsilon=module.epsilon, mask=mask,
        axis_name=module.axis_name, axis_index_groups=module.axis_index_groups,
        dtype=out_dtype(module.dtype, x, scale, bias),
    )


def apply_instance_norm(
    module: Any, x: jax.Array, scale: jax.Array | None, bias: jax.Array | None,
    mask: jax.Array | None = None,
) -> jax.Array:
    """:func:`jnorm.instance_norm` with ``module``'s attributes; an ``(N, C)`` input returns the
    bias, as flax's does (``strict=False``)."""
    feat = canonicalize_axes(module.feature_axes, x.ndim, name="feature_axes")
    scale, bias = _shaped(scale, x, feat), _shaped(bias, x, feat)
    return instance_norm(
        x, scale, bias, feature_axes=feat, epsilon=module.epsilon, mask=mask,
        axis_name=module.axis_name, axis_index_groups=module.axis_index_groups,
        dtype=out_dtype(module.dtype, x, scale, bias), strict=False,
    )


def apply_filter_response_norm(
    module: Any, x: jax.Array, scale: jax.Array | None, bias: jax.Array | None,
    eps: jax.Array | None, tau: jax.Array | None,
) -> jax.Array:
    """FRN (+ TLU when ``tau`` is given) with ``module``'s attributes; ``eps`` the learned part."""
    epsilon: Any = module.epsilon if eps is None else module.epsilon + jnp.abs(eps)
    y = filter_response_norm(
        x, scale, bias, epsilon=epsilon, dtype=out_dtype(module.dtype, x, scale, bias)
    )
    return y if tau is None else tlu(y, tau)


def apply_evonorm_s0(
    module: Any, x: jax.Array, scale: jax.Array | None, bias: jax.Array | None, v: jax.Array | None
) -> jax.Array:
    """:func:`jnorm.evonorm_s0` with ``module``'s attributes."""
    return evonorm_s0(
        x, scale, bias, v, num_groups=module.num_groups, group_size=module.group_size,
        epsilon=module.epsilon, dtype=out_dtype(module.dtype, x, scale, bias),
    )


def apply_local_response_norm(module: Any, x: jax.Array) -> jax.Array:
    """:func:`jnorm.local_response_norm` with ``module``'s attributes."""
    return local_response_norm(
        x, size=module.size, alpha=module.alpha, beta=module.beta, k=module.k,
        feature_axes=module.feature_axes, convention=module.convention, dtype=module.dtype,
    )


# --------------------------------------------------------------------------------------------
# Kernel wrappers: what happens to one selected kernel (the frameworks differ only in how they
# reach the wrapped layer's params).


def standardized_kernel(module: Any, value: jax.Array, gain: jax.Array | None) -> jax.Array:
    """The kernel :class:`WeightStandardization` hands the layer (``gain`` when scaled)."""
    if not module.scaled:
        return standardize_weight(value, epsilon=1e-5 if module.epsilon is None else module.epsilon)
    return scaled_standardize_weight(
        value, gain, nonlinearity_gain=module.nonlinearity_gain,
        epsilon=1e-4 if module.epsilon is None else module.epsilon,
    )


def weight_normed_kernel(
    value: jax.Array, g: jax.Array | None, *, feature_axes: Any, epsilon: float, dtype: Any,
) -> jax.Array:
    """The kernel :class:`WeightNorm` hands the layer: ``g v / ||v||`` over the fan-in."""
    w = weight_norm(value, g, feature_axes=feature_axes, epsilon=epsilon)
    return w if dtype is None else w.astype(dtype)


def initial_kernel_scale(
    key: jax.Array, value: jax.Array, *, feature_axes: Any, scale_init: Any, param_dtype: Any,
) -> jax.Array:
    """WeightNorm's ``g`` at init: ``||v||`` (the layer is unchanged) or ``scale_init``."""
    feat = canonicalize_axes(feature_axes, value.ndim, name="feature_axes")
    if scale_init is None:
        return kernel_norm(value, feature_axes=feat).astype(param_dtype)
    return scale_init(key, tuple(value.shape[a] for a in feat), param_dtype)


def spectral_kernel(
    module: Any, value: jax.Array, u: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(W / sigma, new u [1, O], sigma)`` for one param of :class:`SpectralNorm` (``u`` and
    ``sigma`` in the iteration's dtype: linen stores them in ``param_dtype``, nnx in the
    variable's own dtype)."""
    if value.ndim > 2 and module.error_on_non_matrix:
        raise ValueError(
            f"SpectralNorm: a param is {value.ndim}-D but error_on_non_matrix is True."
        )
    w_sn, new_u, sigma = spectral_norm(
        value, u[0], n_steps=module.n_steps, epsilon=module.epsilon
    )
    if module.dtype is not None:
        w_sn = w_sn.astype(module.dtype)
    return w_sn, new_u[None, :], sigma


def spectral_initial_u(module: Any, value: jax.Array) -> jax.Array:
    """SpectralNorm's ``u`` at init: the exact top right singular vector, ``[1, O]``."""
    return spectral_norm_init(value)[None, :].astype(module.param_dtype)
