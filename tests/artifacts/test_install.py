"""The install stays lean: ``import jnorm`` needs JAX and NumPy only, and pulls in nothing else.

pyproject.toml's core dependencies are jax, jaxlib and numpy; Flax, Optax, Matplotlib,
scikit-learn, tqdm and orbax are extras. Checked in a fresh interpreter, since this test
process has imported them all already.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXTRAS_ONLY = ("flax", "optax", "matplotlib", "sklearn", "tqdm", "orbax", "torch", "chex")


def test_import_jnorm_imports_no_optional_package():
    code = (
        "import sys, jnorm\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {EXTRAS_ONLY!r}))\n"
        "print(sorted(m for m in sys.modules if m.startswith('jnorm.experiments')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120, cwd=ROOT)
    assert out.stdout.splitlines() == ["[]", "[]"], out.stdout


def test_core_dependencies_are_jax_and_numpy_only():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = sorted(d.split(">")[0].split("=")[0].split("[")[0] for d in project["dependencies"])
    assert names == ["jax", "jaxlib", "numpy"]
    extras = project["optional-dependencies"]
    assert any(d.startswith("flax") for d in extras["flax"])
    for pkg in ("matplotlib", "scikit-learn", "tqdm", "optax", "flax"):
        assert any(d.startswith(pkg) for d in extras["experiments"]), pkg
