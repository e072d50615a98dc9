"""Claims about normalization, measured on real data: ``python -m jnorm.experiments``.

Ten experiments, one module each: nine on 8x8 digits share one small vmapped, jit-compiled SGD
loop (:mod:`jnorm.experiments.training`); ``transformers`` trains a character-level language
model on the Python reference manual. Each writes one PNG, and the suite writes ``report.md``
and ``results.json`` (rewritten after every finished experiment; a run never replaces an
earlier run's results unless asked to, see :func:`run_suite`). The rules every verdict
follows are in :mod:`jnorm.experiments.common`.

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
    beyond_batch_norm,
    init_scale,
    learning_rate,
    naive,
    noise,
    normalizes,
    running_stats,
    scale_invariance,
    smoothness,
    transformers,
)
from .common import Claim, Context, ExperimentResult
from .data import Dataset, load_dataset
from .report import ResultsConflict, load_entries, record, write_report
from .training import TrainResult, train

__all__ = ["EXPERIMENTS", "Claim", "Context", "Dataset", "ExperimentResult", "ResultsConflict",
           "TrainResult", "load_dataset", "run_suite", "train", "write_report"]

#: The experiments in report order, by ``--only`` name.
EXPERIMENTS: dict[str, ModuleType] = {m.NAME: m for m in (
    normalizes, learning_rate, scale_invariance, naive, smoothness, init_scale, noise,
    running_stats, beyond_batch_norm, transformers)}


def run_suite(ctx: Context, names: Sequence[str] | None = None, report: bool = True,
              overwrite: bool = False) -> list[ExperimentResult]:
    """Runs the named experiments (all by default). With ``report``, ``results.json`` and
    ``report.md`` in ``ctx.out`` are rewritten after each experiment finishes.

    Nothing of an earlier run in ``ctx.out`` is lost silently (see
    :func:`jnorm.experiments.report.load_entries`): with ``names``, the earlier run's entries
    are kept and those rerun are replaced, if it used the same dataset, size and seeds; a run
    of every experiment, or one with other settings, into a folder holding results raises
    :class:`~jnorm.experiments.report.ResultsConflict` before training, unless ``overwrite``
    (then the earlier entries and figures are replaced).

    Raises:
      ValueError: for an unknown experiment name (the message lists the known ones).
      ResultsConflict: see above.
    """
    only = bool(names)
    names = list(EXPERIMENTS) if not names else list(dict.fromkeys(names))
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"unknown experiment(s) {unknown}; choose from {list(EXPERIMENTS)}")
    t0 = time.perf_counter()
    order = list(EXPERIMENTS)
    entries: dict = {}
    if report:
        entries = load_entries(ctx, order, only=only, overwrite=overwrite)
    results = []
    bar = tqdm(names, desc="experiments", disable=not ctx.progress)
    for name in bar:
        bar.set_postfix_str(name)
        r = EXPERIMENTS[name].run(ctx)
        results.append(r)
        if report:
            entries[name] = record(r, ctx)
            write_report(entries, ctx, order, time.perf_counter() - t0, prune=overwrite)
    return results
