"""jnorm: normalization layers for JAX, as pure functions with explicit state.

Every layer is one computation, ``y = a / sigma * (x - mu) + b``, with ``mu`` and ``sigma``
taken over different axes: :func:`moments` computes the statistics, :func:`normalize` applies
the scheme, and the layer functions choose the axes. Flax linen modules live in
:mod:`jnorm.linen` (importing :mod:`jnorm` does not import flax).
"""

from jnorm._checkpoint import restore_state as restore_state
from jnorm._checkpoint import save_state as save_state
from jnorm._dyt import dynamic_tanh as dynamic_tanh
from jnorm._frn import evonorm_b0 as evonorm_b0
from jnorm._frn import evonorm_s0 as evonorm_s0
from jnorm._frn import filter_response_norm as filter_response_norm
from jnorm._frn import tlu as tlu
from jnorm._inference import fold_batch_norm as fold_batch_norm
from jnorm._inference import precise_batch_stats as precise_batch_stats
from jnorm._layers import batch_norm as batch_norm
from jnorm._layers import group_norm as group_norm
from jnorm._layers import instance_norm as instance_norm
from jnorm._layers import layer_norm as layer_norm
from jnorm._layers import rms_norm as rms_norm
from jnorm._lrn import local_response_norm as local_response_norm
from jnorm._lrn import lrn_tensorflow_args as lrn_tensorflow_args
from jnorm._normalize import normalize as normalize
from jnorm._renorm import batch_renorm as batch_renorm
from jnorm._renorm import batch_renorm_schedule as batch_renorm_schedule
from jnorm._spectral import spectral_norm as spectral_norm
from jnorm._spectral import spectral_norm_init as spectral_norm_init
from jnorm._state import BatchStats as BatchStats
from jnorm._state import update_batch_stats as update_batch_stats
from jnorm._stats import moments as moments
from jnorm._torch import from_torch_batch_norm as from_torch_batch_norm
from jnorm._torch import from_torch_state_dict as from_torch_state_dict
from jnorm._torch import momentum_from_torch as momentum_from_torch
from jnorm._torch import to_torch_state_dict as to_torch_state_dict
from jnorm._torch import torch_norm_kwargs as torch_norm_kwargs
from jnorm._weight import kernel_norm as kernel_norm
from jnorm._weight import scaled_standardize_weight as scaled_standardize_weight
from jnorm._weight import standardize_weight as standardize_weight
from jnorm._weight import weight_norm as weight_norm
from jnorm._whitening import WhiteningStats as WhiteningStats
from jnorm._whitening import decorrelated_batch_norm as decorrelated_batch_norm
from jnorm._whitening import iter_norm as iter_norm
from jnorm._whitening import whitening_matrix as whitening_matrix

__version__ = "0.1.0"

__all__ = [
    "BatchStats",
    "WhiteningStats",
    "batch_norm",
    "batch_renorm",
    "batch_renorm_schedule",
    "decorrelated_batch_norm",
    "dynamic_tanh",
    "evonorm_b0",
    "evonorm_s0",
    "filter_response_norm",
    "fold_batch_norm",
    "from_torch_batch_norm",
    "from_torch_state_dict",
    "group_norm",
    "instance_norm",
    "iter_norm",
    "kernel_norm",
    "layer_norm",
    "local_response_norm",
    "lrn_tensorflow_args",
    "moments",
    "momentum_from_torch",
    "normalize",
    "precise_batch_stats",
    "restore_state",
    "rms_norm",
    "save_state",
    "scaled_standardize_weight",
    "spectral_norm",
    "spectral_norm_init",
    "standardize_weight",
    "tlu",
    "to_torch_state_dict",
    "torch_norm_kwargs",
    "update_batch_stats",
    "weight_norm",
    "whitening_matrix",
]
