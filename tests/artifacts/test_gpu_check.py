"""``python -m benchmarks.gpu_check --cpu --quick`` runs every check on CPU (interpret mode).

No timing is checked; the run must pass, print the versions and every step, and notice a
wrong answer (a check that cannot fail proves nothing).
"""

from __future__ import annotations

import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import gpu_check


def test_gpu_check_runs_every_check_on_cpu():
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--cpu", "--quick"],
        capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    text = out.stdout
    for line in ("jax ", "jaxlib ", "triton", "backend cpu"):
        assert line in text
    for step in ("pytest", "values", "program", "sharded", "bench"):
        assert f"[PASS] {step}" in text, text[-3000:]
    assert "passed" in text and "benchmarks.bench" in text
    assert "models" in text  # run, or reported missing


def test_without_gpu_it_asks_for_cpu_flag():
    out = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2 and "pass --cpu" in out.stderr


def test_value_check_catches_a_wrong_answer(monkeypatch):
    """Outputs ten bound-widths off are reported (the float64 reference is moved instead)."""
    rng = np.random.default_rng(0)
    assert gpu_check.check_values(256, 9, jnp.float32, gpu_check.KINDS, ("pallas",), rng) == []
    ref = gpu_check._reference

    def off(x64, scale, bias, center):
        y = ref(x64, scale, bias, center)
        return y + 10 * gpu_check.bound(x64, 256, jnp.float32, center)[:, None] * (1 + abs(y))

    monkeypatch.setattr(gpu_check, "_reference", off)
    fails = gpu_check.check_values(256, 9, jnp.float32, gpu_check.KINDS, (), rng)
    assert any("scaled error" in f and "offset 1e4" in f for f in fails)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_bound_is_at_least_two_output_ulps(dtype):
    x = np.random.default_rng(0).normal(size=(4, 1024))
    assert np.all(gpu_check.bound(x, 1024, dtype, True) >= 2 * float(jnp.finfo(dtype).eps))
