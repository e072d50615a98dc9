"""Shared types of the experiment suite: the run context, claims with verdicts, results, and the
two rules every verdict follows.

* **Validity guard.** A claim about training counts only if the best variant of its experiment
  *learned*: test accuracy at least halfway from chance (the most frequent test class) to 1,
  see :attr:`Context.valid_bar`. Otherwise the verdict is ``"inconclusive"``.
* **Margins from the seed spread.** A difference between two variants counts only if it exceeds
  ``max(floor, 2 × combined standard error)`` over seeds (:func:`compare`); the floor is fixed
  per experiment before running and is the same at every size. With one seed there is no spread
  and only the floor applies (the report says "1 seed, no spread").
* **Three verdicts, the same rule both ways** (:data:`RULE`, :class:`Comparison`): a claimed
  difference is reproduced when it clears the margin in the claimed direction, not reproduced
  when it clears it the other way or is bounded below the floor, and inconclusive otherwise; a
  claimed agreement mirrors it. :class:`Outcome` carries the verdict into a :class:`Claim`
  (:meth:`Claim.from_outcome`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np

from .data import Dataset

__all__ = ["RULE", "SCALES", "VERDICTS", "Claim", "Comparison", "Context", "ExperimentResult",
           "Outcome", "compare", "fmt", "fmt_seeds", "mean_std", "seed_count", "seed_note"]

#: Run sizes: ``tiny`` (unit tests), ``quick`` (CI, ≤ 3 min for the suite), ``full`` (default).
SCALES = ("tiny", "quick", "full")

T = TypeVar("T")

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)


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

    @property
    def chance(self) -> float:
        """Accuracy of always predicting the most frequent test class."""
        return self.data.chance

    @property
    def valid_bar(self) -> float:
        """Test accuracy the best variant must reach for a training claim to count: halfway
        from chance to 1."""
        return self.chance + 0.5 * (1.0 - self.chance)

    def pick(self, tiny: T, quick: T, full: T) -> T:
        """The value for this run's scale."""
        return {"tiny": tiny, "quick": quick, "full": full}[self.scale]

    def guard(self, claim: Claim, best_acc: float, what: str = "best variant") -> Claim:
        """Marks ``claim`` inconclusive unless ``best_acc`` reaches :attr:`valid_bar`."""
        if not best_acc >= self.valid_bar:
            claim.inconclusive = (f"the {what} reached test accuracy {best_acc:.3f}, below the "
                                  f"validity bar {self.valid_bar:.3f} (halfway from chance "
                                  f"{self.chance:.3f} to 1): nothing was learned to compare")
        return claim


@dataclasses.dataclass
class Claim:
    """One claim, its source, the criterion fixed before running, what was measured, the
    verdict."""

    claim: str
    criterion: str
    measured: str
    holds: bool
    source: str = ""
    inconclusive: str | None = None  # why the verdict is "inconclusive"

    def __post_init__(self) -> None:
        self.holds = bool(self.holds)

    @property
    def verdict(self) -> str:
        """``"reproduced"``, ``"not reproduced"`` or ``"inconclusive"``."""
        if self.inconclusive:
            return INCONCLUSIVE
        return REPRODUCED if self.holds else NOT_REPRODUCED

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {"claim": self.claim, "source": self.source, "criterion": self.criterion,
                "measured": self.measured, "holds": self.holds,
                "inconclusive": self.inconclusive, "verdict": self.verdict}

    @classmethod
    def from_outcome(cls, claim: str, criterion: str, measured: str, outcome: Outcome,
                     source: str = "") -> Claim:
        """A claim whose verdict is ``outcome`` (from :meth:`Comparison.beats`,
        :meth:`~Comparison.agrees`, :meth:`~Comparison.not_greater`, or their
        :meth:`Outcome.all_of` / :meth:`Outcome.any_of`)."""
        return cls(claim, criterion, measured, outcome.holds, source, outcome.undecided)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Claim:
        """Inverse of :meth:`to_json`."""
        return cls(d["claim"], d["criterion"], d["measured"], d["holds"], d.get("source", ""),
                   d.get("inconclusive"))


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


def seed_count(ctx: Context) -> str:
    """``"3 seeds"`` or ``"1 seed"``."""
    n = len(ctx.seeds)
    return f"{n} seed" + ("" if n == 1 else "s")


def seed_note(ctx: Context) -> str:
    """``"mean ± std over 3 seeds"`` or ``"1 seed, no spread"``."""
    n = len(ctx.seeds)
    return "1 seed, no spread" if n == 1 else f"mean ± std over {n} seeds"


def mean_std(a: Any, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample standard deviation (ddof 1; 0 for a single seed) over the seed axis."""
    a = np.asarray(a, np.float64)
    n = a.shape[axis]
    return a.mean(axis), (a.std(axis, ddof=1) if n > 1 else np.zeros_like(a.mean(axis)))


def fmt(mean: float, std: float | None = None, digits: int = 3, n: int | None = None) -> str:
    """``"0.973 ± 0.004"``; just the mean when ``std`` is None; ``"0.973 (1 seed)"`` when
    ``n == 1`` (no spread to show)."""
    if std is None:
        return f"{mean:.{digits}f}"
    if n == 1:
        return f"{mean:.{digits}f} (1 seed)"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_seeds(values: Any, digits: int = 3) -> str:
    """Mean ± sample std of per-seed ``values``, or ``"x (1 seed)"``."""
    v = np.asarray(values, np.float64).reshape(-1)
    m, s = mean_std(v)
    return fmt(float(m), float(s), digits, n=len(v))


class Outcome(NamedTuple):
    """A three-way verdict on one comparison: ``holds`` (shown), or refuted (``holds`` False,
    ``undecided`` None), or undecided (``holds`` False, ``undecided`` says why). Pass both
    fields on to :class:`Claim` (``Claim(..., *outcome)`` or ``holds=o.holds,
    inconclusive=o.undecided``)."""

    holds: bool
    undecided: str | None = None

    @property
    def verdict(self) -> str:
        """``"reproduced"``, ``"not reproduced"`` or ``"inconclusive"``."""
        return REPRODUCED if self.holds else INCONCLUSIVE if self.undecided else NOT_REPRODUCED

    @staticmethod
    def all_of(*outcomes: Outcome) -> Outcome:
        """A conjunction: shown if every part is shown, refuted if any part is refuted,
        otherwise undecided (the reasons of the undecided parts, joined)."""
        if all(o.holds for o in outcomes):
            return Outcome(True)
        if any(not o.holds and o.undecided is None for o in outcomes):
            return Outcome(False)
        return Outcome(False, "; ".join(o.undecided for o in outcomes if o.undecided))

    @staticmethod
    def any_of(*outcomes: Outcome, none: str = "nothing to compare") -> Outcome:
        """A disjunction ("at some setting ..."): shown if any part is shown, refuted if every
        part is refuted, otherwise undecided; with no parts, undecided because of ``none``."""
        if not outcomes:
            return Outcome(False, none)
        if any(o.holds for o in outcomes):
            return Outcome(True)
        if all(o.undecided is None for o in outcomes):
            return Outcome(False)
        return Outcome(False, "; ".join(o.undecided for o in outcomes if o.undecided))


#: The verdict rule for comparisons, as the report states it.
RULE = ("A claim that one setting beats another is reproduced when the difference exceeds the "
        "margin in the claimed direction; it is not reproduced when the difference exceeds the "
        "margin the other way, or when diff + 2 SE stays within the floor (the effect is shown "
        "to be smaller than the smallest difference the claim counts); otherwise the seeds "
        "cannot tell and it is *inconclusive*. A claim that two settings agree is the mirror "
        "image: reproduced when diff ± 2 SE lies within the floor, not reproduced when the "
        "difference exceeds the margin, inconclusive in between.")


@dataclasses.dataclass
class Comparison:
    """``a − b`` over seeds with its margin ``max(floor, 2·combined standard error)``.

    Every claim about a comparison gets a three-way verdict from one of three methods, all
    returning an :class:`Outcome` with the same rule (:data:`RULE`), where ``bound`` is the
    interval ``diff ± 2 SE`` (the floor alone with one seed):

    ============================ ======================== ============================ =========
    claim                        reproduced               not reproduced               otherwise
    ============================ ======================== ============================ =========
    :meth:`beats`: a > b          diff > margin            diff < −margin, or           undecided
                                                           diff + 2 SE ≤ floor
    :meth:`agrees`: a ≈ b         |diff| + 2 SE ≤ floor    |diff| > margin              undecided
    :meth:`not_greater`: a ≤ b    diff + 2 SE ≤ floor      diff > margin                undecided
    ============================ ======================== ============================ =========

    For "a is lower than b", compare ``b`` with ``a`` and use :meth:`beats`. A difference lost
    in the seed spread is neither shown nor refuted: more seeds would decide it. The
    properties :attr:`greater`, :attr:`less` and :attr:`within` are the raw tests against the
    margin, not verdicts.
    """

    diff: float
    margin: float
    se: float | None  # None with one seed per side
    floor: float

    @property
    def greater(self) -> bool:
        """``a`` exceeds ``b`` by more than the margin."""
        return self.diff > self.margin

    @property
    def less(self) -> bool:
        """``a`` is below ``b`` by more than the margin."""
        return self.diff < -self.margin

    @property
    def within(self) -> bool:
        """``|a − b|`` is at most the margin."""
        return abs(self.diff) <= self.margin

    @property
    def _two_se(self) -> float:
        return 0.0 if self.se is None else 2 * self.se

    def _undecided(self, shown: str, bound: float, digits: int = 3) -> str:
        return (f"undecided: the difference {self.diff:+.{digits}f} lies within the margin "
                f"{self.margin:.{digits}f}, and {shown} {bound:+.{digits + 1}f} is beyond the "
                f"floor {self.floor:g}, so the seeds can neither show the claim nor refute it "
                "(more seeds would)")

    def beats(self) -> Outcome:
        """The claim ``a > b`` (by more than the floor): shown if ``diff > margin``; refuted
        if ``diff < −margin`` or ``diff + 2 SE ≤ floor``; otherwise undecided."""
        if self.greater:
            return Outcome(True)
        bound = self.diff + self._two_se
        if self.less or bound <= self.floor:
            return Outcome(False)
        return Outcome(False, self._undecided("its upper 2-SE bound", bound))

    def agrees(self) -> Outcome:
        """The claim ``|a − b| ≤ floor``: shown if ``|diff| + 2 SE ≤ floor``; refuted if
        ``|diff|`` exceeds the margin; otherwise undecided."""
        bound = abs(self.diff) + self._two_se
        if bound <= self.floor:
            return Outcome(True)
        if not self.within:
            return Outcome(False)
        return Outcome(False, self._undecided("its 2-SE bound", bound))

    def not_greater(self) -> Outcome:
        """The claim ``a − b ≤ floor`` (one-sided): shown if ``diff + 2 SE ≤ floor``; refuted
        if ``diff`` exceeds the margin; otherwise undecided."""
        bound = self.diff + self._two_se
        if bound <= self.floor:
            return Outcome(True)
        if self.greater:
            return Outcome(False)
        return Outcome(False, self._undecided("its upper 2-SE bound", bound))

    def describe(self, digits: int = 3) -> str:
        """``"difference +0.052, margin 0.020 (2 × SE 0.006)"`` or ``"(1 seed, no spread)"``."""
        spread = ("1 seed, no spread: the floor applies" if self.se is None
                  else f"2 × SE {2 * self.se:.{digits}f}, floor applies" if
                  self.margin > 2 * self.se else f"2 × SE {2 * self.se:.{digits}f}")
        return f"difference {self.diff:+.{digits}f}, margin {self.margin:.{digits}f} ({spread})"


def compare(a: Any, b: Any, floor: float) -> Comparison:
    """Compares the seed means of ``a`` and ``b`` (per-seed values).

    The margin is ``max(floor, 2·√(s_a²/n_a + s_b²/n_b))`` with sample standard deviations;
    with a single seed on either side there is no spread and the margin is ``floor``.
    """
    a = np.asarray(a, np.float64).reshape(-1)
    b = np.asarray(b, np.float64).reshape(-1)
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return Comparison(diff, floor, None, floor)
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    if not math.isfinite(se):
        se = math.inf
    return Comparison(diff, max(floor, 2 * se), se, floor)


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
