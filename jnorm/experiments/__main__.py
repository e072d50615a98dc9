"""``python -m jnorm.experiments`` (console script ``jnorm-experiments``)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from . import EXPERIMENTS

    p = argparse.ArgumentParser(
        prog="python -m jnorm.experiments",
        description="Reproduce the normalization notes' claims on real data (default: "
                    "scikit-learn's digits) and write PNGs, report.md and results.json.")
    p.add_argument("--out", default="jnorm-results", help="output folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="reduced sizes for CI (< 2 minutes on 2 CPU cores)")
    p.add_argument("--only", action="append", metavar="NAME",
                   help=f"run only this experiment (repeatable or comma-separated): "
                        f"{', '.join(EXPERIMENTS)}")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds per configuration, reported as mean ± std (default 3; 2 with "
                        "--quick)")
    p.add_argument("--data", default=None, metavar="FILE.npz",
                   help="use images/labels (or x_train/y_train/x_test/y_test) from a .npz "
                        "instead of the digits")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    from . import EXPERIMENTS, Context, load_dataset, run_suite

    if args.list:
        for name, mod in EXPERIMENTS.items():
            print(f"{name:18s} {mod.TITLE}")
        return 0
    names = [n.strip() for o in (args.only or []) for n in o.split(",") if n.strip()]
    seeds = args.seeds if args.seeds is not None else (2 if args.quick else 3)
    if seeds < 1:
        print("--seeds must be at least 1", file=sys.stderr)
        return 2
    import jax

    data = load_dataset(args.data)
    ctx = Context(data, args.out, scale="quick" if args.quick else "full",
                  seeds=tuple(range(seeds)), progress=not args.no_progress)
    print(f"{data.describe()}; device {jax.devices()[0].platform}; "
          f"{'quick' if args.quick else 'full'} run, {seeds} seed(s)", flush=True)
    t0 = time.perf_counter()
    try:
        results = run_suite(ctx, names or None)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = sum(len(r.claims) for r in results)
    ok = sum(c.holds for r in results for c in r.claims)
    print(f"{ok}/{n} claims reproduced in {time.perf_counter() - t0:.0f} s; report: "
          f"{ctx.out.resolve() / 'report.md'} (results.json and PNGs alongside)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
