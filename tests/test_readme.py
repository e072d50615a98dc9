"""README's code runs as written, and CI runs README's test command."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_python_blocks_run(index):
    namespace: dict = {}
    code = BLOCKS[index]
    exec(compile(code, f"README.md[python block {index}]", "exec"), namespace)
    if "class CNN" in code:  # exercise the model the block defines
        import jax
        import jax.numpy as jnp

        model = namespace["CNN"]()
        x = jnp.ones((2, 8, 8, 3))
        variables = model.init(jax.random.key(0), x, train=False)
        y, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
        assert y.shape == (2, 10)


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in README and "<!-- test-command -->" in ci
    assert "<!-- main-command -->" in README
