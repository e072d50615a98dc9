"""jnorm's linen and nnx modules keep flax's constructor: the same names, in the same order,
with the same defaults and the same kinds (positional or keyword), so a flax model swaps in by
changing its import. jnorm's own additions come after flax's and have defaults."""

from __future__ import annotations

import dataclasses
import inspect

import flax.linen as flax_linen
import pytest
from flax import nnx as flax_nnx

import jnorm.linen as jnn
import jnorm.nnx as jnx

#: Where jnorm differs from flax on purpose: (frontend, class) -> {attribute: why}.
DIFFERS = {
    ("linen", "WeightNorm"): {
        "epsilon": "0: the wrapped layer is unchanged at init (PyTorch's g = ||v||)",
        "scale_init": "None: g = ||v|| (PyTorch's rule); pass an initializer for flax's",
        "variable_filter": "a tuple default instead of a required field",
        "feature_axes": "jnorm's linen WeightNorm wraps a kernel, not flax's module transform",
        "use_scale": "as feature_axes",
        "dtype": "as feature_axes",
    },
    ("nnx", "WeightNorm"): {
        "epsilon": "as linen's",
        "scale_init": "as linen's",
    },
    ("nnx", "SpectralNorm"): {"rngs": "optional: jnorm starts from the exact singular vector"},
}
SHARED = ["BatchNorm", "LayerNorm", "RMSNorm", "GroupNorm", "InstanceNorm", "WeightNorm",
          "SpectralNorm"]


def _linen_fields(cls: type) -> list[tuple[str, object]]:
    fields = dataclasses.fields(cls)
    return [(f.name, f.default) for f in fields if f.name not in ("parent", "name")]


def _nnx_params(cls: type) -> list[inspect.Parameter]:
    return list(inspect.signature(cls.__init__).parameters.values())[1:]  # drop self


@pytest.mark.parametrize("name", SHARED)
def test_linen_modules_keep_flax_attributes(name):
    differs = DIFFERS.get(("linen", name), {})
    ours = dict(_linen_fields(getattr(jnn, name)))
    theirs = _linen_fields(getattr(flax_linen, name))
    for attr, default in theirs:
        if attr in differs:
            continue
        assert attr in ours, f"jnorm.linen.{name} lacks flax's attribute `{attr}`"
        assert repr(ours[attr]) == repr(default), (name, attr, ours[attr], default)
    same = [a for a, _ in theirs if a in ours and a not in differs]
    order = [a for a, _ in _linen_fields(getattr(jnn, name)) if a in same]
    assert order == same, f"{name}: attribute order differs from flax's"
    for attr in set(ours) - dict(theirs).keys():
        assert ours[attr] is not dataclasses.MISSING, f"{name}.{attr}: an addition needs a default"


@pytest.mark.parametrize("name", SHARED)
def test_nnx_constructors_keep_flax_arguments(name):
    differs = DIFFERS.get(("nnx", name), {})
    ours = {p.name: p for p in _nnx_params(getattr(jnx, name))}
    theirs = _nnx_params(getattr(flax_nnx, name))
    for p in theirs:
        if p.kind is inspect.Parameter.VAR_KEYWORD or p.name in differs:
            continue
        assert p.name in ours, f"jnorm.nnx.{name} lacks flax's argument `{p.name}`"
        q = ours[p.name]
        assert q.kind == p.kind, (name, p.name, q.kind, p.kind)
        assert repr(q.default) == repr(p.default), (name, p.name, q.default, p.default)
    positional = [p.name for p in theirs if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert [p.name for p in _nnx_params(getattr(jnx, name))][: len(positional)] == positional
    for p in ours.values():
        if p.name not in {q.name for q in theirs} and p.kind is not inspect.Parameter.VAR_KEYWORD:
            assert p.default is not inspect.Parameter.empty, f"{name}({p.name}=) needs a default"


def test_documented_differences_are_real():
    """Every entry of DIFFERS names an attribute that does differ (no stale exceptions)."""
    for (frontend, name), attrs in DIFFERS.items():
        for attr in attrs:
            if frontend == "linen":
                ours = dict(_linen_fields(getattr(jnn, name)))
                theirs = dict(_linen_fields(getattr(flax_linen, name)))
            else:
                ours = {p.name: p.default for p in _nnx_params(getattr(jnx, name))}
                theirs = {p.name: p.default for p in _nnx_params(getattr(flax_nnx, name))}
            assert attr not in ours or attr not in theirs or repr(ours[attr]) != repr(
                theirs[attr]), f"{frontend}.{name}.{attr} no longer differs from flax"


def test_nnx_iter_norm_is_decorrelated_batch_norm_with_five_iterations():
    """nnx's IterNorm spells out its parent's constructor (no ``**kwargs`` hiding it from
    users and tools): the same parameters, kinds and defaults, with ``iterations=5``."""
    child = inspect.signature(jnx.IterNorm.__init__).parameters
    parent = inspect.signature(jnx.DecorrelatedBatchNorm.__init__).parameters
    assert list(child) == list(parent)
    for name, p in parent.items():
        q = child[name]
        assert q.kind == p.kind, name
        assert q.default == (5 if name == "iterations" else p.default), name
