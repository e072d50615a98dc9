"""Writes ``report.md`` (figures, tables, verdicts) and ``results.json`` (every number).

Both files are rewritten after every finished experiment from the entries of ``results.json``,
so an interrupted run keeps what finished, and ``--only`` replaces its own entries and keeps the
others (entries of another dataset, size or seed list are dropped with their figures).
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import jax

from .common import VERDICTS, Claim, Context, ExperimentResult, md_table, to_jsonable

__all__ = ["environment", "load_entries", "record", "render", "write_report"]

RESULTS = "results.json"
REPORT = "report.md"


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


def run_key(ctx: Context) -> dict[str, Any]:
    """What must agree for two entries to share one report."""
    return {"dataset": ctx.data.describe(), "scale": ctx.scale, "seeds": list(ctx.seeds)}


def record(r: ExperimentResult, ctx: Context) -> dict[str, Any]:
    """One experiment's JSON entry."""
    return to_jsonable({
        "title": r.title, "method": r.method, "figure": r.figure, "table": r.table,
        "seconds": r.seconds, "claims": [c.to_json() for c in r.claims],
        "numbers": r.numbers, "run": {**run_key(ctx), "chance": ctx.chance,
                                      "valid_bar": ctx.valid_bar}})


def load_entries(ctx: Context, known: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The entries of an existing ``results.json`` that match this run's dataset, size and
    seeds, and the names of those dropped."""
    path = ctx.out / RESULTS
    if not path.is_file():
        return {}, []
    try:
        old = json.loads(path.read_text()).get("experiments", {})
    except (ValueError, OSError, AttributeError):
        return {}, []
    key = run_key(ctx)
    keep = {n: e for n, e in old.items() if n in known and isinstance(e, dict)
            and e.get("run", {}) .get("dataset") == key["dataset"]
            and e["run"].get("scale") == key["scale"] and e["run"].get("seeds") == key["seeds"]}
    return keep, sorted(set(old) - set(keep))


def write_report(entries: dict[str, Any], ctx: Context, order: list[str],
                 seconds: float) -> Path:
    """Writes ``results.json`` and ``report.md`` from ``entries`` (name → :func:`record`),
    deletes figures of known experiments that no entry uses; returns the report path."""
    out = ctx.out
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in order if n in entries]
    claims = [c for n in names for c in entries[n]["claims"]]
    counts = {v: sum(c["verdict"] == v for c in claims) for v in VERDICTS}
    meta = {**run_key(ctx), "chance": ctx.chance, "valid_bar": ctx.valid_bar,
            "seconds_this_invocation": seconds,
            "seconds_all_entries": sum(entries[n]["seconds"] for n in names),
            "claims_total": len(claims), "verdicts": counts, **environment()}
    payload = {"meta": meta, "experiments": {n: entries[n] for n in names}}
    tmp = out / (RESULTS + ".tmp")
    tmp.write_text(json.dumps(to_jsonable(payload), indent=1))
    tmp.replace(out / RESULTS)
    used = {entries[n]["figure"] for n in names}
    for n in order:
        png = out / f"{n}.png"
        if png.name not in used and png.exists():
            png.unlink()
    path = out / REPORT
    tmp = out / (REPORT + ".tmp")
    tmp.write_text(render(payload, ctx))
    tmp.replace(path)
    return path


def render(payload: dict[str, Any], ctx: Context) -> str:
    """The markdown report of a ``results.json`` payload."""
    meta, exps = payload["meta"], payload["experiments"]
    counts = meta["verdicts"]
    names = list(exps)
    lines = [
        "# jnorm experiments: claims about normalization, measured",
        "",
        f"*Dataset:* {meta['dataset']}. *Size:* `{meta['scale']}`; *seeds:* {meta['seeds']}; "
        f"*device:* {meta['device']}; jax {meta['jax']}, flax {meta['flax']}, jnorm "
        f"{meta['jnorm']}; wall time of the experiments below "
        f"{meta['seconds_all_entries']:.0f} s.",
        "",
        "Each claim is stated with its source (a paper you can open, or the jnorm docs). Every "
        "verdict is computed from the measured numbers with the criterion next to it, fixed "
        "before running and the same at every size:",
        "",
        f"* **Validity guard.** A claim about training counts only if the best variant of its "
        f"comparison learned: test accuracy ≥ {meta['valid_bar']:.3f}, halfway from chance "
        f"({meta['chance']:.3f}, the most frequent test class) to 1. Otherwise the verdict is "
        "*inconclusive*.",
        "* **Margins from the seed spread.** A difference counts only if it exceeds "
        "max(floor, 2 × its combined standard error over seeds); the floor is stated per "
        "claim. A claim that two things agree holds only if the difference ± 2 SE lies "
        "within the floor; a difference lost in the seed spread makes it *inconclusive*, "
        "not reproduced. Spreads are sample standard deviations over seeds; a single seed "
        "has no spread, and then only the floor applies (shown as \"1 seed\").",
        "",
        "A claim that does not reproduce is reported as such. All numbers are in "
        "`results.json`." + (
            " This is a reduced-size run (`--quick`): use the default size for numbers worth "
            "quoting." if meta["scale"] != "full" else ""),
        "",
        f"## Summary: {counts['reproduced']} reproduced, {counts['not reproduced']} not "
        f"reproduced, {counts['inconclusive']} inconclusive (of {meta['claims_total']})",
        "",
        md_table(["#", "experiment", "claim", "verdict"],
                 [[i + 1, f"[{exps[n]['title']}](#{i + 1}-{_anchor(exps[n]['title'])})",
                   c["claim"], f"**{c['verdict']}**"]
                  for i, n in enumerate(names) for c in exps[n]["claims"]]),
        "",
    ]
    for i, n in enumerate(names):
        r = exps[n]
        lines += [f"## {i + 1}. {r['title']}", "", r["method"], "",
                  f"![{r['title']}]({r['figure']})", "", r["table"], "", "**Verdicts**", ""]
        for cj in r["claims"]:
            c = Claim.from_json(cj)
            lines += [f"- **{c.verdict}** — {c.claim}" + (f" *Source:* {c.source}"
                                                          if c.source else "") + "  ",
                      f"  *criterion:* {c.criterion}  ",
                      f"  *measured:* {c.measured}" + ("  " if c.inconclusive else "")]
            if c.inconclusive:
                lines += [f"  *inconclusive because* {c.inconclusive}"]
        lines += ["", f"*({r['seconds']:.1f} s)*", ""]
    return "\n".join(lines)


def _anchor(title: str) -> str:
    """GitHub's heading anchor (lower case, punctuation dropped, spaces → dashes)."""
    keep = "".join(ch for ch in title.lower() if ch.isalnum() or ch in " -")
    return keep.replace(" ", "-")
