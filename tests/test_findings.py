"""The audit's verdicts read the right quantity: SSIM over an empty image, the detector's margin."""

from __future__ import annotations

from typing import Any

from fedi2i.audit.findings import inversion_margin, summarise
from fedi2i.audit.schema import InversionResult, PoisonResult, CellResult


def _cell(kind: str, result: CellResult) -> dict[str, Any]:
    """A stored cell built through the audit's schema, so these fixtures break when the schema changes."""
    return {"kind": kind, "status": "ok", "result": result.to_dict()}


def _inversion(key: str, method: str, mri: float, ct: float, empty: tuple[float, float]) -> dict[str, Any]:
    return _cell("inversion", InversionResult(
        key=key, method=method, batch=1, defence="none", mri_ssim=mri, mri_psnr=9.0, ct_ssim=ct, ct_psnr=9.0,
        background={"mri_ssim": empty[0], "ct_ssim": empty[1]}))


def _comparison(comps: list, finding: str):
    return next(c for c in comps if c.finding.startswith(finding))


def test_inversion_verdict_discounts_the_empty_image_level() -> None:
    # raw CT SSIM 0.72 but an all-background image already scores 0.80: no anatomy recovered
    air = {"inversion/a": _inversion("a", "i2i", 0.30, 0.72, (0.35, 0.80)),
           "inversion/b": _inversion("b", "dlg", 0.01, 0.00, (0.35, 0.80))}
    _, comps = summarise(air)
    assert _comparison(comps, "Stronger inversion").status == "reproduced"
    # the same raw score over a dark background (empty image 0.10) is a real reconstruction
    leak = {**air, "inversion/c": _inversion("c", "i2i", 0.30, 0.72, (0.05, 0.10))}
    threats, comps = summarise(leak)
    assert _comparison(comps, "Stronger inversion").status == "exceeded"
    assert abs(inversion_margin(leak["inversion/c"]["result"]) - 0.62) < 1e-9
    inversion = next(t for t in threats if t.threat.startswith("Gradient inversion"))
    assert "+0.62 SSIM over an empty image" in inversion.exposure


def _poison(rule: str, attack: str, level: str, mae: float) -> dict[str, Any]:
    return _cell("poison", PoisonResult(key=f"{rule}-{attack}-{level}", status="done", rule=rule, attack=attack,
                                        level=level, n_malicious=0, unseen_mean={"mae": mae}))


def _detection(margin_one: float, margin_two: float) -> dict[str, Any]:
    fails = {"1": "low" if margin_one < 0.5 else None, "2": "low" if margin_two < 0.5 else None}
    return {"data_noise": {"auc": {"low": 0.95, "high": 1.0},  # a high pooled AUC either way
                           "stops_separating_at_by_malicious": {"all": None, **fails},
                           "margin": {"low": {"all": 1.0, "1": margin_one, "2": margin_two}}}}


def test_stealth_verdict_follows_the_margin_not_the_pooled_auc() -> None:
    cells = {f"poison/{r}-{a}-{lv}": _poison(r, a, lv, m) for r, a, lv, m in [
        ("fedavg", "none", "none", 300.0), ("fedavg", "data_noise", "low", 305.0),
        ("fedavg", "data_noise", "high", 500.0), ("fedmedian", "none", "none", 300.0),
        ("fedmedian", "data_noise", "high", 310.0)]}
    threats, comps = summarise(cells, _detection(margin_one=-0.2, margin_two=-0.4))
    assert _comparison(comps, "Low noise is stealthy").status == "reproduced"
    assert next(t for t in threats if t.threat.startswith("Stealthy")).verdict == "high"
    threats, comps = summarise(cells, _detection(margin_one=2.0, margin_two=-0.4))
    assert _comparison(comps, "Low noise is stealthy").status == "exceeded"
    stealth = next(t for t in threats if t.threat.startswith("Stealthy"))
    assert stealth.verdict == "medium" and "2 malicious: not separated" in stealth.exposure
    # 500/300 = x1.67 from single runs: within x1.5 noise of the x1.5 threshold, so undecided
    inoperative = _comparison(comps, "High noise makes FedAvg inoperative")
    assert inoperative.status == "inconclusive" and "single runs" in inoperative.ours


def test_collapsed_federation_counts_as_inoperative_for_any_attack() -> None:
    cells = {f"poison/{r}-{a}-{lv}": _poison(r, a, lv, m) for r, a, lv, m in [
        ("fedavg", "none", "none", 300.0), ("fedavg", "data_noise", "low", 305.0),
        ("fedavg", "data_noise", "high", 320.0), ("fedmedian", "none", "none", 300.0),
        ("fedmedian", "data_noise", "high", 310.0), ("fedmedian", "update_noise", "high", 315.0)]}
    for cell in cells.values():
        cell["result"].update(n_malicious=1, tolerates=1 if cell["result"]["rule"] == "fedmedian" else 0)
    collapsed = _poison("fedavg", "update_noise", "high", float("nan"))
    collapsed["result"].update({"collapsed": True, "n_malicious": 1, "unseen_mean": {}})
    cells["poison/fedavg-update_noise-high"] = collapsed
    threats, comps = summarise(cells, {})
    inoperative = _comparison(comps, "High noise makes FedAvg inoperative")
    assert inoperative.status == "reproduced"
    assert "x1.07 at data_noise high" in inoperative.ours and "collapsed" in inoperative.ours
    poisoning = next(t for t in threats if t.threat.startswith("Poisoning"))
    assert poisoning.verdict == "high" and "collapsed at update_noise high" in poisoning.exposure
    assert _comparison(comps, "FedMedian restores").status == "inconclusive"  # x1.03-x1.05, single runs


def _scenario(n_clients: int) -> dict[str, Any]:
    """FedMedian: fine with one malicious centre, ruined with two; the detector separates one attacker but
    not two. With 4 clients two attackers are a majority (the median's guarantee is void); with 5 they are not."""
    cells = {}
    for r, a, lv, n, m in [("fedavg", "none", "none", 0, 300.0), ("fedavg", "data_noise", "low", 1, 305.0),
                           ("fedavg", "data_noise", "high", 2, 900.0), ("fedmedian", "none", "none", 0, 300.0),
                           ("fedmedian", "data_noise", "high", 1, 310.0), ("fedmedian", "data_noise", "high", 2, 900.0)]:
        cell = _poison(r, a, lv, m)
        cell["result"].update(n_malicious=n, n_clients=n_clients, tolerates=(n_clients - 1) // 2 if r == "fedmedian" else 0)
        cells[f"poison/{r}-{a}-{lv}-{n}"] = cell
    return cells


def test_majority_attack_feeds_no_median_or_stealth_verdict() -> None:
    detection = _detection(margin_one=2.0, margin_two=-0.4)
    threats, comps = summarise(_scenario(n_clients=4), detection)
    restores = _comparison(comps, "FedMedian restores")
    assert restores.status == "inconclusive"  # judged on 1 malicious only (2 of 4 is a majority): x1.03
    assert "2 (majority attack, no guarantee) malicious: x3.00" in restores.ours
    stealth = next(t for t in threats if t.threat.startswith("Stealthy"))
    assert stealth.verdict == "low" and "2 malicious (majority attack, not judged)" in stealth.exposure
    assert _comparison(comps, "Low noise is stealthy").status == "exceeded"
    # the same numbers with 5 clients: two attackers are a minority the median should withstand
    threats, comps = summarise(_scenario(n_clients=5), detection)
    assert _comparison(comps, "FedMedian restores").status == "not reproduced"
    assert next(t for t in threats if t.threat.startswith("Stealthy")).verdict == "medium"


def test_only_majority_scenarios_give_no_verdict() -> None:
    cells = {k: v for k, v in _scenario(n_clients=4).items() if not k.endswith("-1")}
    detection = _detection(margin_one=2.0, margin_two=-0.4)
    detection["data_noise"]["stops_separating_at_by_malicious"].pop("1")
    threats, comps = summarise(cells, detection)
    assert _comparison(comps, "FedMedian restores").status == "not measured"
    assert _comparison(comps, "Low noise is stealthy").status == "not measured"
    assert next(t for t in threats if t.threat.startswith("Stealthy")).verdict == "not measured"


def test_stealth_without_finite_detector_scores_is_not_measured() -> None:
    """Every attacker's score non-finite (NaN updates): no margin, so no stealth verdict either way."""
    detection = _detection(margin_one=2.0, margin_two=-0.4)
    detection["data_noise"]["margin"]["low"] = {"all": None, "1": None, "2": None}
    threats, comps = summarise(_scenario(n_clients=5), detection)
    stealth = next(t for t in threats if t.threat.startswith("Stealthy"))
    assert stealth.verdict == "not measured" and "1 malicious: not measured at low" in stealth.exposure
    assert _comparison(comps, "Low noise is stealthy").status == "not measured"
