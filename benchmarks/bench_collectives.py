"""How many collectives one batch-norm call costs, read from the compiled HLO.

``python -m benchmarks.bench_collectives`` compiles :func:`jnorm.batch_norm` (training) in the
data-parallel styles jnorm supports and prints the collective ops XLA emits for each. The target
for the synced styles (``axis_name`` under ``shard_map`` or ``pmap``) is **one** collective per
forward call: every device packs ``(count, shift, mean, M2)`` into one array and a single
all-reduce brings all of them to every device. On CPU it forces 8 host devices when run as a
script, so it works anywhere; on a TPU/GPU host it uses the real devices.

This is a structural property, not a timing: ``tests/distributed/test_distributed.py`` asserts it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jnorm

__all__ = ["collectives_per_call", "count_collectives", "main"]

# An HLO instruction is "%name = shape opcode(operands)"; async pairs count once (the -start).
_OP = re.compile(
    r"\s(all-reduce|all-gather|reduce-scatter|collective-permute|all-to-all|"
    r"collective-broadcast|ragged-all-to-all)(?:-start)?\("
)


def count_collectives(hlo_text: str) -> dict[str, int]:
    """Counts the collective instructions in (compiled or lowered) HLO text, by opcode.

    >>> count_collectives("%a = f32[4] all-reduce(f32[4] %x), to_apply=%add")
    {'all-reduce': 1}
    """
    return dict(Counter(_OP.findall(hlo_text)))


def collectives_per_call(fn: Callable[..., Any], *args: Any) -> dict[str, int]:
    """Collectives in the compiled HLO of ``jax.jit(fn)(*args)``."""
    return count_collectives(jax.jit(fn).lower(*args).compile().as_text())


def _cases(n: int, shape: tuple[int, ...]) -> dict[str, tuple[Callable[..., Any], tuple]]:
    mesh = Mesh(np.array(jax.devices()[:n]), ("d",))
    c = shape[-1]
    state = jnorm.BatchStats.init(c)
    x = jnp.ones((n * shape[0], *shape[1:]), jnp.float32)
    scale, bias = jnp.ones(c), jnp.zeros(c)

    def bn(x: jax.Array, **kw: Any) -> tuple[jax.Array, jnorm.BatchStats]:
        return jnorm.batch_norm(x, state, scale, bias, training=True, **kw)

    def shard(f: Callable[..., Any], out: Any = None) -> Callable[..., Any]:
        out = (P("d"), P()) if out is None else out
        return jax.shard_map(f, mesh=mesh, in_specs=P("d"), out_specs=out)

    def train_step(x: jax.Array) -> jax.Array:  # forward + backward of a synced call
        return jax.grad(lambda x: jnp.sum(bn(x, axis_name="d")[0] ** 2))(x)

    groups = [list(range(0, n, 2)), list(range(1, n, 2))] if n % 2 == 0 and n > 1 else None
    per_device = (P("d"), P("d"))
    cases: dict[str, tuple[Callable[..., Any], tuple]] = {
        "shard_map, axis_name": (shard(lambda x: bn(x, axis_name="d")), (x,)),
        "shard_map, masked": (
            shard(lambda x: bn(x, axis_name="d", mask=x > 0)), (x,)
        ),
        "pmap, axis_name": (
            lambda x: jax.pmap(lambda x: bn(x, axis_name="d"), axis_name="d")(
                x.reshape(n, -1, *shape[1:])
            ),
            (x,),
        ),
        "shard_map, forward+backward": (shard(train_step, P("d")), (x,)),
        "jit + NamedSharding (XLA's choice)": (
            lambda x: bn(x), (jax.device_put(x, NamedSharding(mesh, P("d"))),)
        ),
    }
    if groups is not None:
        cases["shard_map, axis_index_groups"] = (
            shard(lambda x: jax.tree.map(
                lambda a: jnp.expand_dims(a, 0),
                bn(x, axis_name="d", axis_index_groups=groups),
            ), per_device),
            (x,),
        )
    return cases


def main(shape: tuple[int, ...] = (8, 8, 8, 64)) -> dict[str, dict[str, int]]:
    """Prints the collectives per batch-norm call for each style; returns them.

    ``shape`` is the per-device input ``(N, H, W, C)``.
    """
    n = jax.device_count()
    print(f"{n} {jax.devices()[0].platform} device(s); per-device input {shape}")
    if n < 2:
        print("only one device: set XLA_FLAGS=--xla_force_host_platform_device_count=8")
    results = {}
    for name, (fn, args) in _cases(n, shape).items():
        counts = collectives_per_call(fn, *args)
        results[name] = counts
        detail = ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())) or "none"
        print(f"  {name:40s} {sum(counts.values()):2d} collective(s): {detail}")
    return results


if __name__ == "__main__":
    import os

    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        # Backends start lazily, so this still takes effect for the CPU platform.
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
        ).strip()
    main()
