"""Former home of the axis checks, now in :mod:`jnorm._checks` (re-exported for old imports)."""

from jnorm._checks import canonicalize_axes as canonicalize_axes
from jnorm._checks import check_mask as check_mask
from jnorm._checks import complement_axes as complement_axes
from jnorm._checks import feature_param as feature_param
from jnorm._typing import Axes as Axes

__all__ = ["Axes", "canonicalize_axes", "check_mask", "complement_axes", "feature_param"]
