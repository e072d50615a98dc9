"""Writes ``report.md`` (figures, tables, verdicts) and ``results.json`` (every number)."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import jax

from .common import Context, ExperimentResult, md_table, to_jsonable

__all__ = ["environment", "write_report"]


def environment() -> dict[str, Any]:
    """Versions and device, for the report header."""
    import flax
    import optax

    import jnorm

    dev = jax.devices()[0]
    kind = dev.platform if dev.device_kind == dev.platform else f"{dev.platform}: {dev.device_kind}"
    return {"jnorm": getattr(jnorm, "__version__", "?"), "jax": jax.__version__,
            "flax": flax.__version__, "optax": optax.__version__,
            "python": platform.python_version(), "device": kind,
            "device_count": jax.device_count()}


def write_report(results: list[ExperimentResult], ctx: Context, seconds: float) -> Path:
    """Writes ``ctx.out/report.md`` and ``ctx.out/results.json``; returns the report path."""
    out = ctx.out
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    n_claims = sum(len(r.claims) for r in results)
    n_ok = sum(c.holds for r in results for c in r.claims)
    meta = {"dataset": ctx.data.describe(), "scale": ctx.scale, "seeds": list(ctx.seeds),
            "seconds": seconds, "claims_reproduced": n_ok, "claims_total": n_claims, **env}
    payload = {"meta": meta, "experiments": {
        r.name: {"title": r.title, "figure": r.figure, "seconds": r.seconds,
                 "claims": [c.to_json() for c in r.claims], "numbers": r.numbers}
        for r in results}}
    (out / "results.json").write_text(json.dumps(to_jsonable(payload), indent=1))

    lines = [
        "# jnorm experiments: the notes' claims, measured",
        "",
        f"*Dataset:* {ctx.data.describe()}. *Size:* `{ctx.scale}`; *seeds:* "
        f"{list(ctx.seeds)}; *device:* {env['device']}; jax {env['jax']}, flax "
        f"{env['flax']}, jnorm {env['jnorm']}; wall time {seconds:.0f} s.",
        "",
        "Every verdict below is computed from the measured numbers with the criterion stated "
        "next to it (fixed before running); a claim that does not reproduce is reported as "
        "such. All numbers are in `results.json`." + (
            " This is a reduced `--quick` run (few epochs): use the default size for the "
            "numbers worth quoting." if ctx.scale != "full" else ""),
        "",
        f"## Summary: {n_ok} of {n_claims} claims reproduced",
        "",
        md_table(["#", "experiment", "claim", "verdict"],
                 [[i + 1, f"[{r.title}](#{i + 1}-{_anchor(r.title)})", c.claim,
                   f"**{c.verdict}**"]
                  for i, r in enumerate(results) for c in r.claims]),
        "",
    ]
    for i, r in enumerate(results):
        lines += [f"## {i + 1}. {r.title}", "", r.method, "", f"![{r.title}]({r.figure})", "",
                  r.table, "", "**Verdicts**", ""]
        for c in r.claims:
            lines += [f"- **{c.verdict}** — {c.claim}  ",
                      f"  *criterion:* {c.criterion}  ",
                      f"  *measured:* {c.measured}"]
        lines += ["", f"*({r.seconds:.1f} s)*", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _anchor(title: str) -> str:
    """GitHub's heading anchor (lower case, punctuation dropped, spaces → dashes)."""
    keep = "".join(ch for ch in title.lower() if ch.isalnum() or ch in " -")
    return keep.replace(" ", "-")
