"""Checkpointing of jnorm's state pytrees with orbax (``pip install orbax-checkpoint``).

orbax is imported when a function is called, not by ``import jnorm``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jnorm._typing import PathLike, PyTree

__all__ = ["restore_state", "save_state"]


def save_state(directory: PathLike, state: PyTree) -> None:
    """Saves a jnorm state pytree (BatchStats, WhiteningStats, dicts of them) with orbax.

    ``directory`` must be an absolute path that does not exist yet. Restore with
    :func:`restore_state` and a template of the same structure (e.g. a freshly initialised
    state), which gives back the NamedTuple types.
    """
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(directory, state)
        ckpt.wait_until_finished()


def restore_state(directory: PathLike, like: PyTree) -> PyTree:
    """Restores a state saved by :func:`save_state` into the structure and dtypes of ``like``."""
    import orbax.checkpoint as ocp

    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.asarray(a).dtype), like)
    with ocp.StandardCheckpointer() as ckpt:
        return ckpt.restore(directory, abstract)
