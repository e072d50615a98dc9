"""jnorm: normalization layers for JAX, as pure functions with explicit state.

Every layer is one computation, ``y = a / sigma * (x - mu) + b``, with ``mu`` and ``sigma``
taken over different axes: :func:`moments` computes the statistics, :func:`normalize` applies
the scheme, and the layer functions choose the axes. Flax linen modules live in
:mod:`jnorm.linen` (importing :mod:`jnorm` does not import flax).
"""

from jnorm._layers import batch_norm as batch_norm
from jnorm._layers import group_norm as group_norm
from jnorm._layers import instance_norm as instance_norm
from jnorm._layers import layer_norm as layer_norm
from jnorm._layers import rms_norm as rms_norm
from jnorm._normalize import normalize as normalize
from jnorm._state import BatchStats as BatchStats
from jnorm._state import from_torch_batch_norm as from_torch_batch_norm
from jnorm._state import momentum_from_torch as momentum_from_torch
from jnorm._state import update_batch_stats as update_batch_stats
from jnorm._stats import moments as moments

__version__ = "0.1.0"

__all__ = [
    "BatchStats",
    "batch_norm",
    "from_torch_batch_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "moments",
    "momentum_from_torch",
    "normalize",
    "rms_norm",
    "update_batch_stats",
]
