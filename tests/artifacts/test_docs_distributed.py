"""Runs the examples of docs/distributed.md (doctest) on the 8 forced host devices."""

from __future__ import annotations

import doctest
import pathlib

import jax
import pytest

_DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "distributed.md"


@pytest.mark.skipif(jax.device_count() < 8, reason="the examples use 8 devices")
def test_distributed_md_examples_run() -> None:
    result = doctest.testfile(
        str(_DOC), module_relative=False, optionflags=doctest.NORMALIZE_WHITESPACE,
        raise_on_error=False, verbose=False,
    )
    assert result.attempted > 10
    assert result.failed == 0, f"{result.failed} example(s) in {_DOC.name} failed (see above)"
