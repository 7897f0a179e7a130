"""Poisoning findings: FedAvg and FedMedian under the matrix's strongest level, and the stealth of the lowest.

With several training seeds (``attacks.poison.seeds``), every deciding configuration has a clean and an
attacked run per seed, paired by seed: the unseen-MAE ratio gets a 95 % interval over the seeds
(``paired_ratio_interval``), the detector's margin one over the seeds too (``mean_interval``), and the
statuses and verdict levels are read from those intervals. A configuration run once is shown, and judges
nothing while an interval exists for the same claim. A matrix run with one seed falls back to the
conservative single-run rule (``single_run_status``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fedi2i.attacks.poisoning.summary import MIN_GAP, majority_attack, stealth_attack
from fedi2i.audit.findings.common import (LEVEL_ORDER, SINGLE_RUN_NOISE, Comparison, Threat, fmt, level, parts_dict,
                                          typed_results, verdict_range)
from fedi2i.audit.intervals import (MIN_SEEDS, Interval, SeededRun, Status, any_status, joint_status, mean_interval,
                                    paired_ratio_interval, status_from_interval)
from fedi2i.audit.schema import PoisonEffect, PoisonResult

Config = tuple[str, str, str, int]  # (rule, attack, level, n_malicious)
INOPERATIVE = 1.5  # the study's "inoperative": unseen MAE at least x1.5 the clean run's
RESTORED = 1.2  # the study's "close to baseline": within x1.2
POISON_HIGH, POISON_MEDIUM = 1.5, 1.1  # exposure levels of the poisoning threat row (MAE ratio)


def poison_results(cells: dict[str, dict]) -> list[PoisonResult]:
    """Every poisoning run that trained (skipped cells left out), typed."""
    return [r for r in typed_results(cells, "poison", PoisonResult).values() if r.status == "done"]


def _unseen_mae(row: PoisonResult) -> float | None:
    """Unseen-centre MAE of a poisoning run; a collapsed or diverged federation counts as infinite."""
    if row.collapsed:
        return math.inf
    mae = row.unseen_mean.get("mae")
    if mae is None or not math.isfinite(mae):
        return math.inf if row.diverged else None
    return mae


def _config(row: PoisonResult) -> Config:
    return row.rule, row.attack, row.level, row.n_malicious


def _seed_key(row: PoisonResult, base: int | None) -> int | None:
    """The run's training seed; a cell written before seeds were stored is replicate 0, with the seed of the
    matrix's other replicate-0 runs."""
    return row.seed if row.seed is not None else base if row.replicate == 0 else None


@dataclass
class Effect:
    """An attacked configuration against its rule's clean runs of the same seeds (unseen MAE per seed,
    ``inf`` for a collapsed or diverged run, None where missing), first seed the matrix's own."""

    config: Config
    seeds: list[int | None]
    rounds: int | None
    clean: list[float | None]
    hit: list[float | None]
    interval: Interval | None  # over paired seeds; None with fewer than MIN_SEEDS
    note: str = ""

    @property
    def single(self) -> float | None:
        """Ratio of the matrix's own pair (the first seed), for a configuration run once."""
        c, a = (self.clean[0], self.hit[0]) if self.seeds else (None, None)
        return a / c if a is not None and c else None

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)

    def record(self, judged: bool) -> PoisonEffect:
        iv = self.interval
        rule, attack, lv, n = self.config
        kept = lambda values: [v if v is not None and math.isfinite(v) else None for v in values]  # noqa: E731
        return PoisonEffect(rule=rule, attack=attack, level=lv, n_malicious=n, rounds=self.rounds, seeds=self.seeds,
                            clean_mae=kept(self.clean), attacked_mae=kept(self.hit),
                            collapsed=[v == math.inf for v in self.hit],
                            ratio=[iv.point, iv.low, iv.high] if iv else None, judged=judged, note=self.note)


def poison_effects(rows: list[PoisonResult]) -> dict[Config, Effect]:
    """Every attacked configuration paired with its rule's baseline, seed by seed (never by position).

    Seeds without both runs are left out of the pairing. With at least ``MIN_SEEDS`` pairs with a usable
    MAE on both sides the ratio gets its interval; runs of different lengths get none (a note says why).
    """
    base = next((r.seed for r in rows if r.replicate == 0 and r.seed is not None), None)
    by_config: dict[Config, dict[int | None, PoisonResult]] = {}
    clean_by_rule: dict[str, dict[int | None, PoisonResult]] = {}
    for r in rows:
        seed = _seed_key(r, base)
        if r.attack == "none":
            clean_by_rule.setdefault(r.rule, {})[seed] = r
        else:
            by_config.setdefault(_config(r), {})[seed] = r
    out: dict[Config, Effect] = {}
    for config, runs in by_config.items():
        clean_runs = clean_by_rule.get(config[0], {})
        seeds = sorted((s for s in runs if s in clean_runs), key=lambda s: (runs[s].replicate, s or 0))
        clean = [_unseen_mae(clean_runs[s]) for s in seeds]
        hit = [_unseen_mae(runs[s]) for s in seeds]
        usable = [i for i, (c, h) in enumerate(zip(clean, hit)) if c is not None and math.isfinite(c) and h is not None]
        rounds = {runs[s].rounds for s in seeds} | {clean_runs[s].rounds for s in seeds}
        interval, note = None, ""
        if len(usable) >= MIN_SEEDS:
            try:
                interval = paired_ratio_interval(
                    [SeededRun(seeds[i] or 0, clean_runs[seeds[i]].rounds or 0, clean[i]) for i in usable],  # type: ignore[arg-type]
                    [SeededRun(seeds[i] or 0, runs[seeds[i]].rounds or 0, hit[i]) for i in usable])  # type: ignore[arg-type]
            except ValueError as exc:
                note = f"no interval: {exc}"
        elif len(seeds) >= MIN_SEEDS:
            note = f"no interval: {len(usable)} of {len(seeds)} seeds have a usable clean and attacked MAE"
        out[config] = Effect(config, seeds, next(iter(rounds)) if len(rounds) == 1 else None, clean, hit,
                             interval, note)
    return out


def _hu(v: float | None) -> str:
    return "collapsed" if v == math.inf else f"{fmt(v, 0)} HU"


def _times(v: float | None) -> str:
    return "collapsed" if v == math.inf else f"x{fmt(v)}"


def _ratio_text(effect: Effect) -> str:
    """``x2.08 [95% CI 1.61-2.69]``, or what the seeds did where a collapse makes the ratio infinite."""
    iv = effect.interval
    if iv is None:
        return _times(effect.single)
    hits = effect.hit
    collapsed = sum(1 for v in hits if v == math.inf)
    if collapsed == len(hits):
        return f"collapsed in all {len(hits)} seeds"
    if collapsed:
        return f"collapsed in {collapsed} of {len(hits)} seeds (95% CI from x{iv.low:.2f} up)"
    return f"x{iv.text()}"


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


def _part(config: Config, majority: set[int]) -> str:
    _, attack, lv, n = config
    who = f"{n} malicious" + (" (majority attack)" if n in majority else "")
    return f"{attack} {lv}, {who}"


def _claim(effects: list[Effect], majority: set[int], threshold: float, *, claim_above: bool
           ) -> tuple[str, Status | None, dict[str, list[float | None]]]:
    """Text, status and intervals of a ratio claim over ``effects`` (the configurations it reads).

    Read from the intervals where any configuration has one (those without are shown, and judge nothing);
    else from single runs. Status None: nothing to judge.
    """
    with_iv = [e for e in effects if e.interval is not None]
    if not effects:
        return "no configuration to judge", None, {}
    if with_iv:
        parts = {_part(e.config, majority): e.interval for e in with_iv}
        if claim_above:
            status = any_status(status_from_interval(iv, threshold, math.inf) for iv in parts.values())
        else:
            status = joint_status(status_from_interval(iv, -math.inf, threshold, above="not reproduced")
                                  for iv in parts.values())
        seeds = sorted({e.n_seeds for e in with_iv})
        text = (f"unseen MAE vs clean over {'/'.join(map(str, seeds))} paired seeds (95% CI): "
                + ", ".join(f"{_ratio_text(e)} at {_part(e.config, majority)}" for e in with_iv))
        shown = [e for e in effects if e.interval is None]
        if shown:
            text += ("; run once, shown and not judged: "
                     + ", ".join(f"{_times(e.single)} at {_part(e.config, majority)}" for e in shown))
        return text, status, parts_dict(parts)
    ratios = [e.single for e in effects if e.single is not None]
    text = ("unseen MAE vs clean: " + ", ".join(f"{_times(e.single)} at {_part(e.config, majority)}" for e in effects)
            + f" ({SINGLE_RUN_NOTE})")
    status = single_run_status(ratios, threshold, claim_above=claim_above) if ratios else None
    return text, status, {}


def _threat_level(effects: list[Effect]) -> tuple[str, dict[str, list[float | None]]]:
    """Exposure level of the worst attack on FedAvg: from the intervals where there are any (the worst
    attack at each end of its interval), else from the worst single ratio."""
    with_iv = [e for e in effects if e.interval is not None]
    if with_iv:
        def worst(end: Callable[[Interval], float]) -> str:
            return max((level(end(e.interval), POISON_HIGH, POISON_MEDIUM) for e in with_iv),  # type: ignore[arg-type]
                       key=("low", "medium", "high").index)
        return (verdict_range(worst(lambda iv: iv.low), worst(lambda iv: iv.high)),
                parts_dict({_part(e.config, set()): e.interval for e in with_iv}))
    singles = [e.single for e in effects if e.single is not None]
    return level(max(singles) if singles else None, POISON_HIGH, POISON_MEDIUM), {}


def _mean_mae(values: Iterable[float | None]) -> float | None:
    """Mean unseen MAE over seeds; a collapse makes it infinite, a missing value leaves it unknown."""
    vals = list(values)
    if not vals or any(v is None for v in vals):
        return None
    return sum(vals) / len(vals)  # type: ignore[arg-type]


def _poisoning(rows: list[PoisonResult], levels: dict[str, list[str]], detection: dict,
               threats: list[Threat], comps: list[Comparison]) -> list[PoisonEffect]:
    """Every attack of the matrix at its highest level; FedAvg judged on its worst case, FedMedian per number
    of malicious centres. FedMedian's verdict uses only the counts its guarantee covers (a malicious
    minority within its tolerance); a majority attack is shown, labelled, and judged by nothing. With
    replicated seeds FedAvg is judged on the configurations run with every seed (a malicious minority)."""
    first = [r for r in rows if r.replicate == 0]
    counts = sorted({r.n_malicious for r in first if r.attack != "none"})
    majority = {r.n_malicious for r in first
                if r.attack != "none" and r.n_malicious and majority_attack(r.n_malicious, r.n_clients)}
    known = [r.tolerates for r in first if r.rule == "fedmedian"]
    tolerates = max(known) if known else None
    covered = [n for n in counts if n not in majority and (tolerates is None or n <= tolerates)]
    high = {a: lv[-1] for a, lv in levels.items()}
    effects = poison_effects(rows)

    def at_high(rule: str, ns: list[int]) -> list[Effect]:
        return [effects[(rule, a, high[a], n)] for a in levels for n in ns if (rule, a, high[a], n) in effects]

    def clean_mean(rule: str) -> float | None:
        runs = [_unseen_mae(r) for r in rows if r.rule == rule and r.attack == "none"]
        return _mean_mae(runs) if runs else None

    avg_all, med_all = at_high("fedavg", counts), at_high("fedmedian", counts)
    replicated = any(e.interval is not None for e in avg_all + med_all)
    # with replicates, FedAvg is judged on the configurations run with every seed
    avg_judged = [e for e in avg_all if e.interval is not None] if replicated else avg_all
    med_judged = at_high("fedmedian", covered)

    def mae_list(found: list[Effect]) -> str:
        return ", ".join(f"{_hu(_mean_mae(e.hit))} at {_part(e.config, majority)}" for e in found) or "not run"

    seeds_txt = (f" (mean over {'/'.join(map(str, sorted({e.n_seeds for e in avg_all + med_all if e.interval})))} "
                 "seeds where replicated)" if replicated else "")
    verdict, verdict_iv = _threat_level(avg_judged or avg_all)
    threats.append(Threat(
        f"Poisoning ({', '.join(levels)} from malicious centres)",
        f"FedAvg unseen MAE at the highest level{seeds_txt}: {mae_list(avg_all)} (clean {_hu(clean_mean('fedavg'))})",
        "median aggregation (FedMedian)",
        f"FedMedian unseen MAE: {mae_list(med_all)} (clean {_hu(clean_mean('fedmedian'))})",
        verdict, verdict_iv))

    text, status, ivs = _claim(avg_all, majority, INOPERATIVE, claim_above=True)
    comps.append(Comparison("High noise makes FedAvg inoperative", "federation inoperative", text,
                            status or "not measured", ivs))

    text, status, ivs = _claim(med_judged, majority, RESTORED, claim_above=False)
    beside = [e for e in med_all if e not in med_judged]
    if beside:
        text += ("; beside it, not judged (outside the median's guarantee): "
                 + ", ".join(f"{_ratio_text(e)} at {_part(e.config, majority)}" for e in beside))
    if counts and not covered:
        text += "; no configuration within FedMedian's guarantee (a malicious minority), so no verdict"
    comps.append(Comparison("FedMedian restores performance under high noise", "close to baseline in most scenarios",
                            text, status if status and med_judged else "not measured", ivs))

    det = detection.get(stealth_attack(levels))
    if det:
        threat, comp = _stealth(det, levels[stealth_attack(levels)][0], {str(n) for n in majority})
        threats.append(threat)
        comps.append(comp)
    judged = {id(e) for e in avg_judged + med_judged}
    return [e.record(id(e) in judged) for e in effects.values()]


def _stealth(det: dict, low: str, majority: set[str] = frozenset()) -> tuple[Threat, Comparison]:
    """Is the lowest noise level separable from honest centres? Judged by the detector's margin (lowest
    attacker score minus highest honest score) per number of malicious centres, not the pooled AUC, which
    can be high while an honest centre still outscores an attacker. Majority attacks are listed but judge
    nothing: a detector that scores centres against the others cannot be expected to single out a majority.
    Nor does a split without a finite margin (every attacker's score non-finite): it is "not measured".

    Where the level ran with several seeds, the margin of each split gets a 95 % interval over the seeds,
    and the status reads it against ``MIN_GAP``: stealthy ("reproduced") when it lies below, separated
    ("exceeded") when above, "inconclusive" across; the verdict is read at both ends of the interval.
    """
    stops = det.get("stops_separating_at_by_malicious") or {}
    margins = det.get("margin", {}).get(low, {})
    per_seed = (det.get("margin_by_seed") or {}).get(low, {})
    intervals = {k: mean_interval(v) for k, v in per_seed.items()}
    majority = set(majority) | set(det.get("majority_splits") or ())
    all_splits = sorted((k for k in stops if k != "all"), key=int) or ["all"]
    splits = [k for k in all_splits if k not in majority and (margins.get(k) is not None or intervals.get(k))]

    def said(split: str) -> str:
        who = "pooled runs" if split == "all" else f"{split} malicious"
        if split in majority:
            who += " (majority attack, not judged)"
        iv = intervals.get(split)
        if margins.get(split) is None and iv is None:
            return f"{who}: not measured at {low} (no finite detector score)"
        stop = stops.get(split)
        where = f"not separated up to level {stop}" if stop else "separated at every level"
        margin = (f"margin at {low} {iv.text()} over {len([v for v in per_seed[split] if v is not None])} seeds"
                  if iv else f"margin at {low} {fmt(margins.get(split))}")
        return f"{who}: {where} ({margin})"

    text = "; ".join(said(k) for k in all_splits)
    auc = "detector AUC per level: " + ", ".join(f"{lv} {fmt(a)}" for lv, a in det["auc"].items())
    finding = ("Low noise is stealthy (looks like heterogeneity)", "indistinguishable from natural heterogeneity")
    monitor = "update monitor (robust z-scores over rounds)"
    if not splits:
        note = text + "; no scenario with an honest majority and finite scores, so no verdict"
        return (Threat("Stealthy low-level poisoning", note, monitor, auc, "not measured"),
                Comparison(*finding, note, "not measured"))
    design = splits[0]  # the fewest malicious centres: the detector's design case
    others_hidden = any(margins[k] < MIN_GAP for k in splits[1:] if margins.get(k) is not None)
    others_stop = any(stops.get(k) for k in splits)

    def verdict_at(margin: float) -> str:
        return "high" if margin < MIN_GAP else "medium" if others_hidden or others_stop else "low"

    iv = intervals.get(design)
    if iv is not None:
        status = status_from_interval(iv, -math.inf, MIN_GAP, above="exceeded")
        verdict = verdict_range(verdict_at(iv.high), verdict_at(iv.low))
        ivs = parts_dict({f"{design} malicious" if design != "all" else "pooled": iv})
    else:
        stealthy = margins[design] < MIN_GAP
        status, verdict, ivs = ("reproduced" if stealthy else "exceeded"), verdict_at(margins[design]), {}
    return (Threat("Stealthy low-level poisoning", text, monitor, auc, verdict, ivs),
            Comparison(*finding, text, status, ivs))


def poisoning_findings(cells: dict[str, dict], detection: dict | None = None
                       ) -> tuple[list[Threat], list[Comparison]]:
    """The poisoning threat rows and the study's poisoning findings."""
    threats, comps, _ = poisoning_parts(cells, detection)
    return threats, comps


def poisoning_parts(cells: dict[str, dict], detection: dict | None = None
                    ) -> tuple[list[Threat], list[Comparison], list[PoisonEffect]]:
    """The poisoning rows, and every attacked configuration's paired effect (for the report and results.json)."""
    threats: list[Threat] = []
    comps: list[Comparison] = []
    rows = poison_results(cells)
    found: dict[str, list[str]] = {}
    for r in rows:
        if r.attack != "none" and r.level not in found.setdefault(r.attack, []):
            found[r.attack].append(r.level)
    levels = {a: sorted(lv, key=lambda x: LEVEL_ORDER.index(x) if x in LEVEL_ORDER else len(LEVEL_ORDER))
              for a, lv in found.items()}
    effects = _poisoning(rows, levels, detection or {}, threats, comps) if levels else []
    return threats, comps, effects
