"""The notes' claims about normalization, reproduced on real data: ``python -m jnorm.experiments``.

Eight experiments (one module each) share one small vmapped, jit-compiled SGD loop
(:mod:`jnorm.experiments.training`) and write one PNG each, ``report.md`` and ``results.json``.

Example (tiny sizes; the CLI's ``--quick`` is ``scale="quick"``)::

    from jnorm.experiments import Context, load_dataset, run_suite
    ctx = Context(load_dataset(), "out", scale="quick", seeds=(0,))
    results = run_suite(ctx, ["naive"])
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import ModuleType

from tqdm import tqdm

from . import (
    init_scale,
    learning_rate,
    naive,
    noise,
    normalizes,
    running_stats,
    scale_invariance,
    smoothness,
)
from .common import Claim, Context, ExperimentResult
from .data import Dataset, load_dataset
from .report import write_report
from .training import TrainResult, train

__all__ = ["EXPERIMENTS", "Claim", "Context", "Dataset", "ExperimentResult", "TrainResult",
           "load_dataset", "run_suite", "train", "write_report"]

#: The experiments in report order, by ``--only`` name.
EXPERIMENTS: dict[str, ModuleType] = {m.NAME: m for m in (
    normalizes, learning_rate, scale_invariance, naive, smoothness, init_scale, noise,
    running_stats)}


def run_suite(ctx: Context, names: Sequence[str] | None = None,
              report: bool = True) -> list[ExperimentResult]:
    """Runs the named experiments (all by default) and, if ``report``, writes the report.

    Raises:
      ValueError: for an unknown experiment name (the message lists the known ones).
    """
    names = list(EXPERIMENTS) if not names else list(names)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"unknown experiment(s) {unknown}; choose from {list(EXPERIMENTS)}")
    t0 = time.perf_counter()
    results = []
    bar = tqdm(names, desc="experiments", disable=not ctx.progress)
    for name in bar:
        bar.set_postfix_str(name)
        results.append(EXPERIMENTS[name].run(ctx))
    if report:
        write_report(results, ctx, time.perf_counter() - t0)
    return results
