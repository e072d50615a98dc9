"""Writes ``report.md`` (figures, tables, verdicts) and ``results.json`` (every number).

Both files are rewritten after every finished experiment from the entries of ``results.json``,
so an interrupted run keeps what finished. Nothing of an earlier run is lost silently
(:func:`load_entries`): a run limited to some experiments (``--only``) replaces their entries and
keeps the others, provided the earlier run used the same settings (dataset, size, seeds); any
other run into a folder holding results (a full run, or other settings) stops with
:class:`ResultsConflict` before training, unless asked to overwrite.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import jax

from .common import RULE, VERDICTS, Claim, Context, ExperimentResult, md_table, to_jsonable

__all__ = ["ResultsConflict", "environment", "load_entries", "previous_results", "record",
           "render", "write_report"]

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


class ResultsConflict(ValueError):
    """The output folder holds results that this run would replace or mix with others; the
    message (one line) names what differs and how to proceed."""


#: The settings that must agree for results to share one report, with the option that sets each.
SETTINGS = {"dataset": "--data", "scale": "--quick", "seeds": "--seeds"}


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


def previous_results(out: Path, known: list[str]) -> list[str]:
    """The names of the files in ``out`` that a run writes: ``results.json``, ``report.md``
    and the figures of the ``known`` experiments."""
    names = [RESULTS, REPORT] + [f"{n}.png" for n in known]
    return [n for n in names if (out / n).exists()]


def _setting(key: str, value: Any) -> str:
    if key == "seeds" and isinstance(value, list):
        return f"{len(value)} seed{'' if len(value) == 1 else 's'} {value}"
    return str(value)


def load_entries(ctx: Context, known: list[str], *, only: bool = False,
                 overwrite: bool = False) -> dict[str, Any]:
    """The entries of an earlier run in ``ctx.out`` to keep in this run's report.

    With ``overwrite`` or an empty folder: none. A run of some experiments (``only``) merges
    into an earlier ``results.json`` with the same settings (:data:`SETTINGS`): all its
    entries are returned, and this run replaces those it reruns.

    Raises:
      ResultsConflict: (before anything is trained or written) when ``ctx.out`` holds results
        that this run would replace or could not merge with: a run of all experiments, other
        settings, or files without a readable ``results.json``.
    """
    out = ctx.out
    found = previous_results(out, known)
    if overwrite or not found:
        return {}
    what = ", ".join(found if len(found) <= 4 else [*found[:3], f"{len(found) - 3} more"])
    fix = "pass --overwrite to replace them, or choose another --out"
    if not only:
        raise ResultsConflict(
            f"--out {out} holds the results of an earlier run ({what}) that this run of every "
            f"experiment would replace; rerun some experiments into it with --only NAME, {fix}")
    path = out / RESULTS
    try:
        exps = json.loads(path.read_text())["experiments"]
    except FileNotFoundError:
        raise ResultsConflict(f"--out {out} holds {what} but no {RESULTS} to merge into; "
                              f"{fix}") from None
    except (ValueError, OSError, KeyError, TypeError) as e:
        raise ResultsConflict(f"--out {out}: its {RESULTS} cannot be read to merge into "
                              f"({type(e).__name__}); {fix}") from None
    if not isinstance(exps, dict) or not all(isinstance(e, dict) for e in exps.values()):
        raise ResultsConflict(f"--out {out}: its {RESULTS} is not a jnorm results file; {fix}")
    key = run_key(ctx)
    diffs: dict[str, tuple[str, str]] = {}
    for e in exps.values():
        run = e.get("run", {}) if isinstance(e.get("run"), dict) else {}
        for k in SETTINGS:
            if run.get(k) != key[k] and k not in diffs:
                diffs[k] = (f"{k}: {_setting(k, run.get(k))} there, {_setting(k, key[k])} "
                            "here", _same(k, run.get(k)))
    if diffs:
        raise ResultsConflict(
            f"--out {out} holds results with other settings "
            f"({'; '.join(d for d, _ in diffs.values())}); --only merges only into results "
            f"with the same settings: rerun {' and '.join(h for _, h in diffs.values())}, "
            f"{fix}")
    return dict(exps)


def _same(key: str, there: Any) -> str:
    """How to repeat the earlier run's value of setting ``key`` on the command line."""
    if key == "scale":
        return ("with --quick" if there == "quick" else "without --quick" if there == "full"
                else f"at scale {there!r}")
    if key == "seeds":
        if isinstance(there, list) and there == list(range(len(there))):
            return f"with --seeds {len(there)}"
        return f"with the seeds {there}"
    if isinstance(there, str) and there.startswith("digits:"):
        return "without --data"
    return f"with the --data file of that run ({there})"


def write_report(entries: dict[str, Any], ctx: Context, order: list[str],
                 seconds: float, prune: bool = False) -> Path:
    """Writes ``results.json`` and ``report.md`` from ``entries`` (name → :func:`record`;
    entries of experiments not in ``order`` follow the others); with ``prune`` (an overwriting
    run) deletes the figures of experiments in ``order`` that no entry uses. Returns the
    report path."""
    out = ctx.out
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in order if n in entries] + [n for n in entries if n not in order]
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
    for n in order if prune else ():
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
        "* **Margins from the seed spread.** A difference counts only if it exceeds the "
        "margin, max(floor, 2 × its combined standard error (SE) over seeds); the floor is "
        "stated per claim. Spreads are sample standard deviations over seeds; a single seed "
        "has no spread, and then only the floor applies (shown as \"1 seed\").",
        f"* **Three verdicts, the same rule both ways.** {RULE} A difference lost in the seed "
        "spread is never counted as a failure to reproduce: more seeds would decide it.",
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
