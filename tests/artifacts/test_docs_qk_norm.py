"""Runs every ```python block of docs/qk_norm.md, each on its own (they are self-contained)."""

from __future__ import annotations

import pathlib
import re

import pytest

_DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "qk_norm.md"
_BLOCKS = re.findall(r"^```python\n(.*?)^```", _DOC.read_text(), flags=re.S | re.M)


def test_the_page_has_its_examples() -> None:
    assert len(_BLOCKS) == 3


@pytest.mark.parametrize("i", range(len(_BLOCKS)))
def test_qk_norm_md_block_runs(i: int) -> None:
    code = compile(_BLOCKS[i], f"{_DOC.name}[block {i}]", "exec", dont_inherit=True)
    exec(code, {"__name__": "__qk_norm__"})
