"""``python -m jnorm.experiments`` (console script ``jnorm-experiments``)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

__all__ = ["main"]

#: Measured wall times (see README, "Experiments"), quoted in ``--help``.
TIMES = ("about 4.3 CPU minutes at the default size and under 2 with --quick; on a 2-core "
         "machine shared with other jobs, 10.5 and 5.5 minutes of wall time (measured; see the "
         "README)")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        self.exit(2, f"error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    from . import EXPERIMENTS

    p = _Parser(
        prog="python -m jnorm.experiments",
        description="Measure claims about normalization (from the batch-norm, group-norm, "
                    "batch-renorm and whitening papers and the jnorm docs) on real data "
                    "(default: scikit-learn's 8x8 digits) and write report.md, results.json and "
                    f"one PNG per experiment. Run time: {TIMES}.")
    p.add_argument("--out", default="jnorm-results",
                   help="output folder (default: %(default)s). The report is rewritten after "
                        "each experiment. Earlier results there are never replaced silently: "
                        "--only merges into them when they have the same settings (--data, "
                        "--quick, --seeds); a run of every experiment, or one with other "
                        "settings, stops with an error before training unless --overwrite")
    p.add_argument("--quick", action="store_true", help="reduced sizes (CI)")
    p.add_argument("--only", action="append", metavar="NAME",
                   help=f"run only this experiment (repeatable or comma-separated), merging "
                        f"into the report in --out (its other experiments are kept): "
                        f"{', '.join(EXPERIMENTS)}")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results already in --out (report.md, results.json, "
                        "figures) instead of refusing")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds per configuration, reported as mean ± sample std (default 3; "
                        "2 with --quick)")
    p.add_argument("--data", default=None, metavar="FILE.npz",
                   help="use images/labels (or x_train/y_train/x_test/y_test) from a .npz "
                        "instead of the digits; labels are any integers, at least 2 classes")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    return p


def _check_out(out: Path) -> str | None:
    """Why ``out`` cannot receive the report, or None."""
    if out.exists() and not out.is_dir():
        return f"--out {out}: exists and is not a folder"
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as e:
        return f"--out {out}: cannot write there ({e.strerror or e})"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code. Every input is checked before any training:
    a bad one ends with a one-line ``error: ...`` and exit code 2."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a malformed option (2, one line printed)
        return int(e.code or 0)
    from . import EXPERIMENTS

    if args.list:
        for name, mod in EXPERIMENTS.items():
            print(f"{name:18s} {mod.TITLE}")
        return 0

    def fail(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    names = [n.strip() for o in (args.only or []) for n in o.split(",") if n.strip()]
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        return fail(f"--only: unknown experiment(s) {unknown}; choose from {list(EXPERIMENTS)}")
    if args.only is not None and not names:
        return fail("--only: no experiment named")
    seeds = args.seeds if args.seeds is not None else (2 if args.quick else 3)
    if not 1 <= seeds <= 50:
        return fail(f"--seeds must be between 1 and 50; got {seeds}")
    out = Path(args.out)
    problem = _check_out(out)
    if problem:
        return fail(problem)

    from . import Context, load_dataset, run_suite
    from .common import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, VERDICTS
    from .data import DataError
    from .report import ResultsConflict, load_entries

    try:
        data = load_dataset(args.data)
    except DataError as e:
        return fail(f"--data {e}")
    import jax

    ctx = Context(data, out, scale="quick" if args.quick else "full",
                  seeds=tuple(range(seeds)), progress=not args.no_progress)
    try:  # before any training: would this run lose or mix with results already in --out?
        load_entries(ctx, list(EXPERIMENTS), only=bool(names), overwrite=args.overwrite)
    except ResultsConflict as e:
        return fail(str(e))
    print(f"{data.describe()}; device {jax.devices()[0].platform}; "
          f"{'quick' if args.quick else 'full'} run, {seeds} seed(s)", flush=True)
    t0 = time.perf_counter()
    try:
        results = run_suite(ctx, names or None, overwrite=args.overwrite)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {out.resolve() / 'report.md'} holds the experiments that "
              "finished", file=sys.stderr)
        return 130
    claims = [c for r in results for c in r.claims]
    counts = {v: sum(c.verdict == v for c in claims) for v in VERDICTS}
    print(f"{len(claims)} claims: {counts[REPRODUCED]} reproduced, "
          f"{counts[NOT_REPRODUCED]} not reproduced, {counts[INCONCLUSIVE]} inconclusive, "
          f"in {time.perf_counter() - t0:.0f} s; report: {out.resolve() / 'report.md'} "
          "(results.json and PNGs alongside)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
