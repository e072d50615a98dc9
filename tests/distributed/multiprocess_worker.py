"""One process of the two-process ``jax.distributed`` test (tests/distributed/test_multiprocess.py).

Run as ``python tests/distributed/multiprocess_worker.py PORT PROCESS_ID NUM_PROCESSES``. Every
process has one CPU device; the processes talk through gloo collectives on localhost, exactly as
hosts of a multi-host slice talk through their interconnect. Each process builds the same global
batch from a fixed seed, feeds its own rows to synced batch norm (``shard_map`` over the global
mesh, ``axis_name="d"``) and compares the rows it gets back, the input gradient and the running
statistics with batch norm on one device over the whole batch. The last process's rows are all
masked out. Prints ``OK <max relative error>`` and exits 0 when they agree. """

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

ROWS, C = 4, 3  # rows per process, channels


def main(port: int, pid: int, nproc: int) -> None:
    jax.distributed.initialize(f"localhost:{port}", num_processes=nproc, process_id=pid,
                               initialization_timeout=60)
    import jnorm

    assert jax.process_count() == nproc and jax.device_count() == nproc, jax.devices()
    rng = np.random.default_rng(0)
    shape = (nproc * ROWS, 2, C)
    x = (3.0 + rng.normal(size=shape) * np.array([1.0, 4.0, 0.5])).astype(np.float32)
    mask = rng.random(shape) < 0.7
    mask[(nproc - 1) * ROWS:] = False  # the last process holds no valid row
    mask[0, 0, :] = True
    w = rng.normal(size=shape).astype(np.float32)  # cotangent of the output
    scale, bias = np.linspace(0.5, 1.5, C, dtype=np.float32), np.ones(C, np.float32)
    state = jnorm.BatchStats.init(C)

    def bn(x, m, **kw):
        return jnorm.batch_norm(x, state, jnp.asarray(scale), jnp.asarray(bias), training=True,
                                momentum=0.9, mask=m, **kw)

    def loss_and_grad(forward):
        def loss(x, m, w):
            y, s = forward(x, m)
            return jnp.sum(y * w), (y, s)
        return jax.jit(jax.value_and_grad(loss, has_aux=True))

    # The reference: one device, the whole batch (computed locally by every process).
    (_, (y_ref, s_ref)), dx_ref = loss_and_grad(bn)(
        *(jax.device_put(a, jax.local_devices()[0]) for a in (x, mask, w)))

    mesh = Mesh(np.array(jax.devices()), ("d",))
    sharding = NamedSharding(mesh, P("d"))
    local = slice(pid * ROWS, (pid + 1) * ROWS)
    glob = [jax.make_array_from_process_local_data(sharding, a[local]) for a in (x, mask, w)]
    synced = jax.shard_map(lambda x, m: bn(x, m, axis_name="d"), mesh=mesh,
                           in_specs=(P("d"), P("d")), out_specs=(P("d"), P()))
    (_, (y, s)), dx = loss_and_grad(synced)(*glob)

    def mine(a):  # this process's rows of a globally sharded result
        (shard,) = a.addressable_shards
        return np.asarray(shard.data)

    err = 0.0
    for got, ref in ((mine(y), np.asarray(y_ref)[local]), (mine(dx), np.asarray(dx_ref)[local]),
                     (np.asarray(s.mean.addressable_data(0)), np.asarray(s_ref.mean)),
                     (np.asarray(s.var.addressable_data(0)), np.asarray(s_ref.var))):
        err = max(err, float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-30)))
    assert int(s.count.addressable_data(0)) == int(s_ref.count) == 1
    assert err < 1e-5, err
    print(f"OK {err:.3g}", flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    # Only when run as the worker: pytest imports this file too (--doctest-modules), and
    # these settings there would take the suite's 8 forced host devices away.
    os.environ["XLA_FLAGS"] = ""  # one CPU device per process, set before JAX starts one
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_platforms", "cpu")
    main(*(int(a) for a in sys.argv[1:4]))
