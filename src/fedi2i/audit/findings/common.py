"""What every part of the findings shares: the study's figures, the two row types, and how an interval decides.

A study status is read from a 95 % interval where the cells carry one; an undecided status reads
"inconclusive". A finding whose cells failed or did not run says "not measured".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from fedi2i.audit.intervals import Interval, Status, joint_status, status_from_interval

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


@dataclass
class Threat:
    threat: str
    exposure: str
    defence: str
    with_defence: str
    verdict: str  # high | medium | low | not measured


@dataclass
class Comparison:
    finding: str
    study: str
    ours: str
    status: str  # reproduced | not reproduced | exceeded | inconclusive | not measured
    # the 95 % intervals that decided the status, by part (centre, or attack and centre): [point, low, high]
    intervals: dict[str, list[float | None]] = field(default_factory=dict)


def ok_results(cells: dict[str, dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v["result"] for k, v in cells.items() if v.get("kind") == kind and v.get("status") == "ok"}


def level(value: float | None, high: float, medium: float) -> str:
    if value is None:
        return "not measured"
    return "high" if value >= high else "medium" if value >= medium else "low"


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
