"""The audit's verdicts read the right quantity: the detector's margin, the MAE ratio of runs paired by seed, the
SecAgg ratio over the same patients; and they read it from its interval (inversion: test_inversion_judged.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fedi2i.audit.findings import poison_effects, summarise
from fedi2i.audit.schema import CellEntry, CellResult, PoisonResult, TrainResult


def _cell(key: str, kind: str, result: CellResult) -> dict[str, Any]:
    """A stored cell built through the audit's schema, so these fixtures break when the schema changes."""
    return CellEntry(key=key, kind=kind, title=key, status="ok", result=result.to_dict()).to_dict()


def _comparison(comps: list, finding: str):
    return next(c for c in comps if c.finding.startswith(finding))


def _threat(threats: list, name: str):
    return next(t for t in threats if t.threat.startswith(name))


def _poison(rule: str, attack: str, level: str, mae: float | None, n: int = 0, *, n_clients: int | None = None,
            replicate: int = 0, seed: int | None = None, collapsed: bool = False, rounds: int = 5) -> dict[str, Any]:
    """A finished poisoning run through the schema. A baseline has no malicious centre; the median tolerates
    a malicious minority of ``n_clients``."""
    n = 0 if attack == "none" else n
    tolerates = (n_clients - 1) // 2 if rule == "fedmedian" and n_clients else 1 if rule == "fedmedian" else 0
    key = (f"{rule}__baseline" if attack == "none" else f"{rule}__{attack}__{level}__m{n}") \
        + (f"__r{replicate}" if replicate else "")
    return _cell(f"poison/{key}", "poison", PoisonResult(
        key=key, rule=rule, attack=attack, level=level, n_malicious=n, n_clients=n_clients, tolerates=tolerates,
        status="done", replicate=replicate, seed=seed, rounds=rounds, collapsed=collapsed,
        unseen_mean={} if mae is None else {"mae": mae}))


def _detection(margin_one: float, margin_two: float, by_seed: dict[str, list[float | None]] | None = None
               ) -> dict[str, Any]:
    fails = {"1": "low" if margin_one < 0.5 else None, "2": "low" if margin_two < 0.5 else None}
    return {"data_noise": {"auc": {"low": 0.95, "high": 1.0},  # a high pooled AUC either way
                           "stops_separating_at_by_malicious": {"all": None, **fails},
                           "margin": {"low": {"all": 1.0, "1": margin_one, "2": margin_two}},
                           "margin_by_seed": {"low": by_seed} if by_seed else {}}}


def _matrix(runs: list[tuple[str, str, str, float | None]], **kw: Any) -> dict[str, Any]:
    cells = [_poison(*run, **kw) for run in runs]
    return {c["key"]: c for c in cells}


def test_stealth_verdict_follows_the_margin_not_the_pooled_auc() -> None:
    cells = _matrix([("fedavg", "none", "none", 300.0), ("fedavg", "data_noise", "low", 305.0),
                     ("fedavg", "data_noise", "high", 500.0), ("fedmedian", "none", "none", 300.0),
                     ("fedmedian", "data_noise", "high", 310.0)])
    threats, comps = summarise(cells, _detection(margin_one=-0.2, margin_two=-0.4))
    assert _comparison(comps, "Low noise is stealthy").status == "reproduced"
    assert _threat(threats, "Stealthy").verdict == "high"
    threats, comps = summarise(cells, _detection(margin_one=2.0, margin_two=-0.4))
    assert _comparison(comps, "Low noise is stealthy").status == "exceeded"
    stealth = _threat(threats, "Stealthy")
    assert stealth.verdict == "medium" and "2 malicious: not separated" in stealth.exposure
    # 500/300 = x1.67 from single runs: within x1.5 noise of the x1.5 threshold, so undecided
    inoperative = _comparison(comps, "High noise makes FedAvg inoperative")
    assert inoperative.status == "inconclusive" and "single runs" in inoperative.ours


def test_collapsed_federation_counts_as_inoperative_for_any_attack() -> None:
    cells = _matrix([("fedavg", "none", "none", 300.0), ("fedavg", "data_noise", "low", 305.0),
                     ("fedavg", "data_noise", "high", 320.0), ("fedmedian", "none", "none", 300.0),
                     ("fedmedian", "data_noise", "high", 310.0), ("fedmedian", "update_noise", "high", 315.0)], n=1)
    cells.update(_matrix([("fedavg", "update_noise", "high", None)], n=1, collapsed=True))
    threats, comps = summarise(cells, {})
    inoperative = _comparison(comps, "High noise makes FedAvg inoperative")
    assert inoperative.status == "reproduced"
    assert "x1.07 at data_noise high" in inoperative.ours and "collapsed" in inoperative.ours
    poisoning = _threat(threats, "Poisoning")
    assert poisoning.verdict == "high" and "collapsed at update_noise high" in poisoning.exposure
    assert _comparison(comps, "FedMedian restores").status == "inconclusive"  # x1.03-x1.05, single runs


def _scenario(n_clients: int) -> dict[str, Any]:
    """FedMedian: fine with one malicious centre, ruined with two; the detector separates one attacker but
    not two. With 4 clients two attackers are a majority (the median's guarantee is void); with 5 they are not."""
    return {c["key"]: c for c in (
        _poison(r, a, lv, m, n, n_clients=n_clients) for r, a, lv, n, m in [
            ("fedavg", "none", "none", 0, 300.0), ("fedavg", "data_noise", "low", 1, 305.0),
            ("fedavg", "data_noise", "high", 2, 900.0), ("fedmedian", "none", "none", 0, 300.0),
            ("fedmedian", "data_noise", "high", 1, 310.0), ("fedmedian", "data_noise", "high", 2, 900.0)])}


def test_majority_attack_feeds_no_median_or_stealth_verdict() -> None:
    detection = _detection(margin_one=2.0, margin_two=-0.4)
    threats, comps = summarise(_scenario(n_clients=4), detection)
    restores = _comparison(comps, "FedMedian restores")
    assert restores.status == "inconclusive"  # judged on 1 malicious only (2 of 4 is a majority): x1.03
    assert "not judged (outside the median's guarantee): x3.00 at data_noise high, 2 malicious (majority attack)" \
        in restores.ours
    stealth = _threat(threats, "Stealthy")
    assert stealth.verdict == "low" and "2 malicious (majority attack, not judged)" in stealth.exposure
    assert _comparison(comps, "Low noise is stealthy").status == "exceeded"
    # the same numbers with 5 clients: two attackers are a minority the median should withstand
    threats, comps = summarise(_scenario(n_clients=5), detection)
    assert _comparison(comps, "FedMedian restores").status == "not reproduced"
    assert _threat(threats, "Stealthy").verdict == "medium"


def test_only_majority_scenarios_give_no_verdict() -> None:
    cells = {k: v for k, v in _scenario(n_clients=4).items() if "__m1" not in k}
    detection = _detection(margin_one=2.0, margin_two=-0.4)
    detection["data_noise"]["stops_separating_at_by_malicious"].pop("1")
    threats, comps = summarise(cells, detection)
    assert _comparison(comps, "FedMedian restores").status == "not measured"
    assert _comparison(comps, "Low noise is stealthy").status == "not measured"
    assert _threat(threats, "Stealthy").verdict == "not measured"


def test_stealth_without_finite_detector_scores_is_not_measured() -> None:
    """Every attacker's score non-finite (NaN updates): no margin, so no stealth verdict either way."""
    detection = _detection(margin_one=2.0, margin_two=-0.4)
    detection["data_noise"]["margin"]["low"] = {"all": None, "1": None, "2": None}
    threats, comps = summarise(_scenario(n_clients=5), detection)
    stealth = _threat(threats, "Stealthy")
    assert stealth.verdict == "not measured" and "1 malicious: not measured at low" in stealth.exposure
    assert _comparison(comps, "Low noise is stealthy").status == "not measured"


# --- replicates over training seeds -------------------------------------------------------------------------
SEEDS = (0, 1111, 2222)  # the training seeds of replicates 0, 1, 2


def _seeded(rule: str, attack: str, maes: list[float | None], level: str = "high", n: int = 1,
            collapsed: tuple[bool, ...] = (False, False, False)) -> dict[str, Any]:
    """One configuration run with every seed (replicate r, seed SEEDS[r])."""
    cells = [_poison(rule, attack, level, m, n, n_clients=4, replicate=r, seed=SEEDS[r], collapsed=c)
             for r, (m, c) in enumerate(zip(maes, collapsed))]
    return {c["key"]: c for c in cells}


# Training noise larger than the effect: clean runs of 150, 300 and 450 HU by seed
CLEAN = [150.0, 300.0, 450.0]


def test_pairing_by_seed_decides_what_pooling_cannot() -> None:
    """Each attacked run is x1.7-x1.75 its clean run of the same seed: paired, FedAvg is clearly inoperative
    (the interval lies above x1.5). The same six numbers with the attacked values moved to other seeds are
    runs that do not pair this way, and the interval straddles x1.5: the verdict must come from the seed
    field of each run, not from the runs' order or the arms' means."""
    attacked = [c * f for c, f in zip(CLEAN, (1.72, 1.70, 1.75))]
    cells = {**_seeded("fedavg", "none", CLEAN), **_seeded("fedavg", "data_noise", attacked)}
    # stored in an order where position would pair the wrong runs
    cells = dict(sorted(cells.items(), key=lambda kv: -(kv[1]["result"].get("seed") or 0)))
    inoperative = _comparison(summarise(cells)[1], "High noise makes FedAvg inoperative")
    assert inoperative.status == "reproduced"
    assert "over 3 paired seeds (95% CI): x1.72 [95% CI 1.66-1.79] at data_noise high, 1 malicious" in inoperative.ours
    point, low, high = inoperative.intervals["data_noise high, 1 malicious"]
    assert low > 1.5 and point == pytest.approx(1.7233, abs=1e-3)

    unpaired = {**_seeded("fedavg", "none", CLEAN), **_seeded("fedavg", "data_noise", attacked[::-1])}
    inoperative = _comparison(summarise(unpaired)[1], "High noise makes FedAvg inoperative")
    assert inoperative.status == "inconclusive"
    _, low, high = inoperative.intervals["data_noise high, 1 malicious"]
    assert low < 1.5 < high


def test_interval_across_the_threshold_is_inconclusive_and_shown() -> None:
    """Per-seed ratios x1.4, x1.6, x1.8: the mean is above x1.5 but the interval is not."""
    cells = {**_seeded("fedavg", "none", [300.0] * 3),
             **_seeded("fedavg", "data_noise", [420.0, 480.0, 540.0]),
             **_seeded("fedmedian", "none", [300.0] * 3),
             **_seeded("fedmedian", "data_noise", [300.0, 306.0, 297.0])}
    threats, comps = summarise(cells)
    inoperative = _comparison(comps, "High noise makes FedAvg inoperative")
    assert inoperative.status == "inconclusive"
    assert "x1.59 [95% CI 1.16-2.18] at data_noise high, 1 malicious" in inoperative.ours
    # the median's ratios x0.99-x1.02 lie within x1.2 over the seeds: reproduced, from the interval
    restores = _comparison(comps, "FedMedian restores")
    assert restores.status == "reproduced" and "over 3 paired seeds" in restores.ours
    assert restores.intervals["data_noise high, 1 malicious"][2] < 1.2
    # the exposure verdict is read at both ends of the interval: x1.16 (medium) to x2.18 (high)
    poisoning = _threat(threats, "Poisoning")
    assert poisoning.verdict == "medium to high" and "data_noise high, 1 malicious" in poisoning.intervals


def test_collapse_in_every_seed_is_inoperative() -> None:
    cells = {**_seeded("fedavg", "none", [300.0, 320.0, 290.0]),
             **_seeded("fedavg", "update_noise", [None, None, None], collapsed=(True, True, True))}
    threats, comps = summarise(cells)
    inoperative = _comparison(comps, "High noise makes FedAvg inoperative")
    assert inoperative.status == "reproduced" and "collapsed in all 3 seeds at update_noise high" in inoperative.ours
    assert _threat(threats, "Poisoning").verdict == "high"
    [effect] = poison_effects(cells)
    assert effect.collapsed == [True, True, True] and effect.seeds == list(SEEDS) and effect.judged


def test_a_configuration_run_once_is_shown_but_judges_nothing_beside_replicates() -> None:
    cells = {**_seeded("fedavg", "none", [300.0, 320.0, 290.0]),
             **_seeded("fedavg", "data_noise", [310.0, 335.0, 296.0]),
             # the majority count, run once (matrix only): a collapse, but not replicated
             **_matrix([("fedavg", "data_noise", "high", None)], n=2, n_clients=4, seed=0, collapsed=True)}
    inoperative = _comparison(summarise(cells)[1], "High noise makes FedAvg inoperative")
    assert inoperative.status == "not reproduced"  # x1.02-ish on every seed, the interval below x1.5
    assert "run once, shown and not judged: collapsed at data_noise high, 2 malicious (majority attack)" \
        in inoperative.ours


def test_stealth_margin_over_seeds() -> None:
    cells = {**_seeded("fedavg", "none", [300.0] * 3), **_seeded("fedavg", "data_noise", [305.0] * 3, level="low")}
    clear = _detection(margin_one=0.2, margin_two=-0.4, by_seed={"1": [0.1, 0.2, 0.15], "2": [-0.4, -0.3, -0.5]})
    threats, comps = summarise(cells, clear)
    stealthy = _comparison(comps, "Low noise is stealthy")
    assert stealthy.status == "reproduced" and "margin at low 0.15 [95% CI 0.03-0.27] over 3 seeds" in stealthy.ours
    assert _threat(threats, "Stealthy").verdict == "high"
    # the seeds disagree about whether the single attacker separates: inconclusive, the verdict spans levels
    spread = _detection(margin_one=0.2, margin_two=-0.4, by_seed={"1": [-0.5, 1.5, 0.5], "2": [-0.4, -0.3, -0.5]})
    threats, comps = summarise(cells, spread)
    assert _comparison(comps, "Low noise is stealthy").status == "inconclusive"
    stealth = _threat(threats, "Stealthy")
    assert stealth.verdict == "medium to high" and stealth.intervals["1 malicious"][1] < 0.5


def _train(key: str, patients: dict[str, float]) -> dict[str, Any]:
    mean = sum(patients.values()) / len(patients)
    return _cell(key, "train", TrainResult(
        run_dir="/runs/x", unseen={"E": {"mae": mean, "psnr": 25.0, "ssim": 0.9}},
        unseen_patients={"E": {p: {"mae": v, "psnr": 25.0, "ssim": 0.9} for p, v in patients.items()}}))


def test_secagg_quality_is_read_from_an_interval_over_the_same_patients() -> None:
    plain = {f"p{i}": 100.0 + 20 * i for i in range(8)}
    close = {p: v * (1.01 if i % 2 else 0.995) for i, (p, v) in enumerate(plain.items())}
    cells = {"train/fedavg-none": _train("train/fedavg-none", plain),
             "train/fedavg-secagg": _train("train/fedavg-secagg", close)}
    quality = _comparison(summarise(cells)[1], "SecAgg does not hurt image quality")
    assert quality.status == "reproduced" and "over 8 unseen patients (paired, 95% CI)" in quality.ours
    low, high = quality.intervals["MAE ratio SecAgg / FedAvg"][1:]
    assert 0.95 < low and high < 1.05
    # 3 % worse on average but by patient anywhere from 8 % better to 14 % worse: the interval reaches past x1.05
    noisy = {p: v * f for (p, v), f in zip(plain.items(), (0.92, 1.14, 0.97, 1.10, 0.95, 1.12, 1.0, 1.0))}
    cells["train/fedavg-secagg"] = _train("train/fedavg-secagg", noisy)
    quality = _comparison(summarise(cells)[1], "SecAgg does not hurt image quality")
    assert quality.status == "inconclusive" and "[95% CI 0.9" in quality.ours
    # clearly worse for every patient: not reproduced
    cells["train/fedavg-secagg"] = _train("train/fedavg-secagg", {p: v * 1.2 for p, v in plain.items()})
    assert _comparison(summarise(cells)[1], "SecAgg does not hurt image quality").status == "not reproduced"


def test_secagg_quality_without_per_patient_numbers_is_not_decided() -> None:
    cells = {k: _cell(k, "train", TrainResult(run_dir="/runs/x", unseen={"E": {"mae": m, "psnr": 25.0, "ssim": 0.9}}))
             for k, m in (("train/fedavg-none", 120.8), ("train/fedavg-secagg", 121.0))}
    quality = _comparison(summarise(cells)[1], "SecAgg does not hurt image quality")
    assert quality.status == "inconclusive" and "no interval" in quality.ours


def _run(rule: str, attack: str, level: str, mae: float, replicate: int, malicious: list[str]) -> dict[str, Any]:
    """A poisoning run as the matrix stores it: detector scores per centre, the attacker's higher."""
    n = len(malicious)
    key = (f"{rule}__baseline" if attack == "none" else f"{rule}__{attack}__{level}__m{n}") \
        + (f"__r{replicate}" if replicate else "")
    running = {c: [1.0 + replicate * 0.1, 2.0 if c in malicious else 0.5] for c in "ABCD"}
    return _cell(f"poison/{key}", "poison", PoisonResult(
        key=key, rule=rule, attack=attack, level=level, n_malicious=n, malicious=malicious, n_clients=4,
        status="done", replicate=replicate, seed=SEEDS[replicate], rounds=5, unseen_mean={"mae": mae},
        detector={"running": running, "flagged": [], "threshold": 3.0, "final_score": {}, "rounds": [0, 1]},
        val_curve=[], seconds=26.0))


def test_report_shows_the_intervals_and_the_seeds(tmp_path, phantom_root) -> None:
    """What the reader sees: the study comparison with the interval that decided it, and the poisoning
    section with every seed of the replicated configurations; results.json carries the paired effects."""
    from fedi2i.audit.report import write_report
    from fedi2i.audit.schema import load_results
    from fedi2i.audit.store import CellStore
    from fedi2i.config import load_config

    config = load_config("tiny", {"data.root": str(phantom_root), "attacks.poison.seeds": 3})
    store = CellStore(tmp_path)
    for r, (clean, high, low) in enumerate([(150.0, 258.0, 152.0), (300.0, 510.0, 303.0), (450.0, 787.5, 449.0)]):
        for cell in (_run("fedavg", "none", "none", clean, r, []), _run("fedavg", "data_noise", "high", high, r, ["A"]),
                     _run("fedavg", "data_noise", "low", low, r, ["A"])):
            store.put(cell["key"], cell)
    write_report(config, tmp_path, [], store)
    html = (tmp_path / "report.html").read_text()
    results = load_results(tmp_path / "results.json")
    assert results.section_errors == {}
    inoperative = _comparison(results.study_comparison, "High noise makes FedAvg inoperative")
    assert inoperative.status == "reproduced" and "x1.72 [95% CI" in inoperative.ours
    assert "over 3 paired seeds (95% CI): x1.72 [95% CI" in html  # the study comparison, as written
    assert "258 / 510 / 788" in html and "150 / 300 / 450" in html  # the poisoning section, per seed
    [high] = [e for e in results.poison_effects if e.level == "high"]
    assert high.seeds == list(SEEDS) and high.judged and high.ratio is not None and high.ratio[1] > 1.5


def test_a_membership_cell_of_another_shape_is_refused_naming_the_field(tmp_path) -> None:
    """Membership findings read typed results: an AUC that is not a number fails where the cell is read, with
    the path to the field, instead of a KeyError or a wrong comparison deep inside the findings."""
    from fedi2i.audit.schema import load_cell
    from fedi2i.errors import RunStateError

    good = {"methods": {"loss": {"available": True, "centres": {"A": {"slice": {
        "auc": 0.7, "auc_same_centre": 0.6, "auc_same_centre_ci95": [0.5, 0.7], "tpr@1e-2": 0.1}}}}}}
    entry = CellEntry(key="membership/none", kind="membership", title="m", status="ok", result=good)
    typed = entry.typed()
    assert typed.methods["loss"].centres["A"].slice.tpr_at_1e_2 == 0.1  # read through its alias
    assert entry.to_dict()["result"]["methods"]["loss"]["centres"]["A"]["slice"]["tpr@1e-2"] == 0.1
    bad = {"methods": {"loss": {"centres": {"A": {"slice": {"auc_same_centre": "high"}}}}}}
    path = tmp_path / "membership_none.json"
    path.write_text(json.dumps({"key": "membership/none", "kind": "membership", "title": "m", "status": "ok",
                                "result": bad}))
    with pytest.raises(RunStateError, match=r"methods\.loss\.centres\.A\.slice\.auc_same_centre"):
        load_cell(path)
