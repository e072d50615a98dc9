"""Type aliases shared by every module (one place, so the signatures agree).

Axis arguments follow one naming scheme across jnorm (see README, "Axis arguments"):

* ``reduction_axes``: the axes the **statistics** are taken over (``moments``, ``layer_norm``,
  ``rms_norm``, and group norm's non-channel axes);
* ``feature_axes``: the axes that keep their own statistics and learned parameters; the
  statistics cover the other axes (batch-statistics layers: all of them; per-example image
  layers: all but the batch axis 0). In ``layer_norm``/``rms_norm`` only the parameters;
* ``axis_name``, ``axis_index_groups``: the mapped (device) axis of ``pmap``/``shard_map``/
  ``vmap`` that statistics are also reduced over.

Flax modules keep flax's attribute names (``BatchNorm(axis=...)``,
``LayerNorm(reduction_axes=...)``).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from typing import Any, Literal

from jax.typing import ArrayLike, DTypeLike

__all__ = [
    "ArrayLike",
    "Axes",
    "AxisIndexGroups",
    "AxisName",
    "DTypeLike",
    "Implementation",
    "PathLike",
    "PyTree",
    "Scalar",
    "TensorLike",
]

#: One axis or several, as ints (negative counts from the end).
Axes = int | Sequence[int]
#: A mapped axis name (any hashable, e.g. ``"batch"``), several of them, or None.
AxisName = Hashable | Sequence[Hashable] | None
#: Groups of device indices along ``axis_name`` reduced separately, or None (all together).
AxisIndexGroups = Sequence[Sequence[int]] | None
#: Which program computes a row norm's forward: None (automatic), ``"xla"`` or ``"pallas"``.
Implementation = Literal["xla", "pallas"] | None
#: A real scalar hyperparameter: a Python/NumPy number or a (possibly traced) 0-d array.
Scalar = float | ArrayLike
#: A pytree of arrays (e.g. a BatchStats, or a dict of them).
PyTree = Any
#: An array-like or a torch.Tensor (torch is not a dependency, so not spelled out).
TensorLike = Any
#: A filesystem path.
PathLike = str | os.PathLike
