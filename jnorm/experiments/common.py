"""Shared types of the experiment suite: the run context, claims with verdicts, results."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .data import Dataset

__all__ = ["SCALES", "Claim", "Context", "ExperimentResult", "fmt", "mean_std", "verdict"]

#: Run sizes: ``tiny`` (unit tests), ``quick`` (CI, < 2 min for the suite), ``full`` (default).
SCALES = ("tiny", "quick", "full")

T = TypeVar("T")

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"


@dataclasses.dataclass
class Context:
    """What every experiment receives: data, output folder, size, seeds, progress switch."""

    data: Dataset
    out: Path
    scale: str = "full"
    seeds: tuple[int, ...] = (0, 1, 2)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}; got {self.scale!r}")
        self.out = Path(self.out)
        self.seeds = tuple(int(s) for s in self.seeds)
        if not self.seeds:
            raise ValueError("need at least one seed")

    @property
    def dpi(self) -> float:
        """Figure resolution: low for the ``tiny`` test runs, where nobody looks."""
        return 40.0 if self.scale == "tiny" else 110.0

    def pick(self, tiny: T, quick: T, full: T) -> T:
        """The value for this run's scale."""
        return {"tiny": tiny, "quick": quick, "full": full}[self.scale]


@dataclasses.dataclass
class Claim:
    """One claim of the notes, what was measured, the pre-stated criterion and the verdict."""

    claim: str
    criterion: str
    measured: str
    holds: bool

    @property
    def verdict(self) -> str:
        """``"reproduced"`` or ``"not reproduced"``."""
        return REPRODUCED if self.holds else NOT_REPRODUCED

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {"claim": self.claim, "criterion": self.criterion, "measured": self.measured,
                "holds": bool(self.holds), "verdict": self.verdict}


@dataclasses.dataclass
class ExperimentResult:
    """What one experiment hands to the report: text, a table, claims, a figure, numbers."""

    name: str
    title: str
    method: str
    figure: str
    table: str
    claims: list[Claim]
    numbers: dict[str, Any]
    seconds: float = 0.0


def mean_std(a: Any, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) standard deviation over the seed axis."""
    a = np.asarray(a, np.float64)
    return a.mean(axis), a.std(axis)


def fmt(mean: float, std: float | None = None, digits: int = 3) -> str:
    """``"0.973 ± 0.004"`` (or just the mean when ``std`` is None)."""
    if std is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def verdict(holds: bool) -> str:
    """``"reproduced"`` or ``"not reproduced"``."""
    return REPRODUCED if holds else NOT_REPRODUCED


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured markdown table (``|`` inside cells is escaped)."""
    def cell(c: Any) -> str:
        return str(c).replace("|", "\\|")  # a literal | would split the cell

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def to_jsonable(obj: Any) -> Any:
    """Converts numpy/jax scalars and arrays (recursively) into JSON-able Python values;
    non-finite floats become ``None``."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return to_jsonable(np.asarray(obj).tolist())
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, (bool, int, str)) or obj is None:
        return obj
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    return str(obj)
