"""Synced batch norm across *processes*: two ``jax.distributed`` processes on localhost.

tests/distributed/test_distributed.py checks devices of one process; this runs the multi-host
path -- a coordinator, one CPU device per process, gloo collectives between them -- and checks that
synced batch norm equals batch norm on one device over the whole batch (outputs, input
gradients, running statistics), with one process's rows all masked out. See
tests/distributed/multiprocess_worker.py; docs/distributed.md says how to run the same on a
GPU/TPU slice.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

WORKER = pathlib.Path(__file__).with_name("multiprocess_worker.py")
ROOT = WORKER.parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_synced_batch_norm_equals_single_device():
    port, n = _free_port(), 2
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(port), str(i), str(n)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env, cwd=ROOT) for i in range(n)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"process {i} failed:\n{out[-3000:]}"
        assert out.strip().splitlines()[-1].startswith("OK"), out[-3000:]
