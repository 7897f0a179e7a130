"""The report's membership-exposure section: how many same-centre non-members the AUCs rest on, what secure
aggregation leaves exposed, and the two exposure curves (against the round, against the patients per centre).

The curves are drawn from the membership cells' stored points (``exposure_round`` of each membership cell,
``same_centre_mean`` of the federation-size cells): numbers only, never an image of a slice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedi2i.audit import html as H
from fedi2i.audit.exposure_plan import ROUND_CURVE_DEFENCES, SIZE_PREFIX
from fedi2i.audit.findings.membership import membership_results, secagg_statement
from fedi2i.audit.schema import ExposurePoint, MembershipResult

ATTACKS = ("fedmia-loss", "loss-global")
Curves = dict[str, list[ExposurePoint]]


def _point_text(point: ExposurePoint | None) -> str:
    if point is None or point.auc is None:
        return "n/a"
    ci = point.ci95
    return f"{point.auc:.2f}" + (f" [{ci[0]:.2f}-{ci[1]:.2f}]" if ci else "")


def round_curves(membership: dict[str, MembershipResult]) -> Curves:
    """Series of the round curve: both attacks without a defence, the global-model attack under SecAgg."""
    out: Curves = {}
    suffixes = {"none": "", "secagg": ", secure aggregation"}
    for defence in ROUND_CURVE_DEFENCES:
        suffix = suffixes[defence]
        result = membership.get(f"membership/{defence}")
        curve = result.exposure_round if result is not None else None
        for method, points in (curve.methods if curve is not None else {}).items():
            out[f"{method}{suffix}"] = points
    return out


def size_curves(membership: dict[str, MembershipResult]) -> Curves:
    """Series of the federation-size curve: each attack's mean same-centre AUC per training patients per centre
    (the smaller federations, then the full one). Empty when the audit trained no smaller federation."""
    sized = [r for k, r in membership.items() if k.startswith(SIZE_PREFIX)]
    if not sized:
        return {}
    full = membership.get("membership/none")
    if full is not None:
        members = full.candidates.member_patients if full.candidates is not None else {}
        sized.append(full.model_copy(update={"train_patients": min(members.values()) if members else None}))
    out: Curves = {m: [] for m in ATTACKS}
    for result in sorted(sized, key=lambda r: r.train_patients or 0):
        for m in ATTACKS:
            method = result.available().get(m)
            mean = method.same_centre_mean if method is not None else None
            if mean is not None and result.train_patients:
                out[m].append(ExposurePoint(patients=result.train_patients, auc=mean.auc, ci95=mean.ci95))
    return {m: p for m, p in out.items() if p}


def _nonmembers_text(membership: dict[str, MembershipResult]) -> str:
    plain = membership.get("membership/none") or next(iter(membership.values()), None)
    if plain is None:
        return ""
    # the counts are the same for every method: read them from the first that has centres
    method = next((m for m in plain.methods.values() if m.centres), None)
    if method is None:
        return ""
    pairs = sorted({(b.patient.n_same_centre, b.patient.n_members) for b in method.centres.values()},
                   key=lambda x: (x[0] or 0, x[1] or 0))
    counts = "; ".join(f"{m} member patients against {n} same-centre non-member patients" for n, m in pairs)
    return (f"<p>Each target centre's same-centre AUC rests on {counts} (held-out, validation and test patients "
            "of the centre), resampled by patient for the 95% intervals.</p>")


def _curve_block(curves: Curves, x_key: str, x_label: str, path: Path, caption: str) -> str:
    from fedi2i.attacks.membership.figures import exposure_figure, series_label

    exposure_figure({name: [p.model_dump() for p in points] for name, points in curves.items()}, x_key, x_label,
                    path)
    xs = sorted({getattr(p, x_key) for points in curves.values() for p in points})
    rows = [(x, *(_point_text(next((p for p in curves[name] if getattr(p, x_key) == x), None)) for name in curves))
            for x in xs]
    return H.figure(path, caption) + H.table([x_label, *(series_label(n) for n in curves)], rows)


def section(cells: dict[str, dict[str, Any]], out_dir: Path) -> str:
    """The section's HTML from the stored cells; its figures are written under ``out_dir/membership``."""
    membership = membership_results(cells)
    if not membership:
        return ""
    parts = ["<h2>Membership exposure</h2>", _nonmembers_text(membership)]
    statement = secagg_statement(cells)
    if statement:
        parts.append(f"<p><b>What secure aggregation does not protect.</b> {H.esc(statement)}</p>")
    out = out_dir / "membership"
    rounds = round_curves(membership)
    if rounds:
        parts.append("<h3>Against the training round</h3><p>Same-centre AUC of each recorded round on its own "
                     "(mean over centres, 95% CI over patients): when the federation becomes leaky.</p>"
                     + _curve_block(rounds, "round", "round", out / "exposure_round.png",
                                    "membership exposure against the training round"))
    sizes = size_curves(membership)
    if sizes:
        parts.append("<h3>Against the training patients per centre</h3><p>FedAvg trained again on fewer patients "
                     "per centre, against the same held-out non-members: the overfitting dial.</p>"
                     + _curve_block(sizes, "patients", "training patients per centre", out / "exposure_size.png",
                                    "membership exposure against the training patients per centre"))
    return "".join(parts)
