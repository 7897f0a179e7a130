"""Study statuses are read from intervals: "inconclusive" when an interval straddles the study's figure,
and paired-seed ratios pair runs by seed, never by position."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from fedi2i.audit.findings import single_run_status, summarise
from fedi2i.audit.intervals import (Interval, SeededRun, any_status, joint_status, mean_interval,
                                    paired_ratio_by_key, paired_ratio_interval, status_from_interval)
from fedi2i.audit.schema import CellEntry, MembershipResult

FEDMIA = (0.92, 0.99)


@pytest.mark.parametrize("interval", [Interval(0.93, 0.85, 0.97),   # across the study's lower bound
                                      Interval(0.97, 0.95, 1.00),   # across its upper bound
                                      Interval(0.95, 0.80, 1.00)])  # across both
def test_interval_straddling_the_study_figure_is_inconclusive(interval: Interval) -> None:
    assert status_from_interval(interval, *FEDMIA) == "inconclusive"


def test_interval_clearly_on_one_side_gives_that_side() -> None:
    assert status_from_interval(Interval(0.95, 0.93, 0.98), *FEDMIA) == "reproduced"
    assert status_from_interval(Interval(0.60, 0.50, 0.91), *FEDMIA) == "not reproduced"
    assert status_from_interval(Interval(0.97, 0.96, 0.99), 0.92, 0.95) == "exceeded"
    # a one-sided figure where a lower number is the claim: "AUC at chance (<= 0.65)"
    chance = dict(above="not reproduced")
    assert status_from_interval(Interval(0.80, 0.70, 0.90), -math.inf, 0.65, **chance) == "not reproduced"
    assert status_from_interval(Interval(0.50, 0.40, 0.60), -math.inf, 0.65, **chance) == "reproduced"
    assert status_from_interval(Interval(0.60, 0.45, 0.75), -math.inf, 0.65, **chance) == "inconclusive"


def test_interval_text_reads_unambiguously_with_negative_ends() -> None:
    assert Interval(0.68, 0.63, 0.73).text() == "0.68 [95% CI 0.63-0.73]"
    assert Interval(-0.37, -0.47, -0.27).text() == "-0.37 [95% CI -0.47 to -0.27]"
    assert Interval(-0.28, -0.75, 0.19).text() == "-0.28 [95% CI -0.75 to 0.19]"


def test_joint_status_needs_every_part() -> None:
    assert joint_status(["reproduced", "exceeded"]) == "reproduced"
    assert joint_status(["exceeded", "exceeded"]) == "exceeded"
    assert joint_status(["reproduced", "inconclusive"]) == "inconclusive"
    assert joint_status(["inconclusive", "not reproduced"]) == "not reproduced"


def _runs(values: dict[int, float], rounds: int = 5) -> list[SeededRun]:
    return [SeededRun(seed, rounds, v) for seed, v in values.items()]


def test_paired_ratio_pairs_by_seed_not_by_position() -> None:
    # seeds differ a lot (training noise) but each attacked run is exactly twice its clean twin: paired, the
    # ratio is 2 with no spread at all; the same runs listed in another order pair the same way
    clean = {1: 100.0, 2: 300.0, 3: 200.0, 4: 400.0, 5: 150.0}
    attacked = {s: 2 * v for s, v in clean.items()}
    ordered = paired_ratio_interval(_runs(clean), _runs(attacked))
    assert (ordered.point, ordered.low, ordered.high) == pytest.approx((2.0, 2.0, 2.0), abs=1e-12)
    shuffled = _runs(attacked)
    random.Random(0).shuffle(shuffled)
    assert paired_ratio_interval(_runs(clean)[::-1], shuffled) == ordered
    # the same values given to other seeds are other pairs: the ratios now spread, and so does the interval
    mixed = paired_ratio_interval(_runs(clean), _runs(dict(zip(clean, [2 * clean[s] for s in (3, 1, 5, 2, 4)]))))
    assert mixed.low < 1.5 and mixed.high > 2.5


def test_paired_ratio_is_the_t_interval_of_the_log_ratios() -> None:
    # per-seed ratios x1.1, x1.3, x1.5; R: exp(t.test(log(c(1.1, 1.3, 1.5)))$conf.int) = 0.8770 1.8965, and the
    # geometric mean is 1.2897
    iv = paired_ratio_interval(_runs({1: 100.0, 2: 200.0, 3: 300.0}), _runs({1: 110.0, 2: 260.0, 3: 450.0}))
    assert (iv.point, iv.low, iv.high) == pytest.approx((1.2897, 0.8770, 1.8965), abs=1e-4)


def test_three_seeds_give_an_interval_wider_than_their_range() -> None:
    """With 3 seeds the bootstrap's interval is about the range of the per-seed ratios, which misses the
    population's ratio about a quarter of the time; the t-interval reaches beyond it on both sides, so
    ratios x1.6-x1.8 do not yet establish "at least x1.5"."""
    iv = paired_ratio_interval(_runs({1: 100.0, 2: 100.0, 3: 100.0}), _runs({1: 160.0, 2: 170.0, 3: 180.0}))
    assert iv.low < 1.6 and iv.high > 1.8
    assert status_from_interval(iv, 1.5, math.inf) == "inconclusive"
    tight = paired_ratio_interval(_runs({1: 100.0, 2: 100.0, 3: 100.0}), _runs({1: 168.0, 2: 170.0, 3: 172.0}))
    assert status_from_interval(tight, 1.5, math.inf) == "reproduced"


def test_collapsed_runs_make_the_ratio_infinite() -> None:
    clean = _runs({1: 300.0, 2: 320.0, 3: 290.0})
    every = paired_ratio_interval(clean, _runs({1: math.inf, 2: math.inf, 3: math.inf}))
    assert every == Interval(math.inf, math.inf, math.inf)
    assert status_from_interval(every, 1.5, math.inf) == "reproduced"
    # one seed collapsed: the upper end is infinite, the lower end read from the two that did not
    some = paired_ratio_interval(clean, _runs({1: 660.0, 2: math.inf, 3: 560.0}))  # x2.2 and x1.93
    assert some.high == math.inf and 0 < some.low < 1.93
    # two collapsed: one finite ratio says nothing about the spread, so the lower end is unknown (0)
    assert paired_ratio_interval(clean, _runs({1: 600.0, 2: math.inf, 3: math.inf})).low == 0.0


def test_paired_ratio_refuses_runs_that_do_not_pair() -> None:
    clean = _runs({1: 300.0, 2: 310.0, 3: 320.0})
    with pytest.raises(ValueError, match=r"do not pair by seed: clean only \[3\], attacked only \[4\]"):
        paired_ratio_interval(clean, _runs({1: 400.0, 2: 410.0, 4: 420.0}))
    with pytest.raises(ValueError, match="differ in length"):
        paired_ratio_interval(clean, _runs({1: 400.0, 2: 410.0}) + [SeededRun(3, 10, 420.0)])
    with pytest.raises(ValueError, match="seed 2 appears twice"):
        paired_ratio_interval(clean + [SeededRun(2, 5, 305.0)], _runs({1: 400.0, 2: 410.0, 3: 420.0}))
    with pytest.raises(ValueError, match="at least 3 are needed"):
        paired_ratio_interval(clean[:2], _runs({1: 400.0, 2: 410.0}))


def test_ratio_over_patients_pairs_by_patient() -> None:
    plain = {"E/p1": 100.0, "E/p2": 200.0, "E/p3": 300.0, "E/p4": 150.0}
    secure = {"E/p4": 151.5, "E/p3": 303.0, "E/p2": 202.0, "E/p1": 101.0, "E/p9": 999.0}  # p9: only one model
    iv = paired_ratio_by_key(plain, secure)
    assert iv is not None and (iv.point, iv.low, iv.high) == pytest.approx((1.01, 1.01, 1.01), abs=1e-12)
    assert paired_ratio_by_key({"E/p1": 100.0, "E/p2": 200.0}, {"E/p1": 100.0, "E/p2": 200.0}) is None


def test_mean_interval_needs_three_finite_values() -> None:
    assert mean_interval([0.2, None, 0.3]) is None
    iv = mean_interval([0.1, 0.2, 0.3])
    assert iv is not None and iv.point == pytest.approx(0.2) and iv.low < 0.1 and iv.high > 0.3


def test_any_status_needs_one_clear_part() -> None:
    assert any_status(["not reproduced", "reproduced"]) == "reproduced"
    assert any_status(["not reproduced", "inconclusive"]) == "inconclusive"
    assert any_status(["not reproduced", "not reproduced"]) == "not reproduced"


def test_single_run_ratio_decides_only_far_beyond_noise() -> None:
    assert single_run_status([1.67], 1.5, claim_above=True) == "inconclusive"
    assert single_run_status([1.2, math.inf], 1.5, claim_above=True) == "reproduced"
    assert single_run_status([0.95, 0.98], 1.5, claim_above=True) == "not reproduced"
    assert single_run_status([1.03], 1.2, claim_above=False) == "inconclusive"
    assert single_run_status([1.03, 3.0], 1.2, claim_above=False) == "not reproduced"


def _membership(key: str, same: dict[str, tuple[float, float, float]], all_auc: float) -> dict[str, Any]:
    """A membership cell through the schema: FedMIA-I per centre, same-centre AUC with its interval."""
    centres = {c: {"slice": {"auc": all_auc, "auc_same_centre": p, "auc_same_centre_ci95": [lo, hi]}}
               for c, (p, lo, hi) in same.items()}
    result = MembershipResult(methods={"fedmia-loss": {"available": True, "centres": centres}})
    return CellEntry(key=key, kind="membership", title=key, status="ok", result=result.to_dict()).to_dict()


def _finding(comps: list, name: str):
    return next(c for c in comps if c.finding.startswith(name))


def test_membership_finding_with_a_straddling_interval_is_inconclusive() -> None:
    cells = {"membership/none": _membership("membership/none", {"C": (0.95, 0.93, 0.98), "D": (0.58, 0.24, 0.96)},
                                            all_auc=0.91)}
    threats, comps = summarise(cells)
    fedmia = _finding(comps, "FedMIA exposes membership")
    assert fedmia.status == "inconclusive"
    assert "D 0.58 [95% CI 0.24-0.96]" in fedmia.ours and "C 0.95 [95% CI 0.93-0.98]" in fedmia.ours
    # the same-centre AUC leads; the all-non-member AUC comes beside it, with its confound named
    assert fedmia.ours.index("same-centre") < fedmia.ours.index("0.91") and "centre confound" in fedmia.ours
    assert fedmia.intervals == {"C": [0.95, 0.93, 0.98], "D": [0.58, 0.24, 0.96]}
    membership = next(t for t in threats if t.threat.startswith("Membership"))
    assert membership.exposure.startswith("best same-centre AUC (membership itself) 0.95 [95% CI 0.93-0.98]")
    # both centres clearly inside the study's range: reproduced; one clearly below: not reproduced
    cells["membership/none"] = _membership("membership/none", {"C": (0.95, 0.93, 0.98), "D": (0.94, 0.92, 0.97)},
                                           all_auc=0.91)
    assert _finding(summarise(cells)[1], "FedMIA exposes membership").status == "reproduced"
    cells["membership/none"] = _membership("membership/none", {"C": (0.95, 0.93, 0.98), "D": (0.58, 0.40, 0.70)},
                                           all_auc=0.91)
    assert _finding(summarise(cells)[1], "FedMIA exposes membership").status == "not reproduced"


def test_membership_threat_level_is_read_at_both_ends_of_the_best_interval() -> None:
    # the best of many methods and centres is an optimistic point: 0.75 alone reads "medium", its interval
    # reaching from 0.62 to 0.86 crosses into "high"
    cells = {"membership/none": _membership("membership/none", {"C": (0.75, 0.62, 0.86), "D": (0.55, 0.45, 0.65)},
                                            all_auc=0.91)}
    membership = next(t for t in summarise(cells)[0] if t.threat.startswith("Membership inference"))
    assert membership.verdict == "medium to high"
    cells = {"membership/none": _membership("membership/none", {"C": (0.75, 0.70, 0.78)}, all_auc=0.91)}
    membership = next(t for t in summarise(cells)[0] if t.threat.startswith("Membership inference"))
    assert membership.verdict == "medium"


def test_secagg_finding_reads_chance_only_from_a_clear_interval() -> None:
    cells = {"membership/secagg": _membership("membership/secagg", {"C": (0.58, 0.45, 0.71)}, all_auc=0.9)}
    secagg = _finding(summarise(cells)[1], "SecAgg brings membership")
    assert secagg.status == "inconclusive" and "0.58 [95% CI 0.45-0.71]" in secagg.ours
    cells = {"membership/secagg": _membership("membership/secagg", {"C": (0.52, 0.40, 0.63)}, all_auc=0.9)}
    assert _finding(summarise(cells)[1], "SecAgg brings membership").status == "reproduced"


def test_secagg_finding_is_decided_on_each_method_mean_over_centres() -> None:
    # one centre's interval (0.45-0.71) cannot show chance; the mean over centres, stratified, can
    def secure(mean: tuple[float, float, float]) -> dict[str, Any]:
        centres = {"C": {"slice": {"auc": 0.9, "auc_same_centre": 0.58, "auc_same_centre_ci95": [0.45, 0.71]}},
                   "D": {"slice": {"auc": 0.9, "auc_same_centre": 0.49, "auc_same_centre_ci95": [0.38, 0.60]}}}
        method = {"available": True, "centres": centres,
                  "same_centre_mean": {"auc": mean[0], "ci95": [mean[1], mean[2]]}}
        result = MembershipResult(methods={"loss-global": method, "fedmia-loss": {"available": False}})
        return {"membership/secagg": CellEntry(key="membership/secagg", kind="membership", title="secagg",
                                               status="ok", result=result.to_dict()).to_dict()}

    chance = _finding(summarise(secure((0.53, 0.47, 0.59)))[1], "SecAgg brings membership")
    assert chance.status == "reproduced"
    assert "loss-global 0.53 [95% CI 0.47-0.59]" in chance.ours and "intervals reaching 0.71" in chance.ours
    assert chance.intervals == {"loss-global": [0.53, 0.47, 0.59]}
    leaky = _finding(summarise(secure((0.60, 0.52, 0.70)))[1], "SecAgg brings membership")
    assert leaky.status == "inconclusive"


def test_results_of_schema_3_are_read_and_older_ones_refused(tmp_path) -> None:
    """Version 4 only added fields with defaults: a version 3 results.json is read as it is; a version 2 file
    is refused with a message naming the versions this fedi2i reads."""
    import json

    from fedi2i.audit.schema import AuditResults, load_results
    from fedi2i.errors import RunStateError

    current = AuditResults(preset="tiny", generated="now", versions={}, cells_planned=0, cells_ok=0, summary=[],
                           study_comparison=[], quality={}, cells={}).to_dict()
    old = {k: v for k, v in current.items() if k != "poison_effects"} | {"schema_version": 3}
    old["summary"] = [{"threat": "Poisoning", "exposure": "x", "defence": "median", "with_defence": "y",
                       "verdict": "high"}]  # a version 3 threat row: no intervals
    path = tmp_path / "results.json"
    path.write_text(json.dumps(old))
    results = load_results(path)
    assert results.schema_version == 3 and results.summary[0].verdict == "high" and results.poison_effects == []
    path.write_text(json.dumps(old | {"schema_version": 2}))
    with pytest.raises(RunStateError, match="schema version 2, this fedi2i reads versions 3, 4"):
        load_results(path)
