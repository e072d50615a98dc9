"""The notebooks in ``notebooks/`` are committed executed: every code cell ran, in order and
without an error, the outputs are there, and every cell that draws shows its figure. They are
read as JSON here (no kernel); ``--nbmake`` runs them in the suite at the tiny size.

To re-execute one after changing it or the code it runs (quick size, the default outside the test
suite; from the repository root, so that the kernel imports this checkout's jnorm)::

    PYTHONPATH=$PWD jupyter execute --inplace notebooks/NN_name.ipynb
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))

#: A top-level statement (not inside a ``def``) that draws: the notebooks' ``show(result)``,
#: pyplot, or an image display.
DRAWS = re.compile(r"^(?:[\w., ]+=\s*)?(?:show\(|plt\.|display\(Image|\w+\.imshow\()", re.M)


def _code_cells(path: Path) -> list[dict]:
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def _source(cell: dict) -> str:
    s = cell["source"]
    return s if isinstance(s, str) else "".join(s)


def _text(output: dict) -> str:
    if "text" in output:
        t = output["text"]
        return t if isinstance(t, str) else "".join(t)
    plain = output.get("data", {}).get("text/plain", "")
    return plain if isinstance(plain, str) else "".join(plain)


def test_there_are_notebooks() -> None:
    assert len(NOTEBOOKS) >= 5, NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_executed_with_its_figures(path: Path) -> None:
    cells = _code_cells(path)
    assert cells, path.name
    counts = [c.get("execution_count") for c in cells]
    assert all(isinstance(n, int) for n in counts), (path.name, "not executed", counts)
    assert counts == sorted(counts) and len(set(counts)) == len(counts), (path.name, counts)
    outputs = [o for c in cells for o in c.get("outputs", [])]
    assert outputs, f"{path.name} has no outputs"
    errors = [o for o in outputs if o["output_type"] == "error"]
    assert not errors, (path.name, [e.get("ename") for e in errors])
    smoke = [o for o in outputs if "tiny size: a smoke test" in _text(o)]
    assert not smoke, f"{path.name} was executed at the tiny test size; use quick or full"
    for cell in cells:
        if DRAWS.search(_source(cell)):
            images = [o for o in cell.get("outputs", [])
                      if "image/png" in o.get("data", {})]
            assert images, (path.name, "a cell that draws has no figure",
                            _source(cell)[:120])


def test_no_placeholder_addresses() -> None:
    for path in NOTEBOOKS:
        text = path.read_text()
        assert "OWNER/" not in text and "colab-badge" not in text, path.name


def test_the_rule_sees_a_drawing_cell() -> None:
    assert DRAWS.search("r = EXPERIMENTS['noise'].run(ctx)\nshow(r)")
    assert DRAWS.search("fig, ax = plt.subplots()")
    assert not DRAWS.search("def show(result):\n    display(Image(filename='x.png'))")
