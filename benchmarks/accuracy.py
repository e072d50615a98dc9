"""Accuracy against float64: jnorm vs flax.linen on offset and outlier data (README's table).

Run from the repository root::

    python benchmarks/accuracy.py

Prints a Markdown table of the max |y - y64| of each layer's output, where ``y64`` is the
float64 NumPy definition evaluated on the same rounded float32 input. Public API only.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jnorm


def reference(x: np.ndarray, axis: int, epsilon: float) -> np.ndarray:
    """float64 standardization over `axis` (biased variance)."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis, keepdims=True)
    var = ((x - mean) ** 2).mean(axis, keepdims=True)
    return (x - mean) / np.sqrt(var + epsilon)


def flax_layer_norm(x: np.ndarray, fast: bool) -> np.ndarray:
    module = nn.LayerNorm(use_fast_variance=fast, use_bias=False, use_scale=False)
    return np.asarray(module.apply({}, x))


def flax_batch_norm(x: np.ndarray, fast: bool) -> np.ndarray:
    module = nn.BatchNorm(use_running_average=False, use_fast_variance=fast, use_bias=False,
                          use_scale=False)
    variables = module.init(jax.random.key(0), x)
    return np.asarray(module.apply(variables, x, mutable=["batch_stats"])[0])


def cases(rng: np.random.Generator) -> list[tuple[str, str, Callable[[], np.ndarray]]]:
    def first_column(value: float) -> Callable[[], np.ndarray]:
        def make() -> np.ndarray:
            x = rng.standard_normal((16, 4096))
            x[:, 0] = value
            return x
        return make

    def first_row(rows: int) -> Callable[[], np.ndarray]:
        def make() -> np.ndarray:
            x = rng.standard_normal((rows, 4))
            x[0] = 1e3
            return x
        return make

    return [
        ("layer", "`1e4 + N(0, 1)`, (64, 1024)", lambda: 1e4 + rng.standard_normal((64, 1024))),
        ("layer", "`1e6 + N(0, 1)`, (64, 1024)", lambda: 1e6 + rng.standard_normal((64, 1024))),
        ("layer", "`N(0, 1)` with `x[:, 0] = 100`, (16, 4096)", first_column(100.0)),
        ("layer", "`N(0, 1)` with `x[:, 0] = 30`, (16, 4096)", first_column(30.0)),
        ("batch", "`N(0, 1)` with `x[0] = 1e3`, (65536, 4)", first_row(65536)),
        ("batch", "`N(0, 1)` with `x[0] = 1e3`, (262144, 4)", first_row(262144)),
    ]


def main() -> None:
    rng = np.random.default_rng(0)
    print("| data | flax.linen default | flax `use_fast_variance=False` | jnorm |")
    print("|---|---|---|---|")
    for layer, name, make in cases(rng):
        x = make().astype(np.float32)
        if layer == "layer":
            ref = reference(x, 1, 1e-6)
            ours = jnorm.layer_norm(jnp.asarray(x), epsilon=1e-6)
            fast, exact = flax_layer_norm(x, True), flax_layer_norm(x, False)
        else:
            ref = reference(x, 0, 1e-5)
            ours, _ = jnorm.batch_norm(jnp.asarray(x), jnorm.BatchStats.init(4), training=True)
            fast, exact = flax_batch_norm(x, True), flax_batch_norm(x, False)
        errors = [np.abs(np.asarray(y, np.float64) - ref).max() for y in (fast, exact, ours)]
        label = ("LayerNorm, " if layer == "layer" else "BatchNorm, ") + name
        print(f"| {label} | " + " | ".join(f"{e:.1e}" for e in errors) + " |")


if __name__ == "__main__":
    main()
