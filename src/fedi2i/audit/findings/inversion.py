"""Gradient-inversion findings: recovered anatomy read from the in-mask margin's interval and the objective gap.

Each cell carries its deciding number (``fedi2i.attacks.inversion.anatomy``): the in-mask SSIM of the
reconstruction on the true slice minus the same on other patients' slices at that level, with a 95 % interval
clustered by patient; and the objective gap (how many times better the true batch explains the update than
the reconstruction). ``fedi2i.attacks.inversion.judge`` reads one cell; this module reads the threat grid:

* the threat row: a leak in any setting decides the level (the interval's two ends, "medium to high" where it
  spans both); "low" only where every setting's interval is below the leak figure and every search found an
  answer about as good as the truth; a large gap anywhere, with no leak shown, reads "search-limited: leak
  not excluded";
* "DLG recovers only coarse anatomy": reproduced while DLG's interval stays below the detail figure;
* "Stronger inversion than DLG": exceeded when a stronger attack's interval is above the leak figure,
  reproduced when none is and their searches were not limited, inconclusive otherwise.

Cells scored before the in-mask score existed are named and left out ("not measured" if none is left).
"""

from __future__ import annotations

from typing import Any

from fedi2i.attacks.inversion.judge import (HIGH_MARGIN, LEAK_MARGIN, SEARCH_LIMITED, CellReading, most_revealing,
                                            overall, read_cell)
from fedi2i.audit.findings.common import Comparison, Threat, fmt, typed_results
from fedi2i.audit.schema import InversionResult

DEFENCES = {"secagg": "secure aggregation", "dp": "differential privacy"}
OLD = "scored before the in-mask anatomy score (delete their cells/inversion files to recompute them)"


def inversion_rows(cells: dict[str, dict[str, Any]]) -> list[InversionResult]:
    return list(typed_results(cells, "inversion", InversionResult).values())


def _readings(rows: list[InversionResult], defence: str, methods: tuple[str, ...] | None = None,
              exclude: tuple[str, ...] = ()) -> list[CellReading]:
    out = []
    for r in rows:
        if r.defence != defence or (methods and r.method not in methods) or r.method in exclude:
            continue
        reading = read_cell(r.to_dict())
        if reading is not None:
            out.append(reading)
    return out


def _intervals(readings: list[CellReading]) -> dict[str, list[float | None]]:
    return {r.key: [r.margin, r.low, r.high] for r in readings}


def _exposure(readings: list[CellReading]) -> str:
    best = most_revealing(readings)
    if best is None:
        return "not measured"
    limited = sum(r.verdict == SEARCH_LIMITED for r in readings)
    return best.text() + (f"; {limited} of {len(readings)} settings search-limited" if limited
                          else f" ({len(readings)} settings)")


def _strength(readings: list[CellReading]) -> tuple[float, float]:
    """How much the most revealing setting shows: its interval's low end, then its margin."""
    best = most_revealing(readings)
    assert best is not None
    return (-1.0 if best.low is None else best.low, best.margin)


def _interval_status(reading: CellReading, figure: float) -> str:
    """Above the figure with the whole interval: "exceeded"; below: "reproduced"; else "inconclusive"."""
    if reading.low is None or reading.high is None:
        return "inconclusive"
    if reading.low >= figure:
        return "exceeded"
    return "reproduced" if reading.high < figure else "inconclusive"


def inversion_findings(cells: dict[str, dict[str, Any]]) -> tuple[list[Threat], list[Comparison]]:
    """The inversion threat row and the two DLG comparisons."""
    threats: list[Threat] = []
    comps: list[Comparison] = []
    rows = inversion_rows(cells)
    if not rows:
        return threats, comps
    old = [r for r in rows if r.anatomy is None]
    none = _readings(rows, "none")
    threat = "Gradient inversion (curious server reconstructs a centre's images from its update)"
    if not none:
        threats.append(Threat(threat, f"{len(old)} setting(s) {OLD}" if old else "not measured",
                              "secure aggregation", "not measured", "not measured"))
        return threats, comps
    defended = [(d, _readings(rows, d)) for d in DEFENCES]
    defended = [(d, rs) for d, rs in defended if rs]
    if defended:
        # the defence whose most revealing setting shows least
        d, rs = min(defended, key=lambda x: _strength(x[1]))
        with_text, dname = f"{overall(rs)}: {_exposure(rs)}", DEFENCES[d]
        intervals = {**_intervals(none), **_intervals(rs)}
    else:
        with_text, dname, intervals = "not measured", "secure aggregation", _intervals(none)
    exposure = _exposure(none) + (f"; {len(old)} setting(s) {OLD}" if old else "")
    threats.append(Threat(threat, exposure, dname, with_text, overall(none), intervals=intervals))

    dlg = _readings(rows, "none", ("dlg",))
    best_dlg = most_revealing(dlg)
    if best_dlg is not None:
        raw = next((r for r in rows if r.key == best_dlg.key), None) if best_dlg.key else None
        ssim, psnr = (raw.mri_ssim, raw.mri_psnr) if raw is not None else (None, None)
        comps.append(Comparison(
            "DLG recovers only coarse anatomy", "SSIM <= 0.16, PSNR <= 11 dB",
            f"best DLG: {best_dlg.text()}; raw whole-slice MRI SSIM {fmt(ssim)}, PSNR {fmt(psnr, 1)} dB. "
            f"Reproduced while the in-mask margin stays below {HIGH_MARGIN} (detail) with its whole interval",
            _interval_status(best_dlg, HIGH_MARGIN), intervals=_intervals([best_dlg])))
    stronger = _readings(rows, "none", exclude=("dlg",))
    best = most_revealing(stronger)
    if best is not None:
        if best.leak:
            status = "exceeded"
        elif all(r.no_leak and r.verdict != SEARCH_LIMITED for r in stronger):
            status = "reproduced"
        else:
            status = "inconclusive"
        limited = [r for r in stronger if r.verdict == SEARCH_LIMITED]
        note = (f"; {len(limited)} of {len(stronger)} settings search-limited: leak not excluded" if limited and
                not best.leak else "")
        comps.append(Comparison(
            "Stronger inversion than DLG (not in the study)", "SSIM <= 0.16 with DLG",
            f"best {best.text()}{note}. Exceeded where the in-mask margin is above {LEAK_MARGIN} with its whole "
            "interval", status, intervals=_intervals(stronger)))
    return threats, comps
