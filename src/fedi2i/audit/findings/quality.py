"""Synthesis quality of the audit's training runs on the unseen centre, and the numbers no statistic may use."""

from __future__ import annotations

from typing import Any

from fedi2i.audit.findings.common import Comparison, Threat, finite, ok_results
from fedi2i.audit.findings.membership import membership_aucs

def quality(cells: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Unseen-centre metrics per training run (mean over the unseen centres' patients); a run with a
    missing or non-finite metric (a diverged model) is left out, and listed by ``unusable_numbers``."""
    out = {}
    for key, result in ok_results(cells, "train").items():
        vals = list((result.get("unseen") or {}).values())
        if vals and all(finite(v.get(m)) for v in vals for m in ("mae", "psnr", "ssim")):
            out[key.split("/", 1)[1]] = {m: sum(v[m] for v in vals) / len(vals) for m in ("mae", "psnr", "ssim")}
    return out


def unusable_numbers(cells: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """Finished cells whose headline numbers are missing or not finite, and which: the report shows them as
    such, and every statistic above leaves them out."""
    out = []
    for key, cell in cells.items():
        result = cell.get("result") or {}
        if cell.get("status") != "ok":
            continue
        kind, why = cell.get("kind"), []
        if kind == "train":
            bad = sorted(c for c, v in (result.get("unseen") or {}).items()
                         if not all(finite(v.get(m)) for m in ("mae", "psnr", "ssim")))
            why += [f"unseen-centre metrics not finite for {', '.join(bad)} (diverged model)"] if bad else []
            why += [] if result.get("unseen") else ["no unseen-centre metrics"]
        elif kind == "poison" and result.get("status") == "done":
            if result.get("collapsed"):
                why.append(f"federation collapsed in round {result.get('collapsed_round')}: no test metrics")
            elif not all(finite(v) for v in (result.get("unseen_mean") or {None: None}).values()):
                why.append("unseen-centre metrics missing or not finite (diverged model)")
            running = (result.get("detector") or {}).get("running") or {}
            bad = sorted(c for c, series in running.items() if not all(finite(v) for v in series))
            why += [f"detector scores not finite for {', '.join(bad)} (left out of the ROC)"] if bad else []
        elif kind == "inversion" and not finite(result.get("mri_ssim")):
            why.append("no finite reconstruction SSIM")
        elif kind == "membership" and result.get("methods") and not membership_aucs(result):
            why.append("no finite AUC for any method")
        if why:
            out.append({"key": key, "why": "; ".join(why)})
    return out


def quality_findings(cells: dict[str, dict[str, Any]]) -> tuple[list[Threat], list[Comparison]]:
    """Whether secure aggregation costs image quality."""
    threats: list[Threat] = []
    comps: list[Comparison] = []
    q = quality(cells)
    if "fedavg-none" in q and "fedavg-secagg" in q:
        a, b = q["fedavg-none"]["mae"], q["fedavg-secagg"]["mae"]
        rel = abs(b - a) / a
        comps.append(Comparison("SecAgg does not hurt image quality", "no degradation",
                                f"unseen MAE {a:.1f} HU (FedAvg) vs {b:.1f} HU (FedAvg+SecAgg), {rel:.1%} apart",
                                "reproduced" if rel <= 0.05 else "not reproduced"))
    return threats, comps
