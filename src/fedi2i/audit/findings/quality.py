"""Synthesis quality of the audit's training runs on the unseen centre, whether SecAgg costs any of it, and
the numbers no statistic may use."""

from __future__ import annotations

from typing import Any

from fedi2i.audit.findings.common import Comparison, Threat, finite, parts_dict, typed_results
from fedi2i.audit.findings.membership import membership_aucs
from fedi2i.audit.intervals import paired_ratio_by_key, status_from_interval
from fedi2i.audit.schema import CellEntry, InversionResult, MembershipResult, PoisonResult, TrainResult

METRICS = ("mae", "psnr", "ssim")
# "No degradation": the SecAgg run's unseen MAE within 5 % of plain FedAvg's, as a ratio.
QUALITY_TOLERANCE = (0.95, 1.05)


def quality(cells: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Unseen-centre metrics per training run (mean over the unseen centres' patients); a run with a
    missing or non-finite metric (a diverged model) is left out, and listed by ``unusable_numbers``."""
    out = {}
    for key, result in typed_results(cells, "train", TrainResult).items():
        vals = list((result.unseen or {}).values())
        if vals and all(finite(v.get(m)) for v in vals for m in METRICS):
            out[key.split("/", 1)[1]] = {m: sum(v[m] for v in vals) / len(vals) for m in METRICS}  # type: ignore[misc]
    return out


def unseen_patient_mae(result: TrainResult) -> dict[str, float]:
    """Unseen MAE per patient, keyed ``centre/patient``: the pairs behind an interval over patients."""
    return {f"{c}/{pid}": m["mae"] for c, patients in (result.unseen_patients or {}).items()
            for pid, m in patients.items() if finite(m.get("mae"))}  # type: ignore[misc]


def unusable_numbers(cells: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """Finished cells whose headline numbers are missing or not finite, and which: the report shows them as
    such, and every statistic above leaves them out."""
    out = []
    for key, raw in cells.items():
        entry = CellEntry.model_validate({"key": key, "title": key, **raw})
        result = entry.typed()
        why: list[str] = []
        if isinstance(result, TrainResult):
            bad = sorted(c for c, v in (result.unseen or {}).items() if not all(finite(v.get(m)) for m in METRICS))
            why += [f"unseen-centre metrics not finite for {', '.join(bad)} (diverged model)"] if bad else []
            why += [] if result.unseen else ["no unseen-centre metrics"]
        elif isinstance(result, PoisonResult) and result.status == "done":
            if result.collapsed:
                why.append(f"federation collapsed in round {result.collapsed_round}: no test metrics")
            elif not result.unseen_mean or not all(finite(v) for v in result.unseen_mean.values()):
                why.append("unseen-centre metrics missing or not finite (diverged model)")
            running = (result.detector or {}).get("running") or {}
            bad = sorted(c for c, series in running.items() if not all(finite(v) for v in series))
            why += [f"detector scores not finite for {', '.join(bad)} (left out of the ROC)"] if bad else []
        elif isinstance(result, InversionResult) and not finite(result.mri_ssim):
            why.append("no finite reconstruction SSIM")
        elif isinstance(result, MembershipResult) and result.methods and not membership_aucs(result):
            why.append("no finite AUC for any method")
        if why:
            out.append({"key": key, "why": "; ".join(why)})
    return out


def quality_findings(cells: dict[str, dict[str, Any]]) -> tuple[list[Threat], list[Comparison]]:
    """Whether secure aggregation costs image quality: the SecAgg run's unseen MAE over plain FedAvg's, per
    unseen patient (the same patients scored by both models), with a 95 % t-interval of the mean log-ratio
    over patients. "No degradation" is reproduced only when the whole interval lies within the tolerance
    (x0.95-x1.05); above it is "not reproduced", below it "exceeded" (SecAgg better), across a bound
    "inconclusive". The interval is over patients: the two runs share their seed, so training noise, which
    SecAgg's quantisation barely adds to, is not in it."""
    threats: list[Threat] = []
    comps: list[Comparison] = []
    runs = {k.split("/", 1)[1]: r for k, r in typed_results(cells, "train", TrainResult).items()}
    q = quality(cells)
    if "fedavg-none" not in q or "fedavg-secagg" not in q:
        return threats, comps
    a, b = q["fedavg-none"]["mae"], q["fedavg-secagg"]["mae"]
    plain, secure = unseen_patient_mae(runs["fedavg-none"]), unseen_patient_mae(runs["fedavg-secagg"])
    iv = paired_ratio_by_key(plain, secure)
    low, high = QUALITY_TOLERANCE
    ours = f"unseen MAE {a:.1f} HU (FedAvg) vs {b:.1f} HU (FedAvg+SecAgg)"
    if iv is None:
        ours += (f", {abs(b - a) / a:.1%} apart; no per-patient numbers to pair (cells from an older fedi2i: "
                 "re-run the two training cells), so no interval")
        comps.append(Comparison("SecAgg does not hurt image quality", "no degradation", ours, "inconclusive"))
        return threats, comps
    n = len(set(plain) & set(secure))
    ours += (f"; ratio SecAgg / FedAvg x{iv.text(3)} over {n} unseen patients (paired, 95% CI); no degradation "
             f"means within x{low:.2f}-x{high:.2f}")
    status = status_from_interval(iv, low, high, below="exceeded", above="not reproduced")
    comps.append(Comparison("SecAgg does not hurt image quality", "no degradation", ours, status,
                            parts_dict({"MAE ratio SecAgg / FedAvg": iv})))
    return threats, comps
