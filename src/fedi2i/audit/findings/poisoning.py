"""Poisoning findings: FedAvg and FedMedian under the matrix's strongest level, and the stealth of the lowest."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from fedi2i.attacks.poisoning.summary import MIN_GAP, attack_levels, majority_attack, n_clients_of
from fedi2i.audit.findings.common import (LEVEL_ORDER, SINGLE_RUN_NOISE, Comparison, Threat, fmt, level,
                                          ok_results)
from fedi2i.audit.intervals import Status

def poison_rows(cells: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in ok_results(cells, "poison").values() if r.get("status") == "done"]


def _unseen_mae(row: dict[str, Any]) -> float | None:
    """Unseen-centre MAE of a poisoning run; a collapsed or diverged federation counts as infinite."""
    if row.get("collapsed"):
        return math.inf
    mae = (row.get("unseen_mean") or {}).get("mae")
    return math.inf if mae is not None and not math.isfinite(mae) else mae


def poison_effect(rows: list[dict[str, Any]], rule: str, attack: str | None, level: str | None,
                  n_malicious: int | None = None) -> tuple[float | None, float | None]:
    """(unseen MAE under attack, same rule's no-attack MAE); worst over malicious counts unless one is given."""
    base = [_unseen_mae(r) for r in rows if r["rule"] == rule and r["attack"] == "none"]
    hit = [_unseen_mae(r) for r in rows if r["rule"] == rule and r["attack"] == attack and r["level"] == level
           and (n_malicious is None or r.get("n_malicious") == n_malicious)]
    hit = [h for h in hit if h is not None]
    return (max(hit) if hit else None), (base[0] if base and base[0] is not None else None)


def _ratio(hit: float | None, base: float | None) -> float | None:
    return hit / base if hit is not None and base else None


def _hu(v: float | None) -> str:
    return "collapsed" if v == math.inf else f"{fmt(v, 0)} HU"


def _times(v: float | None) -> str:
    return "collapsed" if v == math.inf else f"x{fmt(v)}"


def single_run_status(ratios: list[float], threshold: float, *, claim_above: bool) -> Status:
    """Status of a poisoning claim read from single runs (one clean, one attacked run per cell: no interval).

    Conservative rule: a single ratio decides only when it clears the study's threshold by the factor
    ``SINGLE_RUN_NOISE`` (the largest plausible run-to-run noise of a ratio of two single runs); anything
    nearer is "inconclusive". ``claim_above``: the claim is that some ratio reaches ``threshold`` ("FedAvg
    inoperative"); otherwise that every ratio stays within it ("FedMedian restores performance").
    """
    far_above = [r for r in ratios if r >= threshold * SINGLE_RUN_NOISE]
    far_below = [r for r in ratios if r <= threshold / SINGLE_RUN_NOISE]
    if claim_above:
        return "reproduced" if far_above else "not reproduced" if len(far_below) == len(ratios) else "inconclusive"
    return "not reproduced" if far_above else "reproduced" if len(far_below) == len(ratios) else "inconclusive"


SINGLE_RUN_NOTE = f"single runs, no interval: decided only beyond x{SINGLE_RUN_NOISE} run-to-run noise"


def _majority_counts(rows: list[dict[str, Any]]) -> set[int]:
    """Numbers of malicious centres that are half or more of a round's clients in some cell."""
    return {r["n_malicious"] for r in rows
            if r.get("n_malicious") and majority_attack(r["n_malicious"], n_clients_of(r))}


def _poisoning(rows: list[dict[str, Any]], levels: dict[str, list[str]], detection: dict[str, Any],
               threats: list[Threat], comps: list[Comparison]) -> None:
    """Every attack of the matrix at its highest level; FedAvg judged on its worst case, FedMedian per number
    of malicious centres. FedMedian's verdict uses only the counts its guarantee covers (a malicious
    minority within its tolerance); a majority attack is shown, labelled, and judged by nothing."""
    counts = sorted({r["n_malicious"] for r in rows if r.get("n_malicious")})
    majority = _majority_counts(rows)
    known = [r["tolerates"] for r in rows if r["rule"] == "fedmedian" and r.get("tolerates") is not None]
    tolerates = max(known) if known else None  # None: results that do not say, judged by majority alone
    covered = [n for n in counts if n not in majority and (tolerates is None or n <= tolerates)]
    high = {a: lv[-1] for a, lv in levels.items()}
    where = {a: f"{a} {high[a]}" for a in levels}
    avg_base = poison_effect(rows, "fedavg", None, None)[1]
    med_base = poison_effect(rows, "fedmedian", None, None)[1]
    avg = {a: poison_effect(rows, "fedavg", a, high[a])[0] for a in levels}
    med = {(a, n): poison_effect(rows, "fedmedian", a, high[a], n)[0] for a in levels for n in counts or [None]}
    avg_x = {a: _ratio(v, avg_base) for a, v in avg.items()}
    worst = max(avg_x.values(), key=lambda v: v or 0.0, default=None)

    def listing(values: dict[str, float | None], fmt: Callable[[float | None], str]) -> str:
        return ", ".join(f"{fmt(v)} at {where[a]}" for a, v in values.items())

    def by_count(fmt: Callable[[float | None], str], scale: float | None = None) -> str:
        parts = []
        for n in counts or [None]:
            values = {a: med[(a, n)] if scale is None else _ratio(med[(a, n)], scale) for a in levels}
            who = "all" if n is None else f"{n} (majority attack, no guarantee)" if n in majority else str(n)
            parts.append(f"{who} malicious: {listing(values, fmt)}")
        return "; ".join(parts)

    threats.append(Threat(
        f"Poisoning ({', '.join(levels)} from malicious centres)",
        f"FedAvg unseen MAE, worst over {'/'.join(map(str, counts)) or 'all'} malicious: "
        f"{listing(avg, _hu)} (clean {_hu(avg_base)})",
        "median aggregation (FedMedian)",
        f"FedMedian unseen MAE, {by_count(_hu)} (clean {_hu(med_base)})",
        level(worst, 1.5, 1.1)))
    ratios = [v for v in avg_x.values() if v is not None]
    comps.append(Comparison("High noise makes FedAvg inoperative", "federation inoperative",
                            f"unseen MAE vs clean: {listing(avg_x, _times)} ({SINGLE_RUN_NOTE})",
                            single_run_status(ratios, 1.5, claim_above=True) if ratios else "not measured"))
    judged = [_ratio(med[(a, n)], med_base) for a in levels for n in covered]
    judged = [v for v in judged if v is not None]
    ours = f"unseen MAE vs clean, {by_count(_times, med_base)} ({SINGLE_RUN_NOTE})"
    if counts and not covered:
        ours += "; no configuration within FedMedian's guarantee (a malicious minority), so no verdict"
    comps.append(Comparison("FedMedian restores performance under high noise", "close to baseline in most scenarios",
                            ours, single_run_status(judged, 1.2, claim_above=False) if judged else "not measured"))
    noise = [a for a in levels if "noise" in a]
    stealth_attack = "data_noise" if "data_noise" in noise else (noise or list(levels))[0]
    det = detection.get(stealth_attack)
    if det:
        threat, comp = _stealth(det, levels[stealth_attack][0], {str(n) for n in majority})
        threats.append(threat)
        comps.append(comp)


def _stealth(det: dict[str, Any], low: str, majority: set[str] = frozenset()) -> tuple[Threat, Comparison]:
    """Is the lowest noise level separable from honest centres? Judged by the detector's margin (lowest
    attacker score minus highest honest score) per number of malicious centres, not the pooled AUC, which
    can be high while an honest centre still outscores an attacker. Majority attacks are listed but judge
    nothing: a detector that scores centres against the others cannot be expected to single out a majority.
    Nor does a split without a finite margin (every attacker's score non-finite): it is "not measured"."""
    stops = det.get("stops_separating_at_by_malicious") or {}
    margins = det.get("margin", {}).get(low, {})
    majority = set(majority) | set(det.get("majority_splits") or ())
    all_splits = sorted((k for k in stops if k != "all"), key=int) or ["all"]
    splits = [k for k in all_splits if k not in majority and margins.get(k) is not None]

    def said(split: str) -> str:
        who = "pooled runs" if split == "all" else f"{split} malicious"
        if split in majority:
            who += " (majority attack, not judged)"
        if margins.get(split) is None:
            return f"{who}: not measured at {low} (no finite detector score)"
        stop = stops.get(split)
        where = f"not separated up to level {stop}" if stop else "separated at every level"
        return f"{who}: {where} (margin at {low} {fmt(margins.get(split))})"

    text = "; ".join(said(k) for k in all_splits)
    auc = "detector AUC per level: " + ", ".join(f"{lv} {fmt(a)}" for lv, a in det["auc"].items())
    finding = ("Low noise is stealthy (looks like heterogeneity)", "indistinguishable from natural heterogeneity")
    if not splits:
        note = text + "; no scenario with an honest majority and finite scores, so no verdict"
        return (Threat("Stealthy low-level poisoning", note, "update monitor (robust z-scores over rounds)", auc,
                       "not measured"), Comparison(*finding, note, "not measured"))
    hidden = [k for k in splits if margins[k] < MIN_GAP]
    stealthy_alone = splits[0] in hidden  # the fewest malicious centres: the detector's design case
    verdict = "high" if stealthy_alone else "medium" if hidden or any(stops.get(k) for k in splits) else "low"
    threat = Threat("Stealthy low-level poisoning", text, "update monitor (robust z-scores over rounds)", auc, verdict)
    return threat, Comparison(*finding, text, "reproduced" if stealthy_alone else "exceeded")


def poisoning_findings(cells: dict[str, dict[str, Any]], detection: dict[str, Any] | None = None) -> tuple[list[Threat], list[Comparison]]:
    """The poisoning threat rows and the study's poisoning findings."""
    threats: list[Threat] = []
    comps: list[Comparison] = []
    poison = poison_rows(cells)
    levels = {a: sorted(lv, key=lambda x: LEVEL_ORDER.index(x) if x in LEVEL_ORDER else len(LEVEL_ORDER))
              for a, lv in attack_levels(poison).items()}
    if levels:
        _poisoning(poison, levels, detection or {}, threats, comps)
    return threats, comps
