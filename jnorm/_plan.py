"""How XLA runs the statistics and the derivative of one normalization: decided here, once.

The formula is the same everywhere (``jnorm._stats``, ``jnorm._normalize``); how it is
written decides what XLA keeps in memory, and that depends on the layout (which axes are
reduced, where the parameters vary), on a mask, and on the backend. :func:`plan` makes every
such choice from those facts and returns them as one frozen :class:`Plan`, which the
statistics kernel and the derivative rule read. The measurements behind each choice are logged
in ``docs/benchmarks.md``; ``tests/core/test_plan.py`` counts the HLO passes of each plan.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax

__all__ = ["Derivative", "Plan", "plan", "stages"]

#: How the derivative is formed:
#: ``"autodiff"``: plain reverse mode of the forward (``jnorm._normalize._plain``);
#: ``"per_block"``: the rule with parameters constant over each block (instance norm; batch
#: norm off XLA:CPU);
#: ``"rows"``: the rule for the last axes with per-feature parameters (RMS norm);
#: ``"two_stage"``: the rule for parameters varying inside blocks reduced in stages (group norm).
Derivative = Literal["autodiff", "per_block", "rows", "two_stage"]


@dataclasses.dataclass(frozen=True)
class Plan:
    """The choices for one call (see :func:`plan`); hashable, so it can be a static argument."""

    #: the statistics axes, canonical (sorted, non-negative)
    axes: tuple[int, ...]
    #: groups of the reduced axes summed one after the other (:func:`jnorm._stats.staged_sum`)
    stages: tuple[tuple[int, ...], ...]
    #: the moments' two sums each subtract their own copy of the shift (private_copies)
    shift_copies: bool
    #: the output subtracts its own copy of the shift and mean
    output_copies: bool
    #: how the derivative is formed
    derivative: Derivative
    #: the stages the derivative rule broadcasts its per-block factors through
    #: (:func:`jnorm._stats.staged_spread`); empty where the rule broadcasts none
    spread_stages: tuple[tuple[int, ...], ...]
    #: the forward may run the fused Pallas kernel (:func:`jnorm._pallas.row_norm` picks it
    #: per platform at lowering)
    kernel: bool
    #: the statistics' per-block shift and mean are computed once and stored, not recomputed
    #: in every full-size loop that reads them (jnorm._stats.computed_once)
    pivot_once: bool = False
    #: plain autodiff keeps no full-size residual: the backward recomputes the forward from
    #: ``x`` (``jax.checkpoint``), as the derivative rule does
    recompute: bool = False


def _cpu(backend: str | None) -> bool:
    return (backend or jax.default_backend()) == "cpu"


def two_stage(axes: tuple[int, ...], ndim: int) -> bool:
    """Group norm's layout: the minor axis reduced with a kept axis among the reduced ones."""
    last = ndim - 1
    return last in axes and len(axes) > 1 and any(i not in axes for i in range(min(axes), last))


def stages(axes: tuple[int, ...], ndim: int, backend: str | None = None
           ) -> tuple[tuple[int, ...], ...]:
    """The groups of `axes` reduced one after the other.

    - Group norm's layout on XLA:CPU: the major axes first (a contiguous column reduction),
      then the small minor axis; one reduction has a small strided inner extent there. On GPU
      one reduction measured faster.
    - Kept axes on both sides (instance norm's ``H, W``): one axis at a time, the minor first;
      faster on XLA:CPU and on GPU.

    >>> stages((1, 2, 4), 5, "cpu"), stages((1, 2), 4, "cpu"), stages((0, 1, 2), 4, "cpu")
    (((1, 2), (4,)), ((2,), (1,)), ((0, 1, 2),))
    """
    last = ndim - 1
    if two_stage(axes, ndim) and _cpu(backend):
        return (tuple(a for a in axes if a != last), (last,))
    if len(axes) > 1 and last not in axes and min(axes) > 0:
        inner = max(axes)
        return ((inner,),) + stages(tuple(a for a in axes if a != inner), ndim, backend)
    return (axes,)


def plan(
    axes: tuple[int, ...],
    ndim: int,
    *,
    masked: bool = False,
    center: bool = True,
    param_shape: tuple[int, ...] | None = None,
    rule: bool = True,
    kernel: bool = False,
    backend: str | None = None,
) -> Plan:
    """The plan for statistics over canonical `axes` of a rank-`ndim` input.

    `param_shape` is the scale's shape broadcast to rank `ndim` (None: no scale); `masked`
    says a mask is given; `rule` is False where the derivative rule cannot serve the call (a
    mask, cross-device statistics, non-float data or parameters, a traced epsilon), so plain
    autodiff differentiates it; `kernel` says the fused Pallas kernel may run the forward
    (:func:`jnorm._pallas.may_take_kernel`, or ``implementation="pallas"``); `backend`
    defaults to JAX's default backend (decided at trace time).

    >>> p = plan((1,), 2, param_shape=(1, 8), backend="cpu")
    >>> p.derivative, p.stages
    ('autodiff', ((1,),))
    """
    cpu = _cpu(backend)
    grouped = two_stage(axes, ndim)
    per_block = param_shape is None or all(param_shape[i] == 1 for i in axes)
    rows = axes == tuple(range(ndim - len(axes), ndim))
    staged = stages(axes, ndim, backend)
    derivative: Derivative
    recompute = False
    spread: tuple[tuple[int, ...], ...] = ()
    if masked or not rule:
        derivative = "autodiff"
    elif rows and center and cpu and not kernel:
        # Layer norm inside a model: its input is the residual stream, a sum XLA keeps
        # unmaterialized and recomputes from all its terms in every loop that reads it; the
        # rule reads x in more loops than autodiff, which saves x - mu once.
        derivative = "autodiff"
    elif per_block and 0 in axes and cpu and not kernel:
        # Statistics over the leading (batch) axis with per-block parameters: batch norm.
        # Batch norm inside a CNN: XLA:CPU fuses autodiff's backward into the activation and
        # convolution gradients around it at no cost to the step; the rule, faster alone,
        # adds full-size work there (ResNet-18 step: +20 ms, autodiff +0; docs/benchmarks.md).
        # Recomputed from x, its residuals cost no memory (ResNet step 145 MiB, flax 155).
        derivative, recompute = "autodiff", True
    elif per_block:
        derivative, spread = "per_block", staged
    elif rows:
        derivative = "rows"
    else:
        derivative = "two_stage"
        assert param_shape is not None  # per_block otherwise
        # the factors vary where the parameters do: broadcast over the other reduced axes
        flat = tuple(i for i in axes if param_shape[i] == 1)
        spread = stages(flat, ndim, backend) if cpu else (flat,)
    return Plan(
        axes=axes,
        stages=staged,
        # Own copies stream a materialized x into each loop instead of writing x - shift. Not
        # for group norm: XLA:CPU then fuses the per-group broadcast x - shift into its YNNPACK
        # reductions, which run it several times slower than writing x - shift once (two more
        # passes, less time); GPUs measured without them too.
        shift_copies=not masked and not grouped,
        output_copies=center and not masked and not grouped,
        derivative=derivative,
        spread_stages=spread,
        kernel=kernel,
        # XLA:CPU recomputes the settled pivot (its reduce_precision) per element in every loop
        pivot_once=cpu,
        recompute=recompute,
    )
