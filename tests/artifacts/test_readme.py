"""README's code runs as written and prints what README shows; CI runs README's test command."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
# A python block, optionally followed by "prints" and the text block it must print.
BLOCKS = re.findall(r"```python\n(.*?)```(?:\s*prints\s*```text\n(.*?)```)?", README, flags=re.S)


def test_every_quickstart_block_shows_its_output():
    quickstart = [code for code, _ in BLOCKS if "import jnorm" in code]
    assert quickstart, "README has no quickstart blocks"
    assert all(shown for code, shown in BLOCKS if "print(" in code), (
        "a README block prints but README does not show what it prints"
    )


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_python_blocks_run_and_print_what_readme_shows(index):
    code, shown = BLOCKS[index]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"README.md[python block {index}]", "exec"), {})
    printed = [line.rstrip() for line in out.getvalue().splitlines()]
    assert printed == [line.rstrip() for line in shown.splitlines()]


def test_quickstart_prose_names_current_arguments():
    # The blocks run (a wrong keyword fails above); the prose around them must not send a
    # newcomer to a keyword that does not exist.
    quickstart = README[README.index("## Quickstart") : README.index("## Conventions")]
    for wrong in ("channel_axis", "`axis=1`"):
        assert wrong not in quickstart


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in README and "<!-- test-command -->" in ci
    assert "<!-- main-command -->" in README
