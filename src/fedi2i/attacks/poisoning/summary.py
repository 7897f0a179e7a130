"""Tables of the poisoning matrix: quality per rule x level x malicious count, and detection per level.

Levels are taken in sweep order, which the settings define from weakest to strongest; "where the
detector stops separating" is read along that order. A level is *separated* when the detector's final
running scores leave a gap of at least ``MIN_GAP`` between every malicious centre and every honest one
(baselines included): a threshold then flags all attackers and no honest-but-different centre with room
to spare. A gap of a few hundredths (e.g. two attackers and two honest centres all scoring about 0.7,
the symmetric half-and-half case) ranks perfectly (AUC 1) but tells nothing, hence the minimum.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from fedi2i.io import write_json

MIN_GAP = 0.5  # in units of the running score (robust z): half a robust standard deviation
QUALITY_COLUMNS = ("key", "rule", "attack", "level", "n_malicious", "malicious", "tolerates", "status",
                   "unseen_mae", "unseen_psnr", "unseen_ssim", "honest_mae", "honest_psnr", "honest_ssim",
                   "baseline_unseen_mae", "delta_unseen_mae", "collapsed", "diverged", "flagged", "seconds",
                   "skip_reason")


def _ordered(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def attack_levels(results: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Levels of each attack in the order the plan ran them (the settings' order)."""
    out: dict[str, list[str]] = {}
    for r in results:
        if r["attack"] != "none":
            out.setdefault(r["attack"], [])
            if r["level"] not in out[r["attack"]]:
                out[r["attack"]].append(r["level"])
    return out


def quality_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per cell with unseen/honest metrics and the change against the same rule's baseline."""
    base = {r["rule"]: (r.get("unseen_mean") or {}).get("mae") for r in results
            if r["attack"] == "none" and r["status"] == "done"}
    rows = []
    for r in results:
        um, hm = r.get("unseen_mean") or {}, r.get("honest_mean") or {}
        b = base.get(r["rule"])
        mae = um.get("mae")
        rows.append({
            "key": r["key"], "rule": r["rule"], "attack": r["attack"], "level": r["level"],
            "n_malicious": r["n_malicious"], "malicious": " ".join(r.get("malicious", [])),
            "tolerates": r.get("tolerates"), "status": r["status"],
            "unseen_mae": mae, "unseen_psnr": um.get("psnr"), "unseen_ssim": um.get("ssim"),
            "honest_mae": hm.get("mae"), "honest_psnr": hm.get("psnr"), "honest_ssim": hm.get("ssim"),
            "baseline_unseen_mae": b, "delta_unseen_mae": None if mae is None or b is None else mae - b,
            "collapsed": r.get("collapsed"), "collapsed_round": r.get("collapsed_round"),
            "diverged": r.get("diverged"), "flagged": " ".join((r.get("detector") or {}).get("flagged", [])),
            "seconds": r.get("seconds"), "skip_reason": r.get("skip_reason")})
    return rows


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def mae_markdown(rows: list[dict[str, Any]]) -> str:
    """Per attack: unseen-centre MAE (HU) per rule x number of malicious centres x level."""
    out = []
    by_attack: dict[str, list[str]] = {}
    for r in rows:
        if r["attack"] != "none" and r["level"] not in by_attack.setdefault(r["attack"], []):
            by_attack[r["attack"]].append(r["level"])
    base = {r["rule"]: r for r in rows if r["attack"] == "none"}
    for attack, levels in by_attack.items():
        out.append(f"### {attack}: unseen-centre MAE (HU)\n")
        out.append("| rule | malicious | no attack | " + " | ".join(levels) + " |")
        out.append("|---|---|---|" + "---|" * len(levels))
        keys = _ordered((r["rule"], r["n_malicious"]) for r in rows if r["attack"] == attack)
        for rule, n in keys:
            cells = {r["level"]: r for r in rows if (r["attack"], r["rule"], r["n_malicious"]) == (attack, rule, n)}

            def show(row: dict[str, Any] | None) -> str:
                if row is None:
                    return "-"
                if row["status"] == "skipped":
                    return "skipped"
                if row["collapsed"]:
                    return f"collapsed (round {row['collapsed_round']})"
                return _fmt(row["unseen_mae"]) + (" (diverged)" if row["diverged"] else "")

            out.append(f"| {rule} | {n} | {show(base.get(rule))} | "
                       + " | ".join(show(cells.get(lv)) for lv in levels) + " |")
        out.append("")
    skipped = _ordered(f"- {r['rule']}: {r['skip_reason']}" for r in rows if r["status"] == "skipped")
    if any(r["collapsed"] for r in rows):
        out.append("collapsed: every update of a round was NaN/Inf once the poisoned global model diverged, so "
                   "the federation stopped (inoperative).\n")
    if skipped:
        out.append("Skipped rules:\n" + "\n".join(skipped) + "\n")
    return "\n".join(out)


def _samples(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """(cell, centre) pairs with the detector's running scores and whether the centre was malicious."""
    out = []
    for r in results:
        det = r.get("detector")
        if r["status"] != "done" or not det:
            continue
        for cid, series in det["running"].items():
            out.append({"attack": r["attack"], "level": r["level"], "n_malicious": r["n_malicious"],
                        "rule": r["rule"], "centre": cid, "malicious": cid in r["malicious"],
                        "series": series, "flagged": cid in det["flagged"]})
    return out


def _roc(pos: list[dict[str, Any]], neg: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    """AUC of the running score after every round, the ROC curve after the last one, and the margin
    (lowest malicious minus highest honest final score; > 0 means perfectly separable)."""
    if not pos or not neg:
        return {"auc": None, "auc_per_round": [], "fpr": [], "tpr": [], "margin": None}
    labels = np.array([1] * len(pos) + [0] * len(neg))
    per_round = []
    for t in range(rounds):
        scores = np.array([s["series"][min(t, len(s["series"]) - 1)] for s in pos + neg])
        per_round.append(float(roc_auc_score(labels, scores)))
    final = np.array([s["series"][-1] for s in pos + neg])
    fpr, tpr, _ = roc_curve(labels, final)
    margin = float(final[: len(pos)].min() - final[len(pos):].max())
    return {"auc": per_round[-1], "auc_per_round": per_round, "fpr": fpr.tolist(), "tpr": tpr.tolist(),
            "margin": margin}


def detection_table(results: list[dict[str, Any]], min_gap: float = MIN_GAP) -> dict[str, Any]:
    """Detection per attack and level, for all runs pooled and per number of malicious centres.

    Positives: malicious centres of that level's cells (every rule). Negatives: honest centres of the same
    cells plus every centre of the no-attack baselines, so an honest centre that differs by scanner counts
    as a false alarm if flagged. Detection and false-alarm rates use the detector's own threshold; the
    ROC uses its running score after every round ("ROC over rounds").
    """
    samples = _samples(results)
    baseline = [s for s in samples if s["attack"] == "none"]
    rounds = max((len(s["series"]) for s in samples), default=0)
    table: dict[str, Any] = {"baseline_false_alarm_rate": _rate(baseline), "baseline_n": len(baseline),
                             "baseline_flagged": sorted({f"{s['rule']}:{s['centre']}" for s in baseline
                                                         if s["flagged"]}),
                             "attacks": {}}
    for attack, levels in attack_levels(results).items():
        entry: dict[str, Any] = {"levels": levels, "by_level": {}, "separated": {}, "stops_separating_at": {}}
        for level in levels:
            cell = [s for s in samples if s["attack"] == attack and s["level"] == level]
            row: dict[str, Any] = {}
            for split in ["all"] + sorted({s["n_malicious"] for s in cell}):
                part = cell if split == "all" else [s for s in cell if s["n_malicious"] == split]
                pos = [s for s in part if s["malicious"]]
                honest = [s for s in part if not s["malicious"]]
                row[str(split)] = {"detection_rate": _rate(pos), "false_alarm_rate": _rate(honest),
                                   "n_malicious_samples": len(pos), "n_honest_samples": len(honest),
                                   **_roc(pos, honest + baseline, rounds)}
            entry["by_level"][level] = row
        for split in dict.fromkeys(k for lv in levels for k in entry["by_level"][lv]):
            sep = {lv: entry["by_level"][lv][split]["margin"] >= min_gap for lv in levels
                   if split in entry["by_level"][lv] and entry["by_level"][lv][split]["margin"] is not None}
            entry["separated"][split] = sep
            failing = [lv for lv in levels if sep.get(lv) is False]
            entry["stops_separating_at"][split] = failing[-1] if failing else None
        table["attacks"][attack] = entry
    table["min_gap"] = min_gap
    return table


def _rate(samples: list[dict[str, Any]]) -> float | None:
    return sum(s["flagged"] for s in samples) / len(samples) if samples else None


def detection_markdown(table: dict[str, Any]) -> str:
    lines = [f"No-attack baselines: {table['baseline_n']} honest centre-runs, false-alarm rate "
             f"{_fmt(table['baseline_false_alarm_rate'], 2)}\n"]
    for attack, entry in table["attacks"].items():
        lines.append(f"### {attack}: detection per level (all rules pooled)\n")
        lines.append("| level | malicious | detection rate | false alarms (honest) | margin | AUC final "
                     "| AUC per round |")
        lines.append("|---|---|---|---|---|---|---|")
        for level in entry["levels"]:
            for split, d in entry["by_level"][level].items():
                per_round = " ".join(f"{a:.2f}" for a in d["auc_per_round"])
                lines.append(f"| {level} | {split} | {_fmt(d['detection_rate'], 2)} | {_fmt(d['false_alarm_rate'], 2)} "
                             f"| {_fmt(d['margin'], 2)} | {_fmt(d['auc'], 2)} | {per_round} |")
        lines.append(f"\nmargin: lowest malicious minus highest honest final score (baselines included); a level "
                     f"counts as separated when it is at least {table['min_gap']} (a threshold then flags every "
                     "attacker and no honest centre with room to spare).\n")
        for split, stop in entry["stops_separating_at"].items():
            who = "all runs" if split == "all" else f"{split} malicious"
            lines.append(f"- {who}: " + (f"attackers not separated from honest centres up to level **{stop}**"
                                          if stop else "separated at every level"))
        lines.append("")
    return "\n".join(lines)


def _detection_digest(entry: dict[str, Any]) -> dict[str, Any]:
    """Per attack: pooled AUC per level, and where separation stops with one malicious centre (the honest
    majority the detector is built for; pooled runs when there is no such split), plus every split."""
    levels = entry["levels"]
    stops = entry["stops_separating_at"]
    return {"auc": {lv: entry["by_level"][lv]["all"]["auc"] for lv in levels},
            "stops_separating_at": stops.get("1", stops.get("all")),
            "stops_separating_at_by_malicious": stops,
            "auc_by_malicious": {lv: {k: d["auc"] for k, d in entry["by_level"][lv].items()} for lv in levels},
            "margin": {lv: {k: d["margin"] for k, d in entry["by_level"][lv].items()} for lv in levels},
            "detection_rate": {lv: {k: d["detection_rate"] for k, d in entry["by_level"][lv].items()} for lv in levels},
            "false_alarm_rate": {lv: {k: d["false_alarm_rate"] for k, d in entry["by_level"][lv].items()}
                                 for lv in levels}}


def write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_csv(path: Path, rows: list[dict[str, Any]], columns: Iterable[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def summarise_poison(results: list[dict[str, Any]], out_dir: Path) -> dict[str, Any]:
    """Write quality and detection tables (JSON, CSV, markdown) and the figures; return what was written."""
    from fedi2i.attacks.poisoning import figures

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = quality_rows(results)
    detection = detection_table(results)
    write_json(out_dir / "quality.json", rows)
    write_csv(out_dir / "quality.csv", rows, QUALITY_COLUMNS)
    det_rows = [{"attack": a, "level": lv, "malicious": split, **{k: d[k] for k in
                 ("detection_rate", "false_alarm_rate", "margin", "auc", "n_malicious_samples",
                  "n_honest_samples")}}
                for a, e in detection["attacks"].items() for lv in e["levels"]
                for split, d in e["by_level"][lv].items()]
    write_json(out_dir / "detection.json", detection)
    write_csv(out_dir / "detection.csv", det_rows, ("attack", "level", "malicious", "detection_rate",
                                                     "false_alarm_rate", "margin", "auc", "n_malicious_samples",
                                                     "n_honest_samples"))
    markdown = "## Poisoning: synthesis quality\n\n" + mae_markdown(rows) + "\n## Poisoning: detection\n\n" \
        + detection_markdown(detection)
    write_text(out_dir / "poisoning.md", markdown)
    figs = figures.write_all(results, rows, detection, out_dir / "figures")
    summary = {"cells": len(results), "done": sum(r["status"] == "done" for r in results),
               "skipped": sum(r["status"] == "skipped" for r in results),
               "files": ["quality.json", "quality.csv", "detection.json", "detection.csv", "poisoning.md"],
               "figures": [str(p.relative_to(out_dir)) for p in figs], "markdown": markdown,
               "detection": {a: _detection_digest(e)
                             for a, e in detection["attacks"].items()},
               "baseline_false_alarm_rate": detection["baseline_false_alarm_rate"]}
    write_json(out_dir / "summary.json", {k: v for k, v in summary.items() if k != "markdown"})
    return summary
