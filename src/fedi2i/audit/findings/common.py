"""What every part of the findings shares: the study's figures, the two row types, how cells are read, and
how an interval decides.

A study status is read from a 95 % interval where the cells carry one; an undecided status reads
"inconclusive". A threat verdict (high / medium / low) is read from the interval too: where the interval
spans two levels, the verdict names both ("medium to high"). A finding whose cells failed or did not run
says "not measured".

Cells arrive as the stored dicts (``CellStore.all``); ``typed_results`` reads them through the models of
``fedi2i.audit.schema``, so a field that changes name fails there, not as a ``KeyError`` in a finding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

from fedi2i.audit.intervals import Interval, Status, joint_status, status_from_interval
from fedi2i.audit.schema import CellEntry, CellResult, Comparison, Threat

R = TypeVar("R", bound=CellResult)

# The study's findings (J Med Syst 2026;50:108), as stated in its abstract.
STUDY = {
    "dlg_ssim": 0.16, "dlg_psnr": 11.0,
    "fedmia_auc": (0.92, 0.99),
    "secagg_auc": (0.23, 0.56),
}
FEDMIA_METHODS = ("fedmia-loss", "fedmia-grad")
# Largest AUC still read as chance under secure aggregation.
CHANCE_AUC = 0.65
# Run-to-run spread of one training run's unseen MAE: a clean FedAvg run was seen 1.2x worse than runs with
# medium data noise. A ratio of two single runs can be off by that twice (1.2^2 = 1.44), rounded up to 1.5.
SINGLE_RUN_NOISE = 1.5
CONFOUND = ("mostly the centre confound: other centres' slices are told apart by their scanner, "
            "membership aside")
LEVEL_ORDER = ("none", "low", "medium", "high")
VERDICT_ORDER = ("low", "medium", "high")

__all__ = ["CHANCE_AUC", "CONFOUND", "Comparison", "FEDMIA_METHODS", "LEVEL_ORDER", "SINGLE_RUN_NOISE", "STUDY",
           "Threat", "finite", "fmt", "interval_status", "level", "level_of_interval", "parts_dict", "parts_text",
           "signed", "typed_results", "verdict_range"]


def typed_results(cells: dict[str, dict[str, Any]] | dict[str, CellEntry], kind: str, model: type[R]) -> dict[str, R]:
    """The finished cells of one kind, each result read through its schema model (``TrainResult``, ...)."""
    out: dict[str, R] = {}
    for key, raw in cells.items():
        kind_and_status = (raw.kind, raw.status) if isinstance(raw, CellEntry) else (raw.get("kind"), raw.get("status"))
        if kind_and_status != (kind, "ok"):  # only this kind's cells are validated, not every cell each time
            continue
        entry = raw if isinstance(raw, CellEntry) else CellEntry.model_validate({"key": key, "title": key, **raw})
        result = entry.typed()
        assert isinstance(result, model), f"{key}: a {kind} cell read as {type(result).__name__}"
        out[key] = result
    return out


def level(value: float | None, high: float, medium: float) -> str:
    if value is None:
        return "not measured"
    return "high" if value >= high else "medium" if value >= medium else "low"


def verdict_range(low_end: str, high_end: str) -> str:
    """One verdict from the levels at the two ends of an interval: the level itself where they agree, else
    both ("medium to high"), lower first."""
    if "not measured" in (low_end, high_end):
        return "not measured"
    a, b = sorted((low_end, high_end), key=VERDICT_ORDER.index)
    return a if a == b else f"{a} to {b}"


def level_of_interval(interval: Interval | None, high: float, medium: float,
                      at: Callable[[float], str] | None = None) -> str:
    """The exposure level of an interval: ``level`` at each end (or ``at``, any level that rises with the
    number), one level where both ends agree, both where they do not."""
    if interval is None:
        return "not measured"
    read = at or (lambda v: level(v, high, medium))
    return verdict_range(read(interval.low), read(interval.high))


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def fmt(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def signed(v: float) -> str:
    return f"{v + 0.0:+.2f}" if abs(v) >= 0.005 else "+0.00"  # no "-0.00"


def interval_status(parts: dict[str, Interval | None], study_low: float, study_high: float,
                    **sides: Status) -> Status:
    """Every part must support the claim (``joint_status``); a part without an interval decides nothing."""
    return joint_status(status_from_interval(iv, study_low, study_high, **sides) if iv else "inconclusive"
                        for iv in parts.values())


def parts_text(parts: dict[str, Interval | None]) -> str:
    return ", ".join(f"{k} {iv.text()}" if iv else f"{k} (no interval: bootstrap off)" for k, iv in parts.items())


def parts_dict(parts: dict[str, Interval | None]) -> dict[str, list[float | None]]:
    return {k: [iv.point, iv.low, iv.high] for k, iv in parts.items() if iv}
