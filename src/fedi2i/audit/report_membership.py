"""The report's membership-exposure section: how many same-centre non-members the AUCs rest on, what secure
aggregation leaves exposed, and the two exposure curves (against the round, against the patients per centre).

The curves are drawn from the membership cells' stored points (``exposure_round`` of each membership cell,
``same_centre_mean`` of the federation-size cells): numbers only, never an image of a slice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedi2i.audit import html as H
from fedi2i.audit.exposure_plan import SIZE_PREFIX
from fedi2i.audit.findings.common import ok_results
from fedi2i.audit.findings.membership import secagg_statement

ATTACKS = ("fedmia-loss", "loss-global")


def _point_text(point: dict[str, Any] | None) -> str:
    if not point or point.get("auc") is None:
        return "n/a"
    ci = point.get("ci95")
    return f"{point['auc']:.2f}" + (f" [{ci[0]:.2f}-{ci[1]:.2f}]" if ci else "")


def round_curves(membership: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Series of the round curve: both attacks without a defence, the global-model attack under SecAgg."""
    out: dict[str, list[dict[str, Any]]] = {}
    for defence, suffix in (("none", ""), ("secagg", ", secure aggregation")):
        curve = (membership.get(f"membership/{defence}") or {}).get("exposure_round") or {}
        for method, points in (curve.get("methods") or {}).items():
            out[f"{method}{suffix}"] = points
    return out


def size_curves(membership: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Series of the federation-size curve: each attack's mean same-centre AUC per training patients per centre
    (the smaller federations, then the full one). Empty when the audit trained no smaller federation."""
    runs = {k: v for k, v in membership.items() if k.startswith(SIZE_PREFIX)}
    if not runs:
        return {}
    full = membership.get("membership/none")
    if full is not None:
        members = (full.get("candidates") or {}).get("member_patients") or {}
        runs["membership/none"] = {**full, "train_patients": min(members.values()) if members else None}
    out: dict[str, list[dict[str, Any]]] = {m: [] for m in ATTACKS}
    for result in sorted(runs.values(), key=lambda r: r.get("train_patients") or 0):
        for m in ATTACKS:
            mean = ((result.get("methods") or {}).get(m) or {}).get("same_centre_mean")
            if mean and result.get("train_patients"):
                out[m].append({"patients": result["train_patients"], **mean})
    return {m: p for m, p in out.items() if p}


def _nonmembers_text(membership: dict[str, dict[str, Any]]) -> str:
    plain = membership.get("membership/none") or next(iter(membership.values()), None)
    if not plain:
        return ""
    per_centre = {}
    for method in (plain.get("methods") or {}).values():
        for centre, block in (method.get("centres") or {}).items():
            per_centre[centre] = ((block.get("patient") or {}).get("n_same_centre"), (block.get("patient") or {})
                                  .get("n_members"))
        if per_centre:
            break
    if not per_centre:
        return ""
    pairs = sorted(set(per_centre.values()))
    counts = "; ".join(f"{m} member patients against {n} same-centre non-member patients" for n, m in pairs)
    return (f"<p>Each target centre's same-centre AUC rests on {counts} (held-out, validation and test patients "
            "of the centre), resampled by patient for the 95% intervals.</p>")


def _curve_block(curves: dict[str, list[dict[str, Any]]], x_key: str, x_label: str, path: Path, caption: str) -> str:
    from fedi2i.attacks.membership.figures import exposure_figure, series_label

    exposure_figure(curves, x_key, x_label, path)
    xs = sorted({p[x_key] for points in curves.values() for p in points})
    rows = [(x, *(_point_text(next((p for p in curves[name] if p[x_key] == x), None)) for name in curves))
            for x in xs]
    return H.figure(path, caption) + H.table([x_label, *(series_label(n) for n in curves)], rows)


def section(cells: dict[str, dict[str, Any]], out_dir: Path) -> str:
    """The section's HTML from the stored cells; its figures are written under ``out_dir/membership``."""
    membership = ok_results(cells, "membership")
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
