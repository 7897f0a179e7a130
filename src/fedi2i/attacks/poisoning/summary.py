"""Tables of the poisoning matrix: quality per rule x level x malicious count, and detection per level.

Levels are taken in sweep order, which the settings define from weakest to strongest; "where the
detector stops separating" is read along that order. A level is *separated* when the detector's final
running scores leave a gap of at least ``MIN_GAP`` between every malicious centre and every honest one
(baselines included): a threshold then flags all attackers and no honest-but-different centre with room
to spare. A gap of a few hundredths (e.g. two attackers and two honest centres all scoring about 0.7,
the symmetric half-and-half case) ranks perfectly (AUC 1) but tells nothing, hence the minimum.

Replicates (the same cells with other training seeds) do not enter the matrix's tables and figures, which
show the matrix's own run (replicate 0) so that every level is read from the same number of runs. They are
listed per seed (``replicate_rows``), and the detector's margin is computed once per seed over the
configurations every seed ran (``margins_by_seed``); the audit turns those into intervals.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sklearn.metrics import roc_auc_score, roc_curve

from fedi2i.io import write_json, write_text

MIN_GAP = 0.5  # in units of the running score (robust z): half a robust standard deviation
QUALITY_COLUMNS = ("key", "rule", "attack", "level", "n_malicious", "replicate", "seed", "malicious", "tolerates",
                   "n_clients", "majority", "status",
                   "unseen_mae", "unseen_psnr", "unseen_ssim", "honest_mae", "honest_psnr", "honest_ssim",
                   "baseline_unseen_mae", "delta_unseen_mae", "collapsed", "diverged", "flagged", "seconds",
                   "skip_reason")


def _ordered(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def stealth_attack(attacks: Iterable[str]) -> str:
    """The attack whose lowest level judges "low noise is stealthy": data noise (the study's), else the
    first noise attack, else the first attack."""
    attacks = list(attacks)
    noise = [a for a in attacks if "noise" in a]
    return "data_noise" if "data_noise" in noise else (noise or attacks)[0]


def replicate_of(result: dict[str, Any]) -> int:
    return int(result.get("replicate") or 0)


def first_runs(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The matrix's own run of every cell (replicate 0), without the replicates with other seeds."""
    return [r for r in results if replicate_of(r) == 0]


def config_key(result: dict[str, Any]) -> tuple[str, str, str, int]:
    return result["rule"], result["attack"], result["level"], int(result["n_malicious"])


def attack_levels(results: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Levels of each attack in the order the plan ran them (the settings' order)."""
    out: dict[str, list[str]] = {}
    for r in results:
        if r["attack"] != "none":
            out.setdefault(r["attack"], [])
            if r["level"] not in out[r["attack"]]:
                out[r["attack"]].append(r["level"])
    return out


def majority_attack(n_malicious: int, n_clients: int | None) -> bool:
    """Half or more of a round's clients are malicious: no robust rule's guarantee holds (the median needs
    f < n/2, trimmed mean f <= beta*n < n/2, Krum n >= 2f+3), and a detector that scores each centre
    against the others sees the attackers as the norm."""
    return bool(n_clients) and 2 * n_malicious >= n_clients  # type: ignore[operator]


def n_clients_of(result: dict[str, Any]) -> int | None:
    """Clients per round of a cell: stored by the matrix, else read from the detector's series (results
    written before the count was stored); None when the cell never trained."""
    return result.get("n_clients") or len((result.get("detector") or {}).get("running") or {}) or None


def guarantee_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per rule and number of malicious centres: is it a majority attack, and does the rule's proven
    tolerance cover it? A "void" configuration is reported but feeds no verdict that relies on the rule."""
    seen: dict[tuple[str, int], dict[str, Any]] = {}
    for r in results:
        if r["attack"] == "none" or (r["rule"], r["n_malicious"]) in seen:
            continue
        n, m, tol = n_clients_of(r), r["n_malicious"], r.get("tolerates", 0)
        majority = majority_attack(m, n)
        why = ("majority attack: half or more of the clients are malicious" if majority else
               f"{m} malicious, more than the {tol} the rule tolerates with {n} clients" if m > tol else "")
        seen[(r["rule"], m)] = {"rule": r["rule"], "n_malicious": m, "n_clients": n, "tolerates": tol,
                                "majority": majority, "guarantee": "void" if why else "holds", "why": why}
    return sorted(seen.values(), key=lambda g: (g["rule"], g["n_malicious"]))


def quality_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per cell with unseen/honest metrics and the change against the same rule's baseline."""
    base = {(r["rule"], replicate_of(r)): (r.get("unseen_mean") or {}).get("mae") for r in results
            if r["attack"] == "none" and r["status"] == "done"}
    rows = []
    for r in results:
        um, hm = r.get("unseen_mean") or {}, r.get("honest_mean") or {}
        b = base.get((r["rule"], replicate_of(r)))  # the clean run of the same seed
        mae = um.get("mae")
        rows.append({
            "key": r["key"], "rule": r["rule"], "attack": r["attack"], "level": r["level"],
            "n_malicious": r["n_malicious"], "replicate": replicate_of(r), "seed": r.get("seed"),
            "malicious": " ".join(r.get("malicious", [])),
            "tolerates": r.get("tolerates"), "n_clients": n_clients_of(r),
            "majority": r["attack"] != "none" and majority_attack(r["n_malicious"], n_clients_of(r)),
            "status": r["status"],
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


def _show_mae(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    if row["status"] == "skipped":
        return "skipped"
    if row["collapsed"]:
        return f"collapsed (round {row['collapsed_round']})"
    return _fmt(row["unseen_mae"]) + (" (diverged)" if row["diverged"] else "")


def replicate_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Configurations run with more than one seed: their rows in seed order (replicate 0 first)."""
    groups: dict[tuple[str, str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(config_key(r), []).append(r)
    return [{"rule": k[0], "attack": k[1], "level": k[2], "n_malicious": k[3],
             "runs": sorted(g, key=lambda x: x["replicate"])} for k, g in groups.items() if len(g) > 1]


def replicates_markdown(rows: list[dict[str, Any]]) -> str:
    """Unseen-centre MAE of every replicated configuration, one column per seed."""
    groups = replicate_rows(rows)
    if not groups:
        return ""
    n = max(len(g["runs"]) for g in groups)
    out = ["### Replicates: unseen-centre MAE (HU) per training seed\n",
           "| rule | attack | level | malicious | " + " | ".join(f"seed {i + 1}" for i in range(n)) + " |",
           "|---|---|---|---|" + "---|" * n]
    for g in groups:
        shown = [_show_mae(r) for r in g["runs"]] + ["-"] * (n - len(g["runs"]))
        out.append(f"| {g['rule']} | {g['attack']} | {g['level']} | {g['n_malicious']} | " + " | ".join(shown) + " |")
    out.append("\nThe same configuration with other training seeds (initialisation, batch order, noise draws); "
               "seed 1 is the matrix's own run. Clean and attacked runs of one seed pair.\n")
    return "\n".join(out)


def mae_markdown(rows: list[dict[str, Any]]) -> str:
    """Per attack: unseen-centre MAE (HU) per rule x number of malicious centres x level (the matrix's own
    runs), then the replicated configurations per seed."""
    replicates = replicates_markdown(rows)
    rows = [r for r in rows if r.get("replicate", 0) == 0]
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
            majority = any(r["majority"] for r in cells.values())
            out.append(f"| {rule} | {n}{' (majority attack)' if majority else ''} | {_show_mae(base.get(rule))} | "
                       + " | ".join(_show_mae(cells.get(lv)) for lv in levels) + " |")
        out.append("")
    skipped = _ordered(f"- {r['rule']}: {r['skip_reason']}" for r in rows if r["status"] == "skipped")
    if any(r["majority"] for r in rows):
        out.append("majority attack: half or more of the clients are malicious, so no robust rule's guarantee "
                   "holds; these rows feed no verdict about a rule's robustness.\n")
    if any(r["collapsed"] for r in rows):
        out.append("collapsed: every update of a round was NaN/Inf once the poisoned global model diverged, so "
                   "the federation stopped (inoperative).\n")
    if skipped:
        out.append("Skipped rules:\n" + "\n".join(skipped) + "\n")
    if replicates:
        out.append(replicates)
    return "\n".join(out)


def _score(value: Any) -> float:
    """A detector score as a float; None (a non-finite score stored as JSON null) becomes NaN."""
    return math.nan if value is None else float(value)


def _samples(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """(cell, centre) pairs with the detector's running scores and whether the centre was malicious.

    A centre that sent NaN/Inf updates (a collapsed run) has non-finite scores, stored as None: they are
    kept here as NaN and left out by ``_roc`` round by round, never passed to the ROC.
    """
    out = []
    for r in results:
        det = r.get("detector")
        if r["status"] != "done" or not det:
            continue
        for cid, series in det["running"].items():
            out.append({"attack": r["attack"], "level": r["level"], "n_malicious": r["n_malicious"],
                        "replicate": replicate_of(r), "config": config_key(r),
                        "majority": majority_attack(r["n_malicious"], n_clients_of(r)), "rule": r["rule"],
                        "centre": cid, "malicious": cid in r["malicious"], "series": [_score(v) for v in series],
                        "flagged": cid in det["flagged"]})
    return out


def _at(sample: dict[str, Any], t: int) -> float:
    series = sample["series"]
    return series[min(t, len(series) - 1)] if series else math.nan


def _auc(pos: list[float], neg: list[float]) -> float | None:
    """ROC AUC over the finite scores only; None when either side has none left."""
    pos = [v for v in pos if math.isfinite(v)]
    neg = [v for v in neg if math.isfinite(v)]
    if not pos or not neg:
        return None
    return float(roc_auc_score([1] * len(pos) + [0] * len(neg), pos + neg))


def _roc(pos: list[dict[str, Any]], neg: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    """AUC of the running score after every round, the ROC curve after the last one, and the margin
    (lowest malicious minus highest honest final score; > 0 means perfectly separable).

    Centres whose score is non-finite (NaN updates) are left out of each statistic and counted in
    ``n_non_finite``; a statistic with no finite score on one side is None ("not measured").
    """
    per_round = [_auc([_at(s, t) for s in pos], [_at(s, t) for s in neg]) for t in range(rounds)]
    final_pos = [v for v in (_at(s, rounds - 1) for s in pos) if math.isfinite(v)]
    final_neg = [v for v in (_at(s, rounds - 1) for s in neg) if math.isfinite(v)]
    n_bad = len(pos) + len(neg) - len(final_pos) - len(final_neg)
    if not final_pos or not final_neg:
        return {"auc": None, "auc_per_round": per_round, "fpr": [], "tpr": [], "margin": None,
                "n_non_finite": n_bad}
    fpr, tpr, _ = roc_curve([1] * len(final_pos) + [0] * len(final_neg), final_pos + final_neg)
    return {"auc": per_round[-1] if per_round else None, "auc_per_round": per_round, "fpr": fpr.tolist(),
            "tpr": tpr.tolist(), "margin": float(min(final_pos) - max(final_neg)), "n_non_finite": n_bad}


def _split_roc(samples: list[dict[str, Any]], attack: str, level: str, rounds: int
               ) -> dict[str, dict[str, Any]]:
    """``_roc`` of one attack and level, for all its runs pooled and per number of malicious centres;
    negatives are the honest centres of those runs and every centre of the no-attack baselines."""
    baseline = [s for s in samples if s["attack"] == "none"]
    cell = [s for s in samples if s["attack"] == attack and s["level"] == level]
    row: dict[str, Any] = {}
    for split in ["all"] + sorted({s["n_malicious"] for s in cell}):
        part = cell if split == "all" else [s for s in cell if s["n_malicious"] == split]
        pos = [s for s in part if s["malicious"]]
        honest = [s for s in part if not s["malicious"]]
        row[str(split)] = {"detection_rate": _rate(pos), "false_alarm_rate": _rate(honest),
                           "majority": split != "all" and any(s["majority"] for s in part),
                           "n_malicious_samples": len(pos), "n_honest_samples": len(honest),
                           **_roc(pos, honest + baseline, rounds)}
    return row


def margins_by_seed(results: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, list[float | None]]]]:
    """The detector's margin once per seed, ``{attack: {level: {split: [margin of replicate 0, 1, ...]}}}``.

    Each seed's margin is computed as the matrix's (``detection_table``), over the configurations that every
    seed ran (attacked cells and baselines alike), so the seeds differ by their seed alone. Only attacks and
    levels run with more than one seed are listed; a margin without finite scores is None.
    """
    samples = _samples(results)
    replicates = sorted({s["replicate"] for s in samples})
    if len(replicates) < 2:
        return {}
    common = set.intersection(*({s["config"] for s in samples if s["replicate"] == r} for r in replicates))
    samples = [s for s in samples if s["config"] in common]
    rounds = max((len(s["series"]) for s in samples), default=0)
    out: dict[str, dict[str, dict[str, list[float | None]]]] = {}
    for attack, levels in attack_levels([r for r in results if config_key(r) in common]).items():
        for level in levels:
            per_seed = [_split_roc([s for s in samples if s["replicate"] == r], attack, level, rounds)
                        for r in replicates]
            splits = dict.fromkeys(k for row in per_seed for k in row)
            out.setdefault(attack, {})[level] = {k: [row[k]["margin"] if k in row else None for row in per_seed]
                                                 for k in splits}
    return out


def detection_table(results: list[dict[str, Any]], min_gap: float = MIN_GAP) -> dict[str, Any]:
    """Detection per attack and level, for all runs pooled and per number of malicious centres; the
    matrix's own runs only (replicates are read by ``margins_by_seed``).

    Positives: malicious centres of that level's cells (every rule). Negatives: honest centres of the same
    cells plus every centre of the no-attack baselines, so an honest centre that differs by scanner counts
    as a false alarm if flagged. Detection and false-alarm rates use the detector's own threshold; the
    ROC uses its running score after every round ("ROC over rounds").
    """
    results = first_runs(results)
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
            entry["by_level"][level] = _split_roc(samples, attack, level, rounds)
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
                per_round = " ".join(_fmt(a, 2) for a in d["auc_per_round"])
                who = f"{split} (majority attack)" if d.get("majority") else split
                lines.append(f"| {level} | {who} | {_fmt(d['detection_rate'], 2)} | {_fmt(d['false_alarm_rate'], 2)} "
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


def _detection_digest(entry: dict[str, Any], by_seed: dict[str, dict[str, list[float | None]]]) -> dict[str, Any]:
    """Per attack: pooled AUC per level, and where separation stops with the fewest malicious centres (the
    honest majority the detector is built for; pooled runs only when no split is a majority attack), plus
    every split and which splits are majority attacks (they feed no stealth verdict)."""
    levels = entry["levels"]
    stops = entry["stops_separating_at"]
    majority = sorted({k for lv in levels for k, d in entry["by_level"][lv].items() if d.get("majority")}, key=int)
    minority = sorted((k for k in stops if k != "all" and k not in majority), key=int)
    headline = stops.get(minority[0]) if minority else None if majority else stops.get("all")
    return {"auc": {lv: entry["by_level"][lv]["all"]["auc"] for lv in levels},
            "stops_separating_at": headline,
            "stops_separating_at_by_malicious": stops,
            "majority_splits": majority,
            "auc_by_malicious": {lv: {k: d["auc"] for k, d in entry["by_level"][lv].items()} for lv in levels},
            "margin": {lv: {k: d["margin"] for k, d in entry["by_level"][lv].items()} for lv in levels},
            # levels run with several seeds: the margin of each seed, per split (replicate 0 first)
            "margin_by_seed": by_seed,
            "detection_rate": {lv: {k: d["detection_rate"] for k, d in entry["by_level"][lv].items()} for lv in levels},
            "false_alarm_rate": {lv: {k: d["false_alarm_rate"] for k, d in entry["by_level"][lv].items()}
                                 for lv in levels}}


def guarantee_markdown(guarantees: list[dict[str, Any]]) -> str:
    """Which rule x malicious-count configurations void the rule's guarantee, and why."""
    lines = ["| rule | malicious | clients | tolerates | guarantee |", "|---|---|---|---|---|"]
    lines += [f"| {g['rule']} | {g['n_malicious']} | {_fmt(g['n_clients'])} | {g['tolerates']} | "
              f"{g['guarantee']}{': ' + g['why'] if g['why'] else ''} |" for g in guarantees]
    return "\n".join(lines) + "\n"


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
    by_seed = margins_by_seed(results)
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
    guarantees = guarantee_rows(results)
    markdown = "## Poisoning: synthesis quality\n\n" + mae_markdown(rows) + "\n## Poisoning: detection\n\n" \
        + detection_markdown(detection) + "\n## Poisoning: rule guarantees\n\n" + guarantee_markdown(guarantees)
    write_text(out_dir / "poisoning.md", markdown)
    first = first_runs(results)
    figs = figures.write_all(first, [r for r in rows if r["replicate"] == 0], detection, attack_levels(first),
                             out_dir / "figures")
    summary = {"cells": len(results), "done": sum(r["status"] == "done" for r in results),
               "skipped": sum(r["status"] == "skipped" for r in results),
               "files": ["quality.json", "quality.csv", "detection.json", "detection.csv", "poisoning.md"],
               "figures": [str(p.relative_to(out_dir)) for p in figs], "markdown": markdown,
               "detection": {a: _detection_digest(e, by_seed.get(a, {}))
                             for a, e in detection["attacks"].items()},
               "seeds": len({replicate_of(r) for r in results}),
               "baseline_false_alarm_rate": detection["baseline_false_alarm_rate"], "guarantees": guarantees}
    write_json(out_dir / "summary.json", {k: v for k, v in summary.items() if k != "markdown"})
    return summary
