"""Turn audit cell results into the numbers a reader needs: exposure per threat and the study comparison.

Every number here is read from cell results; nothing is assumed. A finding whose cells failed or did
not run says "not measured". A study status is read from a 95 % interval where the cells carry one
(membership AUCs, over patients); where they do not (single poisoning runs), the finding says so and only
an effect beyond ``SINGLE_RUN_NOISE`` decides it. An undecided status reads "inconclusive".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from fedi2i.attacks.poisoning.summary import MIN_GAP, attack_levels, majority_attack, n_clients_of
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


def _level(value: float | None, high: float, medium: float) -> str:
    if value is None:
        return "not measured"
    return "high" if value >= high else "medium" if value >= medium else "low"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# --- synthesis quality -------------------------------------------------------------------------
def quality(cells: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Unseen-centre metrics per training run (mean over the unseen centres' patients); a run with a
    missing or non-finite metric (a diverged model) is left out, and listed by ``unusable_numbers``."""
    out = {}
    for key, result in ok_results(cells, "train").items():
        vals = list((result.get("unseen") or {}).values())
        if vals and all(_finite(v.get(m)) for v in vals for m in ("mae", "psnr", "ssim")):
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
                         if not all(_finite(v.get(m)) for m in ("mae", "psnr", "ssim")))
            why += [f"unseen-centre metrics not finite for {', '.join(bad)} (diverged model)"] if bad else []
            why += [] if result.get("unseen") else ["no unseen-centre metrics"]
        elif kind == "poison" and result.get("status") == "done":
            if result.get("collapsed"):
                why.append(f"federation collapsed in round {result.get('collapsed_round')}: no test metrics")
            elif not all(_finite(v) for v in (result.get("unseen_mean") or {None: None}).values()):
                why.append("unseen-centre metrics missing or not finite (diverged model)")
            running = (result.get("detector") or {}).get("running") or {}
            bad = sorted(c for c, series in running.items() if not all(_finite(v) for v in series))
            why += [f"detector scores not finite for {', '.join(bad)} (left out of the ROC)"] if bad else []
        elif kind == "inversion" and not _finite(result.get("mri_ssim")):
            why.append("no finite reconstruction SSIM")
        elif kind == "membership" and result.get("methods") and not membership_aucs(result):
            why.append("no finite AUC for any method")
        if why:
            out.append({"key": key, "why": "; ".join(why)})
    return out


# --- membership inference ----------------------------------------------------------------------
def membership_aucs(result: dict[str, Any], methods: tuple[str, ...] | None = None,
                    level: str = "slice", field: str = "auc") -> list[float]:
    values = []
    for name, method in (result.get("methods") or {}).items():
        if methods is not None and name not in methods:
            continue
        if not method.get("available", True):
            continue
        for centre in (method.get("centres") or {}).values():
            v = (centre.get(level) or {}).get(field)
            if v is not None:
                values.append(float(v))
    return values


def same_centre_intervals(result: dict[str, Any], methods: tuple[str, ...] | None = None
                          ) -> dict[str, Interval | None]:
    """Slice-level AUC against same-centre non-members, with the patient-clustered bootstrap interval the
    membership attack stored beside it, per centre (and per method when several are read). None where no
    interval was computed (bootstrap turned off)."""
    out: dict[str, Interval | None] = {}
    for name, method in (result.get("methods") or {}).items():
        if (methods is not None and name not in methods) or not method.get("available", True):
            continue
        for centre, block in (method.get("centres") or {}).items():
            s = block.get("slice") or {}
            if s.get("auc_same_centre") is not None:
                label = centre if methods is not None and len(methods) == 1 else f"{name} {centre}"
                out[label] = Interval.from_ci(s["auc_same_centre"], s.get("auc_same_centre_ci95"))
    return out


def _interval_status(parts: dict[str, Interval | None], study_low: float, study_high: float,
                     **sides: Status) -> Status:
    """Every part must support the claim (``joint_status``); a part without an interval decides nothing."""
    return joint_status(status_from_interval(iv, study_low, study_high, **sides) if iv else "inconclusive"
                        for iv in parts.values())


def _parts_text(parts: dict[str, Interval | None]) -> str:
    return ", ".join(f"{k} {iv.text()}" if iv else f"{k} (no interval: bootstrap off)" for k, iv in parts.items())


def _parts_dict(parts: dict[str, Interval | None]) -> dict[str, list[float | None]]:
    return {k: [iv.point, iv.low, iv.high] for k, iv in parts.items() if iv}


def _best_text(parts: dict[str, Interval | None], point: float | None) -> str:
    """The best same-centre AUC with its interval, if the part that holds it has one."""
    iv = next((v for v in parts.values() if v and point is not None and v.point == point), None)
    return iv.text() if iv else _fmt(point)


def best_available_auc(result: dict[str, Any]) -> float | None:
    """Best same-centre AUC over methods: the membership signal itself, not the scanner confound
    (non-members from another centre can be rejected because of their scanner alone)."""
    values = membership_aucs(result, field="auc_same_centre")
    return max(values) if values else None


# --- inversion ----------------------------------------------------------------------------------
def inversion_rows(cells: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return list(ok_results(cells, "inversion").values())


def inversion_margin(row: dict[str, Any]) -> float:
    """SSIM above an empty (all-background) image on the same slices, best of MRI and CT.

    Raw 2D SSIM counts the air around the head: an all-background image already scores 0.2-0.8, so only
    the excess over that level is recovered anatomy. Rows without the level fall back to raw SSIM.
    """
    empty = row.get("background") or {}
    return max(row[f"{m}_ssim"] - (empty.get(f"{m}_ssim") or 0.0) for m in ("mri", "ct")
               if row.get(f"{m}_ssim") is not None)


def best_inversion(rows: list[dict[str, Any]], defence: str, methods: tuple[str, ...] | None = None
                   ) -> dict[str, Any] | None:
    """The most revealing row of a defence: largest SSIM excess over an empty image."""
    chosen = [r for r in rows if r.get("defence") == defence and (methods is None or r.get("method") in methods)
              and r.get("mri_ssim") is not None]
    return max(chosen, key=inversion_margin) if chosen else None


def _signed(v: float) -> str:
    return f"{v + 0.0:+.2f}" if abs(v) >= 0.005 else "+0.00"  # no "-0.00"


def _inversion_text(row: dict[str, Any]) -> str:
    return (f"{_signed(inversion_margin(row))} SSIM over an empty image ({row['method']}, batch {row['batch']}; "
            f"raw MRI SSIM {row['mri_ssim']:.2f}, CT SSIM {_fmt(row.get('ct_ssim'))})")


# --- poisoning ----------------------------------------------------------------------------------
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
    return "collapsed" if v == math.inf else f"{_fmt(v, 0)} HU"


def _times(v: float | None) -> str:
    return "collapsed" if v == math.inf else f"x{_fmt(v)}"


def _fmt(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def summarise(cells: dict[str, dict[str, Any]], detection: dict[str, Any] | None = None
              ) -> tuple[list[Threat], list[Comparison]]:
    """The security officer's table and the point-by-point comparison with the study."""
    threats: list[Threat] = []
    comps: list[Comparison] = []
    q = quality(cells)
    membership = ok_results(cells, "membership")
    inv = inversion_rows(cells)
    poison = poison_rows(cells)

    # membership inference
    plain = membership.get("membership/none")
    secure = membership.get("membership/secagg")
    dp = membership.get("membership/dp")
    fedmia = membership_aucs(plain, ("fedmia-loss",)) if plain else []
    best_plain = best_available_auc(plain) if plain else None
    best_secure = best_available_auc(secure) if secure else None
    best_dp = best_available_auc(dp) if dp else None
    defended = [x for x in ((best_secure, "secure aggregation"), (best_dp, "differential privacy")) if x[0] is not None]
    best_def = min(defended) if defended else (None, "secure aggregation")
    def_parts = same_centre_intervals(secure if best_def[1] == "secure aggregation" else dp) if defended else {}
    threats.append(Threat(
        "Membership inference (curious server learns who was in a centre's training set)",
        f"best same-centre AUC (membership itself) "
        f"{_best_text(same_centre_intervals(plain) if plain else {}, best_plain)}; beside it, FedMIA-I AUC up "
        f"to {_fmt(max(fedmia) if fedmia else None)} against all non-members ({CONFOUND})",
        best_def[1], f"best same-centre AUC {_best_text(def_parts, best_def[0])}", _level(best_plain, 0.8, 0.6)))
    parts = same_centre_intervals(plain, ("fedmia-loss",)) if plain else {}
    if parts:
        beside = (f"; beside it, against all non-members {min(fedmia):.2f}-{max(fedmia):.2f}, {CONFOUND}"
                  if fedmia else "")
        comps.append(Comparison(
            "FedMIA exposes membership", "AUC 0.92-0.99 across centres",
            f"FedMIA-I AUC against same-centre non-members (membership itself; slice level, 95% CI over patients): "
            f"{_parts_text(parts)}{beside}",
            _interval_status(parts, *STUDY["fedmia_auc"]), _parts_dict(parts)))
    elif fedmia:
        comps.append(Comparison("FedMIA exposes membership", "AUC 0.92-0.99 across centres",
                                f"no same-centre non-members, so membership itself is not measured; against all "
                                f"non-members {min(fedmia):.2f}-{max(fedmia):.2f}, {CONFOUND}", "not measured"))
    else:
        comps.append(Comparison("FedMIA exposes membership", "AUC 0.92-0.99", "not measured", "not measured"))
    secure_parts = same_centre_intervals(secure) if secure is not None else {}
    if secure_parts:
        fedmia_secure = membership_aucs(secure, FEDMIA_METHODS)
        ours = ("per-client FedMIA unavailable by construction; attacks on what the server sees, "
                if not fedmia_secure else f"FedMIA AUC up to {max(fedmia_secure):.2f}; ")
        ours += (f"same-centre AUC (95% CI over patients; chance up to {CHANCE_AUC}): {_parts_text(secure_parts)}")
        comps.append(Comparison("SecAgg brings membership inference to chance", "AUC 0.23-0.56", ours,
                                _interval_status(secure_parts, -math.inf, CHANCE_AUC, above="not reproduced"),
                                _parts_dict(secure_parts)))
    elif secure is not None:
        comps.append(Comparison("SecAgg brings membership inference to chance", "AUC 0.23-0.56",
                                "no same-centre AUC under secure aggregation", "not measured"))
    else:
        comps.append(Comparison("SecAgg brings membership inference to chance", "AUC 0.23-0.56", "not measured",
                                "not measured"))

    # synthesis quality under secure aggregation
    if "fedavg-none" in q and "fedavg-secagg" in q:
        a, b = q["fedavg-none"]["mae"], q["fedavg-secagg"]["mae"]
        rel = abs(b - a) / a
        comps.append(Comparison("SecAgg does not hurt image quality", "no degradation",
                                f"unseen MAE {a:.1f} HU (FedAvg) vs {b:.1f} HU (FedAvg+SecAgg), {rel:.1%} apart",
                                "reproduced" if rel <= 0.05 else "not reproduced"))

    # gradient inversion
    best_none = best_inversion(inv, "none")
    best_dlg = best_inversion(inv, "none", ("dlg",))
    inv_def = [(best_inversion(inv, d), d) for d in ("secagg", "dp")]
    inv_def = [(r, d) for r, d in inv_def if r is not None]
    if best_none is not None:
        if inv_def:
            r, d = min(inv_def, key=lambda x: inversion_margin(x[0]))
            defended_txt = _inversion_text(r)
            dname = {"secagg": "secure aggregation", "dp": "differential privacy"}[d]
        else:
            defended_txt, dname = "not measured", "secure aggregation"
        threats.append(Threat(
            "Gradient inversion (curious server reconstructs a centre's images from its update)",
            _inversion_text(best_none), dname, defended_txt,
            _level(inversion_margin(best_none), 0.5, STUDY["dlg_ssim"])))
    if best_dlg is not None:
        s, p = best_dlg["mri_ssim"], best_dlg["mri_psnr"]
        comps.append(Comparison("DLG recovers only coarse anatomy", "SSIM <= 0.16, PSNR <= 11 dB",
                                f"best DLG MRI SSIM {_signed(s).lstrip('+')}, PSNR {p:.1f} dB",
                                "reproduced" if s <= STUDY["dlg_ssim"] + 0.05 else "exceeded"))
    if best_none is not None:
        excess = inversion_margin(best_none)
        comps.append(Comparison("Stronger inversion than DLG (not in the study)", "SSIM <= 0.16 with DLG",
                                f"best {best_none['method']} (batch {best_none['batch']}): {_signed(excess)} SSIM over "
                                f"an empty image (raw SSIM {max(best_none['mri_ssim'], best_none.get('ct_ssim') or 0):.2f})",
                                "exceeded" if excess > STUDY["dlg_ssim"] else "reproduced"))

    # poisoning
    levels = {a: sorted(lv, key=lambda x: LEVEL_ORDER.index(x) if x in LEVEL_ORDER else len(LEVEL_ORDER))
              for a, lv in attack_levels(poison).items()}
    if levels:
        _poisoning(poison, levels, detection or {}, threats, comps)
    return threats, comps


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
        _level(worst, 1.5, 1.1)))
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
        return f"{who}: {where} (margin at {low} {_fmt(margins.get(split))})"

    text = "; ".join(said(k) for k in all_splits)
    auc = "detector AUC per level: " + ", ".join(f"{lv} {_fmt(a)}" for lv, a in det["auc"].items())
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


def as_dicts(items: list[Any]) -> list[dict[str, Any]]:
    return [asdict(i) for i in items]
