"""Test configuration shared by the whole suite.

* 8 host CPU devices, so the cross-device tests (shard_map, pmap, sharded jit) run anywhere.
  This must happen before JAX initialises its backends, hence at import time here.
* Strict dtype promotion and no implicit rank promotion (as equinox/lineax do): they catch real
  half-precision and broadcasting bugs in the library.
"""

from __future__ import annotations

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace: dict) -> None:
    import jax.numpy as jnp
    import numpy as np

    import jnorm

    doctest_namespace.update(jax=jax, jnp=jnp, np=np, jnorm=jnorm)
