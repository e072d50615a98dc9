"""Test data helpers: random data and parameters, error measures. The layers and their float64
oracles live in tests/registry.py (the one table of every public normalization)."""

from __future__ import annotations

from typing import Any

import numpy as np


def params(c: int, seed: int = 0, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """A random per-channel (scale, bias) pair."""
    rng = np.random.default_rng(seed)
    return ((1 + 0.5 * rng.standard_normal(c)).astype(dtype),
            rng.standard_normal(c).astype(dtype))


def data(shape: tuple[int, ...], *, offset: float = 0.0, spread: float = 1.0, seed: int = 0,
         dtype: Any = np.float32) -> np.ndarray:
    """``offset + spread * N(0, 1)`` rounded to `dtype` (the oracle sees the rounded values)."""
    rng = np.random.default_rng(seed)
    return np.asarray(offset + spread * rng.standard_normal(shape)).astype(dtype)


def rel_err(got: Any, ref: Any) -> float:
    """Max-norm relative error of `got` against the reference `ref`."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-30))


def as64(x: Any) -> np.ndarray:
    """Any array (bfloat16 too) as float64 NumPy."""
    return np.asarray(np.asarray(x).astype(np.float32) if str(np.asarray(x).dtype) == "bfloat16"
                      else np.asarray(x), np.float64)
