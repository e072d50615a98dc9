"""The suite really has the 8 host devices its cross-device tests need."""

from __future__ import annotations

import jax


def test_the_suite_has_its_8_host_devices():
    """conftest.py forces 8 host CPU devices; the cross-device tests skip without them (or,
    built on ``jax.devices()[:8]``, run on fewer). A module that reset ``XLA_FLAGS`` on import
    (pytest imports every module for doctests) once took them away from the whole suite."""
    assert len(jax.devices("cpu")) == 8, jax.devices("cpu")
