"""Old keyword names of public functions, kept working after a rename.

jnorm names axis arguments one way everywhere (see :mod:`jnorm._typing`): ``reduction_axes``
are the axes statistics are taken over, ``feature_axes`` the axes that keep their own
statistics and parameters. Earlier releases spelled these ``axis``, ``axes`` and
``channel_axis``, and ``axis`` meant the statistics axes in ``layer_norm`` but the feature
axis in ``batch_norm``. :func:`renamed` keeps every old spelling working, with the meaning it
had in that function, and says the new name in a :class:`DeprecationWarning`.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["renamed"]

F = TypeVar("F", bound=Callable[..., Any])


def renamed(**old_to_new: str) -> Callable[[F], F]:
    """Decorator: ``f(old=v)`` is ``f(new=v)`` for each ``old="new"`` pair, with a warning.

    The wrapped function's signature (``inspect.signature``, docs) shows the new names only.
    Passing both spellings raises a :class:`TypeError` that names both.

    Examples:
      >>> @renamed(axis="reduction_axes")
      ... def f(x, *, reduction_axes=-1):
      ...     return reduction_axes
      >>> import warnings
      >>> with warnings.catch_warnings():
      ...     warnings.simplefilter("ignore")
      ...     f(0, axis=2)
      2
    """

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            for old, new in old_to_new.items():
                if old not in kwargs:
                    continue
                if new in kwargs:
                    raise TypeError(
                        f"{fn.__qualname__}() got both `{old}` and `{new}`; `{old}` is the old "
                        f"name of `{new}`. Pass only `{new}`."
                    )
                warnings.warn(
                    f"{fn.__qualname__}(): the keyword `{old}` is renamed `{new}` (same meaning); "
                    f"`{old}` keeps working but will be removed in jnorm 1.0. Write "
                    f"`{new}=...`.",
                    DeprecationWarning,
                    stacklevel=2,
                )
                kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return call  # type: ignore[return-value]

    return wrap
