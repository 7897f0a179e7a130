"""The report's gradient-inversion section: anatomy margins with intervals, objective gaps, the budget curve.

One section builder (``section_inversion``) for ``fedi2i.audit.report.SECTIONS``. It reads the inversion
cells only, and writes one figure: the budget curve of the settings without defence
(``<out>/inversion/budget_curve.png``: scores and update distances against iterations, no image of a slice).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from fedi2i.attacks.inversion.judge import HIGH_MARGIN, LEAK_MARGIN, SEARCH_LIMITED, read_cell
from fedi2i.audit import html as H
from fedi2i.audit.findings.common import typed_results
from fedi2i.audit.schema import InversionResult


class Inputs(Protocol):
    """What the section reads of ``fedi2i.audit.report.ReportInputs``."""

    cells: dict[str, dict[str, Any]]
    out_dir: Path

CURVE_FILE = "budget_curve.png"
MAX_SLICE_FIGURES = 6


def _num(value: Any, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def _row(x: InversionResult) -> tuple[object, ...]:
    reading = read_cell(x.to_dict())
    gap, curve = x.objective_gap, x.budget_curve
    base = (x.method, x.batch, x.steps, x.stage, x.defence, f"{_num(x.mri_ssim, '.3f')} / {_num(x.ct_ssim, '.3f')}")
    if reading is None:
        return (*base, "not scored (older result)", "", "", "", "", "", x.iterations, _num(x.seconds, ".0f"))
    ci = ("no interval" if reading.low is None or reading.high is None
          else f"[{reading.low:+.3f}, {reading.high:+.3f}]")
    improving = curve.still_improving if curve is not None else None
    return (*base, f"{reading.modality.upper()} {reading.margin:+.3f} {ci}",
            f"{reading.reid_top1:.0%} ({reading.reid_chance:.0%})",
            f"{_num(gap.reconstruction if gap is not None else None, '.4f')} / "
            f"{_num(gap.truth if gap is not None else None, '.1e')}",
            "n/a" if reading.gap_ratio is None else f"{reading.gap_ratio:.3g}x",
            "n/a" if improving is None else ("yes" if improving else "no"), reading.verdict,
            x.iterations, _num(x.seconds, ".0f"))


def _curve(rows: list[InversionResult], out_dir: Path) -> str:
    """The budget curve of the base settings without defence (one line per method and batch size)."""
    from fedi2i.attacks.inversion.figures import budget_curve_figure

    base = [x for x in rows if x.defence == "none" and x.budget_curve is not None and x.budget_curve.points]
    if not base:
        return ""
    steps, stage = min(x.steps for x in base), "early"
    chosen = [x for x in base if x.steps == steps and x.stage == stage] or base
    chosen = [x for x in chosen if x.client == chosen[0].client]
    curves = {f"{x.method} b{x.batch}": x.budget_curve.points
              for x in sorted(chosen, key=lambda x: (x.method, x.batch)) if x.budget_curve is not None}
    path = budget_curve_figure(curves, out_dir / "inversion" / CURVE_FILE,
                               f"inversion score against the attacker's budget (no defence, {steps} local step(s), "
                               f"{stage} model)")
    still = [x for x in base if x.budget_curve is not None and x.budget_curve.still_improving]
    return (f"<p>Still improving when it stopped: {len(still)} of {len(base)} settings without defence (the update "
            "distance fell by 10 % or more over the last half of the iterations): a larger budget may recover "
            "more there.</p>" + H.figure(path, "budget curve: in-mask margin and update distance against iterations"))


def section_inversion(r: Inputs) -> str:
    rows = list(typed_results(r.cells, "inversion", InversionResult).values())
    if not rows:
        return ""
    order = {"none": 0, "secagg": 1, "dp": 2, "dpsgd": 3}
    rows.sort(key=lambda x: (x.stage, x.steps, order.get(x.defence, 9), x.method, x.batch))
    readings = [read_cell(x.to_dict()) for x in rows]
    limited = sum(1 for x in readings if x is not None and x.verdict == SEARCH_LIMITED)
    intro = (
        "<h2>Gradient inversion</h2><p>What a curious server rebuilds of a centre's slices from its update. "
        "<b>In-mask margin</b>: SSIM inside the dilated head mask between the reconstruction and its true slice, "
        "minus the same reconstruction's SSIM on other patients' slices of that centre at the same level (each "
        "comparison after the best shift of up to 1/16 of the image); 0 means no closer to this patient than to "
        "another. Best of MRI and CT, with its 95% interval (bootstrap over the victim and reference patients). "
        f"A margin above {LEAK_MARGIN} with its whole interval is this patient's anatomy (a blurred truth scores "
        f"about 0.10); above {HIGH_MARGIN}, detail. <b>Re-identified</b>: share of slices whose own patient scores "
        "highest among the centre's patients (chance in brackets). <b>Update distance</b>: 1 - cosine between the "
        "update the reconstruction (or the true batch) would produce and the observed one, by exact replay; "
        "<b>gap</b>: how many times better the truth explains it. A large gap (2x or more) means the search "
        "stopped short of a better answer: the reading is then <i>search-limited: leak not excluded</i>, never "
        f"low ({limited} of {len(rows)} settings here). Raw whole-slice SSIM, the study's measure (DLG: SSIM "
        "&le; 0.16), is shown but decides nothing: the air around the head inflates it.</p>")
    table = H.table(["method", "batch", "local steps", "model", "defence", "raw MRI / CT SSIM",
                     "in-mask margin [95% CI]", "re-identified (chance)", "update distance recon / truth", "gap",
                     "still improving", "reading", "iterations", "seconds"], [_row(x) for x in rows])
    priors = sorted({f"{x.prior.init}: {x.prior.source}" for x in rows if x.prior is not None})
    prior_txt = (f"<p class='small'>Attacker's prior (public slices, never the victim's): {H.esc('; '.join(priors))}."
                 "</p>" if priors else "")
    figs = [Path(x.figure) for x in rows if x.figure][:MAX_SLICE_FIGURES]
    slices = "".join(H.figure(p, p.stem.replace("_", " ")) for p in figs)
    return intro + table + prior_txt + _curve(rows, r.out_dir) + slices
