"""jnorm.experiments.beyond_batch_norm at a tiny size: it runs, prints its table, saves the plot."""

from __future__ import annotations

import importlib.util
import math
import pathlib
import sys

import jax

_PATH = pathlib.Path(__file__).resolve().parents[1] / "jnorm/experiments/beyond_batch_norm.py"


def test_beyond_batch_norm_tiny(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("beyond_batch_norm_example", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # flax dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        # optax's Adam mixes its int32 step count with Python floats, which the suite's strict
        # promotion rejects; the example itself runs under JAX's default (standard) promotion.
        with jax.numpy_dtype_promotion("standard"):
            rows = module.main(["--tiny", "--out", str(tmp_path)])
    finally:
        sys.modules.pop(spec.name, None)
    norms = {(r["experiment"], r["norm"]) for r in rows}
    assert len(norms) == 5
    assert all(0.0 <= r["acc_mean"] <= 1.0 and math.isfinite(r["loss_mean"]) for r in rows)
    assert (tmp_path / "beyond_batch_norm.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "| renorm at small batches | batch_renorm | 4 |" in out
