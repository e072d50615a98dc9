"""Every argument check of jnorm, with one message style: the argument, the value, the fix.

Two kinds of function, told apart by their names: ``check_*`` validate and return nothing;
``as_*`` validate and return the value converted (an array, a boolean mask, an int, a shape).
Layout decisions (which axes a layer reduces over, how parameters broadcast) live in
:mod:`jnorm._axes`.

The public functions validate their arguments here, at their entry and at trace time (all
checks look at static shapes, dtypes and Python values only), and then pass plain canonical
values down to the statistics, the affine kernel and the state update, which check nothing.

A value that is traced (inside ``jit``, e.g. a learned ``epsilon``) cannot be checked and is
accepted as it is; a concrete value -- a Python number, a NumPy scalar, a concrete
``jax.Array`` -- is checked whatever its type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jnorm._axes import batch_axes, is_int
from jnorm._typing import AxisIndexGroups, AxisName, DTypeLike

__all__ = [
    "BatchArgs",
    "as_batch_args",
    "as_batch_axes",
    "as_feature_shape",
    "as_input",
    "as_kernel",
    "as_mask",
    "as_positive_int",
    "check_axis_name",
    "check_batch_moments",
    "check_batch_size",
    "check_cumulative",
    "check_dtype",
    "check_epsilon",
    "check_implementation",
    "check_momentum",
    "check_nonnegative",
    "check_state",
    "check_training",
    "is_bool",
]


def _where(layer: str | None) -> str:
    return f"{layer}: " if layer else ""


def _concrete(value: Any) -> np.ndarray | None:
    """`value` as a NumPy array if it is known at trace time, None if it is traced."""
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        return np.asarray(value)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return None


def is_bool(value: Any) -> bool:
    """Whether `value` is a boolean (Python, NumPy, or an array of dtype bool)."""
    return isinstance(value, (bool, np.bool_)) or getattr(value, "dtype", None) == np.bool_


def check_axis_name(
    axis_name: AxisName, axis_index_groups: AxisIndexGroups = None, *, layer: str | None = None
) -> None:
    """`axis_name` must be bound by an enclosing ``pmap``/``shard_map``/``vmap``."""
    if axis_name is None:
        if axis_index_groups is not None:
            raise ValueError(
                f"{_where(layer)}`axis_index_groups`={axis_index_groups!r} was given without "
                "`axis_name`; name the mapped axis the groups index into, or drop "
                "`axis_index_groups`."
            )
        return
    try:
        lax.axis_size(axis_name)
    except NameError:
        raise ValueError(
            f"{_where(layer)}`axis_name`={axis_name!r} is not bound here: no enclosing pmap, "
            "shard_map or vmap maps an axis of that name. Call this function inside the mapped "
            "function (e.g. jax.vmap(f, axis_name=...)), or pass axis_name=None."
        ) from None


# --- inputs and parameters ----------------------------------------------------------------


def as_input(x: Any, name: str = "x", *, layer: str | None = None) -> jax.Array:
    """`x` as a jax array of numbers with at least one dimension."""
    x = jnp.asarray(x)
    if not (jnp.issubdtype(x.dtype, jnp.number) or x.dtype == jnp.bool_):
        raise TypeError(
            f"{_where(layer)}`{name}` must be a numeric array, got dtype {x.dtype}. Convert it "
            "with jnp.asarray(..., jnp.float32)."
        )
    if x.ndim == 0:
        raise ValueError(
            f"{_where(layer)}`{name}` must have at least one dimension, got a scalar. Give it "
            "a batch or feature axis, e.g. x[None]."
        )
    return x


def check_dtype(dtype: DTypeLike | None, *, name: str = "dtype", layer: str | None = None,
                floating: bool = False) -> None:
    """A dtype must be None (the input's) or inexact (real `floating` if asked): an integer
    dtype would truncate normalized values."""
    if dtype is None:
        return
    try:
        ok = jnp.issubdtype(dtype, jnp.floating if floating else jnp.inexact)
    except TypeError:
        ok = False
    if not ok:
        raise TypeError(
            f"{_where(layer)}`{name}`={dtype!r} is not a floating dtype: normalized values "
            "would be truncated. Pass a floating dtype (jnp.float32, jnp.bfloat16, ...) or None "
            "for the input's."
        )


def as_kernel(kernel: Any, *, layer: str, name: str = "kernel") -> jax.Array:
    """A floating Dense/Conv kernel with at least 2 dimensions (fan-in and output units)."""
    kernel = jnp.asarray(kernel)
    if not jnp.issubdtype(kernel.dtype, jnp.floating):
        raise TypeError(
            f"{layer}: `{name}` must be a floating array, got {kernel.dtype}. Convert it with "
            ".astype(jnp.float32)."
        )
    if kernel.ndim < 2:
        raise ValueError(
            f"{layer}: `{name}` must have at least 2 dimensions (fan-in and output), got shape "
            f"{kernel.shape}. Dense kernels are [I, O], Conv kernels [kh, kw, I, O]."
        )
    return kernel


def as_mask(mask: jax.Array | None, shape: Sequence[int]) -> jax.Array | None:
    """Checks that `mask` broadcasts to `shape` and returns it as a boolean array of that shape.

    A mask that is already a boolean array of `shape` passes through unchanged, so checking it
    twice costs nothing. A mask of any other dtype is an error (as in flax, a mask is boolean):
    an int or float mask often holds weights or indices, which ``!= 0`` would silently turn into
    a different selection.
    """
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
        raise TypeError(
            f"`mask` must be a boolean array (True = element counts), got dtype {mask.dtype}. "
            "Pass `mask.astype(bool)` if nonzero means keep, or a comparison such as "
            "`weights > 0`."
        )
    try:
        np.broadcast_shapes(mask.shape, tuple(shape))
    except ValueError:
        raise ValueError(
            f"`mask` has shape {mask.shape}, which does not broadcast to the input shape "
            f"{tuple(shape)}. Give it the input's shape, or size 1 on the axes it does not vary "
            "along."
        ) from None
    if np.broadcast_shapes(mask.shape, tuple(shape)) != tuple(shape):
        raise ValueError(
            f"`mask` of shape {mask.shape} would enlarge the input of shape {tuple(shape)}; "
            "it must broadcast to the input's shape."
        )
    return jnp.broadcast_to(mask, tuple(shape))


# --- hyperparameters ----------------------------------------------------------------------


def check_implementation(implementation: Any, *, layer: str) -> None:
    """`implementation` is None, ``"xla"`` or ``"pallas"``."""
    if implementation is not None and implementation not in ("xla", "pallas"):
        raise ValueError(
            f"{layer}: `implementation`={implementation!r} is not one of None (automatic: the "
            "fused Pallas kernel on GPU where it measured faster, else XLA), 'xla' or 'pallas'."
        )


def check_training(training: Any, *, layer: str | None = None) -> None:
    """`training` selects the computation at trace time, so it must be a Python bool."""
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(
            f"{_where(layer)}`training` must be a Python bool, got {type(training).__name__}. "
            "It selects the computation at trace time; to switch inside jit, mark it static "
            "(static_argnames) or use lax.cond with two calls."
        )


def _real_scalar(value: Any, name: str, layer: str | None, fix: str) -> float | None:
    """The value of a real scalar hyperparameter, None if traced; bools and arrays rejected."""
    if is_bool(value):
        raise TypeError(f"{_where(layer)}`{name}`={value!r} is a bool, not a number. {fix}")
    arr = _concrete(value)
    if arr is None:
        if jnp.ndim(value) != 0:
            raise ValueError(
                f"{_where(layer)}`{name}` must be a scalar, got shape {jnp.shape(value)}. {fix}"
            )
        return None
    if arr.ndim != 0 or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise TypeError(
            f"{_where(layer)}`{name}` must be a real scalar, got {value!r} (shape {arr.shape}, "
            f"dtype {arr.dtype}). {fix}"
        )
    return float(arr)


def check_nonnegative(value: Any, name: str, *, layer: str | None = None,
                      minimum: float = 0.0) -> None:
    """A real scalar that must be finite and ``>= minimum``."""
    bound = f">= {minimum:g}"
    v = _real_scalar(value, name, layer, f"Pass a finite number {bound}.")
    if v is not None and not (np.isfinite(v) and v >= minimum):
        raise ValueError(
            f"{_where(layer)}`{name}` must be finite and {bound}, got {value!r}. Pass a finite "
            f"number {bound}."
        )


def check_epsilon(epsilon: Any, *, layer: str | None = None) -> None:
    """``epsilon`` is added to a variance: a finite real scalar ``>= 0`` (traced ones pass)."""
    v = _real_scalar(epsilon, "epsilon", layer, "Pass a small number such as 1e-5.")
    if v is not None and not (np.isfinite(v) and v >= 0):
        raise ValueError(
            f"{_where(layer)}`epsilon` must be finite and >= 0 (it is added to the variance), "
            f"got {epsilon!r}. Pass a small number such as 1e-5."
        )


def check_momentum(momentum: Any, *, layer: str | None = None) -> None:
    """``momentum`` is the weight of the old running value: in ``[0, 1]``, or None."""
    if momentum is None:
        return
    fix = ("Pass a number in [0, 1], e.g. 0.99, or None for a cumulative average; PyTorch's "
           "momentum m is jnorm's 1 - m (jnorm.momentum_from_torch).")
    v = _real_scalar(momentum, "momentum", layer, fix)
    if v is not None and not 0 <= v <= 1:
        raise ValueError(
            f"{_where(layer)}`momentum` must lie in [0, 1] (the weight of the old value), got "
            f"{momentum!r}. {fix}"
        )


def as_feature_shape(num_features: Any, *, layer: str) -> tuple[int, ...]:
    """A feature count ``C`` or a feature shape ``(d1, d2, ...)`` of positive ints."""
    seq = (num_features,) if is_int(num_features) else num_features
    if not isinstance(seq, Sequence) or not seq or not all(is_int(d) and d >= 1 for d in seq):
        raise ValueError(
            f"{layer}: `num_features`={num_features!r} must be a positive int (the number of "
            "features) or a tuple of positive ints (the feature shape). Pass e.g. x.shape[-1]."
        )
    return tuple(int(d) for d in seq)


def as_positive_int(value: Any, name: str, *, layer: str | None = None,
                       minimum: int = 1) -> int:
    """An int ``>= minimum`` (bools and floats such as ``2.0`` are errors); returns it."""
    if not is_int(value) or value < minimum:
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(
            f"{_where(layer)}`{name}` must be {kind}, got {value!r}. Pass {kind}."
        )
    return int(value)


def check_batch_size(x: jax.Array, stat_axes: tuple[int, ...], axis_name: AxisName, *,
                     layer: str, strict: bool = True) -> None:
    """Training on batch statistics needs more than one value per feature (if ``strict``)."""
    if strict and axis_name is None and int(np.prod([x.shape[a] for a in stat_axes])) <= 1:
        raise ValueError(
            f"{layer} in training needs more than one value per channel, but the input of "
            f"shape {x.shape} has one per feature (statistics over axes {stat_axes}). Use a "
            "larger batch, training=False, or a per-example norm (layer_norm, group_norm)."
        )


# --- state --------------------------------------------------------------------------------


def check_state(
    state: Any,
    cls: type,
    shapes: Mapping[str, tuple[int, ...]],
    *,
    init: str,
    name: str = "state",
    layer: str | None = None,
) -> None:
    """A running-statistics pytree: its type, float fields of `shapes`, an int32 scalar count.

    Args:
      state: the value given.
      cls: the expected type (``BatchStats``, ``WhiteningStats``).
      shapes: expected shape of each floating field.
      init: the call that creates a matching state, for the message.
      name: the argument's name.
      layer: the public function, for the message.
    """
    where = _where(layer)
    if not isinstance(state, cls):
        raise TypeError(
            f"{where}`{name}` must be a jnorm.{cls.__name__}, got {type(state).__name__}; "
            f"create one with jnorm.{init}."
        )
    for field, shape in shapes.items():
        value = getattr(state, field)
        if jnp.shape(value) != tuple(shape):
            raise ValueError(
                f"{where}`{name}.{field}` has shape {jnp.shape(value)}, but {tuple(shape)} is "
                f"expected here. Create the state with jnorm.{init} or pass the matching axes."
            )
        kind = jnp.inexact if field == "mean" else jnp.floating  # flax keeps complex means
        if not jnp.issubdtype(jnp.result_type(value), kind):
            raise TypeError(
                f"{where}`{name}.{field}` has dtype {jnp.result_type(value)}; running statistics "
                f"must be floating (an integer state truncates them and its momentum to 0). "
                f"Create the state with jnorm.{init}."
            )
    count = state.count
    per_feature = jnp.shape(getattr(state, next(iter(shapes))))
    if jnp.shape(count) not in ((), per_feature) or not jnp.issubdtype(
        jnp.result_type(count), jnp.integer
    ):
        raise ValueError(
            f"{where}`{name}.count` must be an integer scalar (the number of updates) or one per "
            f"feature (shape {per_feature}), got shape {jnp.shape(count)} and dtype "
            f"{jnp.result_type(count)}. Create the state with jnorm.{init}."
        )


def check_cumulative(state: Any, momentum: Any, *, partial: bool) -> None:
    """Raises if cumulative averaging (``momentum=None``) could average in a feature's initial
    values: a call-count ``state.count`` of shape ``()`` while a mask or ``skip_nonfinite``
    (`partial`) can leave a feature without data in a batch."""
    if momentum is None and partial and jnp.ndim(state.count) == 0 and jnp.ndim(state.mean):
        raise ValueError(
            "`momentum=None` (cumulative average) with a `mask` or `skip_nonfinite` needs a "
            "count per feature, since a batch may hold no data for some features; `state.count` "
            "has shape (). Create the state with "
            f"BatchStats.init({tuple(jnp.shape(state.mean))}, per_feature_count=True)."
        )


def check_batch_moments(state: Any, mean: Any, var: Any, count: Any) -> None:
    """Statistics handed to a state update must have the state's shapes (no broadcasting).

    ``count`` is one number for all features (shape ``()``) or one per feature.
    """
    for field, value in (("mean", mean), ("var", var)):
        expected = jnp.shape(getattr(state, field))
        if jnp.shape(value) != expected:
            raise ValueError(
                f"update_batch_stats: `{field}` has shape {jnp.shape(value)}, but `state.{field}` "
                f"has shape {expected}; batch statistics are not broadcast to the state. Pass "
                f"one value per feature, shape {expected} (e.g. from jnorm.moments(x, "
                "reduction_axes=...))."
            )
    if jnp.shape(count) not in ((), jnp.shape(state.mean)):
        raise ValueError(
            f"update_batch_stats: `count` has shape {jnp.shape(count)}; pass one count for all "
            f"features (shape ()) or one per feature (shape {jnp.shape(state.mean)})."
        )


def as_batch_axes(
    x: jax.Array, state: Any, feature_axes: Any, *, cls: type, layer: str
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A batch-statistics layer's ``(feature_axes, statistics_axes)``
    (:func:`jnorm._axes.batch_axes`), with ``state`` checked against the feature shape.

    `cls` is :class:`jnorm.BatchStats` (passed in: the state lives a tier above the checks).
    """
    features, stat_axes = batch_axes(x.ndim, feature_axes)
    feature_shape = tuple(x.shape[a] for a in features)
    num = feature_shape[0] if len(feature_shape) == 1 else feature_shape
    check_state(state, cls, {"mean": feature_shape, "var": feature_shape},
                init=f"BatchStats.init({num})", layer=layer)
    return features, stat_axes


def as_layer_args(
    layer: str, x: Any, *, epsilon: Any, dtype: Any, mask: Any, axis_name: AxisName,
    axis_index_groups: AxisIndexGroups, implementation: Any = None,
) -> tuple[jax.Array, jax.Array | None]:
    """The checks every layer function makes on the arguments they all take.

    Returns ``(x, mask)``: the input as an array (:func:`as_input`) and the mask as a boolean
    array of its shape, or None (:func:`as_mask`).
    """
    x = as_input(x, layer=layer)
    check_epsilon(epsilon, layer=layer)
    check_dtype(dtype, layer=layer)
    check_axis_name(axis_name, axis_index_groups, layer=layer)
    check_implementation(implementation, layer=layer)
    return x, as_mask(mask, x.shape)


class BatchArgs(NamedTuple):
    """A batch-statistics layer's input once checked: canonical axes and a boolean mask."""

    x: jax.Array
    features: tuple[int, ...]
    stat_axes: tuple[int, ...]
    mask: jax.Array | None


def as_batch_args(
    layer: str, x: Any, state: Any, *, cls: type, training: Any, feature_axes: Any,
    momentum: Any, epsilon: Any, dtype: Any, mask: Any, axis_name: AxisName,
    axis_index_groups: AxisIndexGroups, partial: bool,
) -> BatchArgs:
    """The checks every batch-statistics layer (``batch_norm``, ``batch_renorm``) makes.

    `partial`: a mask or ``skip_nonfinite`` can leave a feature without data in a batch, which
    cumulative averaging (``momentum=None``) needs a per-feature count for. In evaluation no
    collective runs, so `axis_name` need not be bound there (as in flax).
    """
    check_training(training, layer=layer)
    x, mask = as_layer_args(
        layer, x, epsilon=epsilon, dtype=dtype, mask=mask,
        axis_name=axis_name if training else None,
        axis_index_groups=axis_index_groups if training else None,
    )
    features, stat_axes = as_batch_axes(x, state, feature_axes, cls=cls, layer=layer)
    check_momentum(momentum, layer=layer)
    if training:
        check_cumulative(state, momentum, partial=partial)
    return BatchArgs(x, features, stat_axes, mask)
