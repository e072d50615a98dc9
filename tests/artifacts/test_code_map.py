"""docs/code_map.md shows what runs, call by call, when a layer is called: each ```text tree
there must be the calls jnorm's code makes (traced with ``sys.settrace``), so the page cannot
drift from the code."""

from __future__ import annotations

import os
import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import pytest

import jnorm

_DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "code_map.md"
_TREES = re.findall(r"^```text\n(.*?)^```", _DOC.read_text(), flags=re.S | re.M)
_ROOT = os.path.dirname(jnorm.__file__)


def _calls(fn, max_depth: int) -> list[str]:
    """The jnorm functions `fn` calls while traced, as ``"  " * (depth - 1) + module.name``
    (comprehensions left out), down to `max_depth`."""
    lines: list[str] = []

    def tracer(frame, event, arg):
        code = frame.f_code
        if event != "call" or not code.co_filename.startswith(_ROOT):
            return None
        depth, f = 0, frame
        while f is not None:
            depth += f.f_code.co_filename.startswith(_ROOT)
            f = f.f_back
        if depth <= max_depth and not code.co_name.startswith("<"):
            module = os.path.relpath(code.co_filename, _ROOT).removesuffix(".py")
            lines.append("  " * (depth - 1) + f"{module}.{code.co_name}")
        return None

    sys.settrace(tracer)
    try:
        jax.make_jaxpr(fn)()
    finally:
        sys.settrace(None)
    return lines


def _layers():
    x, p = jnp.ones((8, 4, 4, 16)), jnp.ones(16)
    state = jnorm.BatchStats.init(16)
    return {
        "_layers.layer_norm": lambda: jnorm.layer_norm(x, p, p),
        "_layers.batch_norm": lambda: jnorm.batch_norm(x, state, p, p, training=True),
    }


def test_the_page_shows_both_walks():
    assert [t.splitlines()[0] for t in _TREES] == list(_layers())


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the page traces the CPU plan")
@pytest.mark.parametrize("tree", _TREES, ids=[t.splitlines()[0] for t in _TREES])
def test_code_map_tree_is_what_runs(tree):
    shown = tree.rstrip("\n").splitlines()
    depth = max((len(s) - len(s.lstrip(" "))) // 2 + 1 for s in shown)
    fn = _layers()[shown[0]]
    fn()  # warm the caches, so the walk is the one every later call takes
    assert _calls(fn, depth) == shown


def test_the_tracer_sees_a_change():
    """The comparison can fail: a walk one level deeper shows calls the shallower one hides."""
    fn = _layers()["_layers.batch_norm"]
    fn()
    assert len(_calls(fn, 4)) > len(_calls(fn, 3))
