"""What one inversion cell shows, read from its anatomy margin's interval and its objective gap.

The deciding number is the in-mask SSIM margin over other patients' slices (``anatomy.py``), with its 95 %
interval. Two figures place it (measured on the quick preset's heads, docs/inversion.md):

* ``LEAK_MARGIN`` (0.05): below it a reconstruction is no closer to this patient than to another one at the
  same level (an empty image -0.04, another patient's slice -0.09, the atlas -0.03, the truth blurred with
  a 4 px Gaussian +0.02); above it this patient's anatomy shows (the truth blurred with 2 px: +0.10, the
  patient re-identified in 9 of 10 slices);
* ``HIGH_MARGIN`` (0.20): detail, not only the outline (the truth under noise of 0.2: +0.27; exact: +0.43).

A reading is decided only where the interval lies on one side of a figure, and "low" needs more: the search
must have done its job. Where the true batch explains the update ``GAP_FACTOR`` times better than the
reconstruction, the reading is "search-limited: leak not excluded" however small the margin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LEAK_MARGIN = 0.05
HIGH_MARGIN = 0.20
SEARCH_LIMITED = "search-limited: leak not excluded"
LEVELS = ("low", "medium", "high")


def level_at(margin: float) -> str:
    return "high" if margin >= HIGH_MARGIN else "medium" if margin >= LEAK_MARGIN else "low"


@dataclass(frozen=True)
class CellReading:
    """One cell's deciding margin, its interval, the objective gap and what they let us say."""

    key: str
    method: str
    batch: int
    defence: str
    modality: str
    margin: float
    low: float | None  # None: too few patients for an interval
    high: float | None
    gap_ratio: float | None  # truth explains the update this many times better; None: not measured
    gap_large: bool
    reid_top1: float
    reid_chance: float

    @property
    def leak(self) -> bool:
        """This patient's anatomy shows: the whole interval above ``LEAK_MARGIN``."""
        return self.low is not None and self.low >= LEAK_MARGIN

    @property
    def no_leak(self) -> bool:
        """The whole interval below ``LEAK_MARGIN`` (says nothing of the search; see ``verdict``)."""
        return self.high is not None and self.high < LEAK_MARGIN

    @property
    def verdict(self) -> str:
        """high / medium / low, two levels where the interval spans both, "search-limited: ...", or
        "inconclusive" where too few patients give no interval."""
        if not self.leak and (self.gap_large or self.gap_ratio is None):
            return SEARCH_LIMITED
        if self.low is None or self.high is None:
            return "inconclusive"
        a, b = level_at(self.low), level_at(self.high)
        return a if a == b else f"{a} to {b}"

    def interval_text(self) -> str:
        if self.low is None or self.high is None:
            return "no interval: fewer than 3 other patients"
        return f"95% CI {_signed(self.low)} to {_signed(self.high)}"

    def text(self) -> str:
        gap = ("objective gap not measured" if self.gap_ratio is None else
               f"truth explains the update {_times(self.gap_ratio)} better" + (" (search-limited)" if self.gap_large
                                                                               else ""))
        return (f"{self.method}, batch {self.batch}: in-mask {self.modality.upper()} SSIM {_signed(self.margin)} "
                f"over other patients [{self.interval_text()}], own patient nearest in "
                f"{self.reid_top1:.0%} of slices (chance {self.reid_chance:.0%}); {gap}")


def _signed(v: float) -> str:
    return f"{v:+.2f}" if abs(v) >= 0.005 else "+0.00"  # no "-0.00"


def _times(ratio: float) -> str:
    if ratio >= 1e4:
        return f"{ratio:.0e}x".replace("e+0", "e").replace("e+", "e")
    return f"{ratio:.3g}x" if ratio < 100 else f"{ratio:.0f}x"


def read_cell(result: dict[str, Any]) -> CellReading | None:
    """The reading of a cell result; None for a cell scored before the in-mask anatomy score existed."""
    anatomy = result.get("anatomy")
    if not anatomy:
        return None
    deciding = anatomy["deciding"]
    modality = deciding["modality"]
    low, high = deciding.get("ci95") or (None, None)
    gap = result.get("objective_gap") or {}
    reid = anatomy[modality]["reid"]
    ratio = gap.get("ratio")
    return CellReading(str(result.get("key", "")), str(result.get("method")), int(result.get("batch", 0)),
                       str(result.get("defence")), modality, float(deciding["margin"]),
                       None if low is None else float(low), None if high is None else float(high),
                       None if ratio is None else float(ratio), bool(gap.get("large", False)),
                       float(reid["top1"]), float(reid["chance"]))


def most_revealing(readings: list[CellReading]) -> CellReading | None:
    """The cell that shows most: highest interval low end (the strongest evidence of a leak), then margin."""
    return max(readings, key=lambda r: (-1.0 if r.low is None else r.low, r.margin)) if readings else None


def overall(readings: list[CellReading]) -> str:
    """One verdict over several settings: a leak anywhere decides it; "low" needs every setting low."""
    if not readings:
        return "not measured"
    best = most_revealing(readings)
    assert best is not None
    if best.leak:
        return best.verdict
    if any(r.verdict == SEARCH_LIMITED for r in readings):
        return SEARCH_LIMITED
    if all(r.verdict == "low" for r in readings):
        return "low"
    return best.verdict
