"""Docstrings that restate an argument's default agree with the code.

Every public function of ``jnorm`` and every module of ``jnorm.linen`` / ``jnorm.nnx`` is read
for the phrasings its docstring uses to restate a default, and each restated value is held
against ``inspect.signature`` (functions, nnx constructors) or the dataclass field (linen
attributes). The phrasings, with ``N`` an argument's name in double backticks:

* ``N`` (VALUE), ``N`` (VALUE; ...), ``N`` (VALUE: what it means), ``N`` (description, VALUE)
  -- the first item of the parenthesis that is a value;
* ``N`` VALUE -- a number, None/True/False or a ``code`` value right after the name;
* ``N=VALUE`` (the default), the default ``N=VALUE``, ``N`` defaults to VALUE, ``N`` (...)
  VALUE by default;
* in an ``Args:`` entry ``N: ...``: (default VALUE), (default: VALUE), VALUE (default).

A default described in words ("default ``x``'s", "default: all but 0") is computed from the
other arguments, so the code must hold None there (the one exception in use: "the last axis",
-1).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from collections.abc import Callable, Collection, Iterator
from typing import Any, NamedTuple

import jax.numpy as jnp
import pytest
from flax import nnx

import jnorm
import jnorm.linen as jnn
import jnorm.nnx as jnx

#: Namespace in which a ``code`` value such as ``nnx.PathContains("kernel")`` is evaluated.
_CODE_NAMESPACE = {"__builtins__": {}, "nnx": nnx, "jnp": jnp}
#: Defaults described in words that name a value other than None.
_WORDS = {"the last axis": -1}
_NO_VALUE = object()
_DESCRIBED = object()  # a default described in words (see the module docstring)


class Restated(NamedTuple):
    name: str  # the argument
    value: Any  # what the docstring says (``_DESCRIBED`` for words)
    text: str  # the phrase, for the failure message


def _value(text: str) -> Any:
    """The Python value ``text`` spells (``code`` or a bare literal), or ``_NO_VALUE``."""
    text = text.strip()
    code = re.fullmatch(r"``(.+)``", text)
    if code:
        text = code.group(1)
    elif not re.fullmatch(r"-?[\d.]+(?:e-?\d+)?|None|True|False", text):
        return _NO_VALUE  # words: only ``code`` or a plain literal is a value
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    try:
        return eval(text, dict(_CODE_NAMESPACE))  # our own docstrings, no builtins
    except Exception:
        return _NO_VALUE


def _default_value(text: str) -> Any:
    """The value after "default" / "default:": a value, or words (``_DESCRIBED``)."""
    text = text.strip().rstrip(".")
    if text in _WORDS:
        return _WORDS[text]
    value = _value(text)
    return _DESCRIBED if value is _NO_VALUE else value


def _split_top(text: str, seps: str) -> list[str]:
    """``text`` split at the characters ``seps`` outside ``code``, brackets and quotes."""
    parts, depth, start, i, in_code = [], 0, 0, 0, False
    while i < len(text):
        if text.startswith("``", i):
            in_code = not in_code
            i += 2
            continue
        c = text[i]
        if not in_code:
            if c in "([{":
                depth += 1
            elif c in ")]}":
                depth -= 1
            elif c in seps and depth == 0:
                parts.append(text[start:i])
                start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def _parenthesis(text: str, start: int) -> str | None:
    """The text inside the parenthesis opening at ``text[start]`` (code spans respected)."""
    if start >= len(text) or text[start] != "(":
        return None
    depth, i, in_code = 0, start, False
    while i < len(text):
        if text.startswith("``", i):
            in_code = not in_code
            i += 2
            continue
        if not in_code:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            if depth == 0:
                return text[start + 1:i]
        i += 1
    return None


def _item_value(item: str) -> Any:
    """The default one item of a parenthesis states: "VALUE", "VALUE: meaning", "default
    VALUE"; ``_NO_VALUE`` for a description."""
    item = item.strip()
    said = re.fullmatch(r"default:?\s+(.+)", item)
    if said:
        return _default_value(said.group(1))
    first = _split_top(item, ":")[0]
    return _value(first)


def _args_entries(doc: str) -> Iterator[tuple[list[str], str]]:
    """(names, text) of each entry of the ``Args:`` section ("a, b: text" lines and their
    indented continuations)."""
    section = re.search(r"^Args:\n((?:[ \t]+.*\n?|\n)+)", doc, re.M)
    if not section:
        return
    for entry in re.split(r"\n(?=  \w)", section.group(1)):
        head = re.match(r"\s*([\w, ]+):\s", entry)
        if head:
            yield [n.strip() for n in head.group(1).split(",")], entry[head.end():]


def restated_defaults(doc: str, names: Collection) -> list[Restated]:
    """Every place ``doc`` restates the default of an argument in ``names``."""
    flat = " ".join(doc.split())
    found: list[Restated] = []
    for name in names:
        tick = f"``{name}``"
        for m in re.finditer(re.escape(tick), flat):
            after = flat[m.end():].lstrip(" ")
            at = m.end() + len(flat[m.end():]) - len(after)
            inside = _parenthesis(flat, at)
            if inside is not None:
                for item in _split_top(inside, ",;"):
                    value = _item_value(item)
                    if value is not _NO_VALUE:
                        found.append(Restated(name, value, f"{tick} ({inside})"))
                        break
                by_default = re.match(r"\s*(\S+) by default", flat[at + len(inside) + 2:])
                if by_default and _value(by_default.group(1)) is not _NO_VALUE:
                    found.append(Restated(name, _value(by_default.group(1)),
                                          f"{tick} ({inside}) {by_default.group(0).strip()}"))
                continue
            bare = re.match(r"(``[^`]+``|-?[\d.]+(?:e-?\d+)?\b|None\b|True\b|False\b)", after)
            if bare and _value(bare.group(1)) is not _NO_VALUE:
                found.append(Restated(name, _value(bare.group(1)), f"{tick} {bare.group(1)}"))
            to = re.match(r"defaults to (``[^`]+``|[^\s,;.]+)", after)
            if to:
                found.append(Restated(name, _default_value(to.group(1)), f"{tick} {to.group(0)}"))
        for m in re.finditer(rf"``{re.escape(name)}=([^`]+)``(\s*\((?:the )?default\))?", flat):
            said_default = m.group(2) or re.search(r"\bdefault\s*$", flat[:m.start()])
            value = _value(f"``{m.group(1)}``")
            if said_default and value is not _NO_VALUE:
                found.append(Restated(name, value, m.group(0)))
    for entry_names, text in _args_entries(doc):
        text = " ".join(text.split())
        for m in re.finditer(r"\(default:?\s+([^()]*(?:\([^()]*\))?[^()]*?)\)|"
                             r"(``[^`]+``|None|True|False) \(default\)", text):
            value = (_default_value(m.group(1).split(";")[0]) if m.group(1) is not None
                     else _value(m.group(2)))
            found += [Restated(n, value, f"{n}: ...{m.group(0)}")
                      for n in entry_names if n in names]
    return found


def code_defaults(obj: Any) -> dict[str, Any]:
    """Argument -> default: a linen module's dataclass fields, an nnx module's ``__init__``,
    else the signature's."""
    if isinstance(obj, type) and issubclass(obj, jnn.Module):
        return {f.name: f.default for f in dataclasses.fields(obj)
                if f.name not in ("parent", "name")}
    fn = obj.__init__ if isinstance(obj, type) and issubclass(obj, nnx.Module) else obj
    return {p.name: p.default for p in inspect.signature(fn).parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"}


def _same(said: Any, default: Any) -> bool:
    if said is _DESCRIBED:
        return default is None
    if isinstance(said, bool) or isinstance(default, bool) or said is None or default is None:
        return said is default
    if type(said) in (int, float) and type(default) in (int, float):
        return said == default
    return type(said) is type(default) and said == default


def mismatches(obj: Any) -> list[str]:
    """The restated defaults of ``obj``'s docstring that differ from its code."""
    defaults = code_defaults(obj)
    out = []
    for r in restated_defaults(inspect.getdoc(obj) or "", defaults):
        default = defaults[r.name]
        if default is inspect.Parameter.empty or default is dataclasses.MISSING:
            out.append(f"{r.name}: required, but the docstring restates a default: {r.text}")
        elif not _same(r.value, default):
            said = "words (the code must hold None)" if r.value is _DESCRIBED else repr(r.value)
            out.append(f"{r.name}: the code's default is {default!r}, the docstring says "
                       f"{said}: {r.text}")
    return out


# --------------------------------------------------------------------------------------------

PUBLIC: list[tuple[str, Callable[..., Any]]] = (
    [(f"jnorm.{n}", getattr(jnorm, n)) for n in jnorm.__all__ if callable(getattr(jnorm, n))]
    + [(f"jnorm.linen.{n}", getattr(jnn, n)) for n in jnn.__all__]
    + [(f"jnorm.nnx.{n}", getattr(jnx, n)) for n in jnx.__all__]
)


@pytest.mark.parametrize(("name", "obj"), PUBLIC, ids=[n for n, _ in PUBLIC])
def test_restated_defaults_match_the_code(name, obj):
    assert mismatches(obj) == [], name


def test_the_checker_reads_enough_restatements():
    """Not vacuous: the phrasings above are found where they are known to be used."""
    counts = {n: len(restated_defaults(inspect.getdoc(o) or "", code_defaults(o)))
              for n, o in PUBLIC}
    assert len(counts) >= 65, counts  # every public function and module (69 when written)
    assert sum(counts.values()) >= 100, counts  # 122 when written
    assert sum(counts[n] for n in counts if n.startswith("jnorm.linen.")) >= 45, counts
    assert sum(counts[n] for n in counts if n.startswith("jnorm.nnx.")) >= 45, counts
    assert sum(counts[n] for n in counts if n.count(".") == 1) >= 10, counts

    def said(obj: Any) -> dict[str, Any]:
        return {r.name: r.value for r in restated_defaults(inspect.getdoc(obj) or "",
                                                           code_defaults(obj))}

    assert said(jnn.BatchNorm)["momentum"] == 0.99  # ``N`` (words, VALUE; ...)
    assert said(jnn.BatchNorm)["axis"] == -1
    assert said(jnx.BatchNorm)["momentum"] == 0.99  # ``N`` VALUE (words)
    assert said(jnx.SpectralNorm)["update_stats"] is True
    assert said(jnx.WeightStandardization)["epsilon"] is None  # ``N`` (None: ...)
    assert said(jnx.WeightNorm)["variable_filter"] == nnx.PathContains("kernel")  # ``code``
    assert said(jnx.WeightNorm)["epsilon"] == 0  # defaults to
    assert said(jnn.IterNorm)["iterations"] == 5  # (``T``, default 5)
    assert said(jnx.IterNorm)["iterations"] == 5  # ... 5 by default
    assert said(jnn.SpectralNorm)["collection_name"] == "batch_stats"
    assert said(jnorm.local_response_norm)["convention"] == "torch"  # VALUE (default)
    assert said(jnorm.layer_norm)["implementation"] is None
    assert said(jnorm.batch_norm)["dtype"] is _DESCRIBED  # (default ``x``'s)


def _fake(x: Any, epsilon: float = 1e-5, momentum: float = 0.99, axis: int = -1,
          dtype: Any = None, reduction_axes: Any = -1, convention: str = "torch",
          strict: bool = True) -> None:
    """A layer.

    ``epsilon`` (1e-3), ``momentum`` 0.9 (weight of the old value), ``axis`` (feature axis,
    -2), ``x`` (0), the default ``strict=False``.

    Args:
      dtype: output dtype (default ``"float16"``).
      reduction_axes: the axes reduced (default: all but 0).
      convention: ``"tensorflow"`` (default) or ``"torch"``.
    """


def _fake_right(x: Any, epsilon: float = 1e-5, momentum: float = 0.99, axis: int = -1,
                dtype: Any = None, reduction_axes: Any = -1, convention: str = "torch",
                strict: bool = True) -> None:
    """A layer.

    ``epsilon`` (1e-5), ``momentum`` 0.99 (weight of the old value), ``axis`` (feature axis,
    -1), ``x`` (any shape), the default ``strict=True``.

    Args:
      dtype: output dtype (default: the input's).
      reduction_axes: the axes reduced (default the last axis).
      convention: ``"torch"`` (default) or ``"tensorflow"``.
    """


def test_the_checker_catches_planted_mismatches():
    found = mismatches(_fake)
    assert sorted(m.split(":")[0] for m in found) == sorted(
        ["epsilon", "momentum", "axis", "x", "strict", "dtype", "reduction_axes", "convention"]
    ), found
    assert mismatches(_fake_right) == []


def test_the_checker_catches_a_wrong_linen_attribute_default():
    class Fake(jnn.Module):
        """``momentum`` (0.9), ``use_bias`` True."""

        momentum: float = 0.99
        use_bias: bool = False

    assert [m.split(":")[0] for m in mismatches(Fake)] == ["momentum", "use_bias"]
