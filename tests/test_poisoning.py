"""Poisoning building blocks: settings, malicious choice, data/update attacks, detector, plan, tables."""

from __future__ import annotations

import math

import pytest
import torch

from fedi2i.attacks.poisoning import (PoisonSettings, UpdateDetector, attack_options, detection_table,
                                      load_poison_settings, noisy_slices, plan_poison, select_malicious,
                                      update_transform)
from fedi2i.attacks.poisoning.matrix import resolve_rule
from fedi2i.attacks.poisoning.settings import RuleParams
from fedi2i.config import AttacksConfig, Config
from fedi2i.data.slices import SliceSet, unit_to_hu
from fedi2i.errors import ConfigError
from fedi2i.fl.client import ClientUpdate
from fedi2i.training import RunOptions, build_trainers


def _with_poison(cfg: Config, **poison) -> Config:
    return cfg.model_copy(update={"attacks": AttacksConfig(poison=poison)})


def test_settings_defaults_and_errors(tiny_config: Config) -> None:
    s = load_poison_settings(_with_poison(tiny_config))
    assert s.levels == ["low", "medium", "high"] and s.rules == ["fedavg", "fedmedian"]
    assert s.strength("data_noise", "high") == {"mr": 1.5, "ct_hu": 1500.0}
    assert s.strength("sign_flip", "low") == {"factor": 1.0}
    with pytest.raises(ConfigError, match=r"attacks\.poison\.rounnds: unknown key"):
        load_poison_settings(_with_poison(tiny_config, rounnds=3))
    with pytest.raises(ConfigError, match="no value for level"):
        load_poison_settings(_with_poison(tiny_config, levels=["low", "extreme"]))
    with pytest.raises(ConfigError, match="n_malicious"):
        load_poison_settings(_with_poison(tiny_config, malicious=["A"], n_malicious=[1, 2]))


def test_select_malicious() -> None:
    sizes = {"A": 10, "B": 30, "C": 30, "D": 5}
    assert select_malicious("largest", 1, sizes) == ["B"]  # tie B/C broken by ID
    assert select_malicious("largest", 2, sizes) == ["B", "C"]
    assert select_malicious("smallest", 2, sizes) == ["D", "A"]
    assert select_malicious(["C", "A"], 1, sizes) == ["C"]
    with pytest.raises(ConfigError, match="not training centres"):
        select_malicious(["Z"], 1, sizes)
    with pytest.raises(ConfigError, match="at least one must stay honest"):
        select_malicious("largest", 4, sizes)


def test_data_noise_only_on_malicious_training_data(tiny_config: Config, tiny_data) -> None:
    before = {c: (s.mr.clone(), s.ct.clone()) for c, s in tiny_data.train.items()}
    val_before = {c: s.mr.clone() for c, s in tiny_data.val.items()}
    data_t, update_t = attack_options("data_noise", {"mr": 0.2, "ct_hu": 300.0}, ["B"], seed=3)
    assert set(data_t) == {"B"} and not update_t
    trainers = build_trainers(tiny_config, tiny_data, RunOptions(data_transforms=data_t))
    for c in "ACD":  # honest centres train on exactly their own tensors, bit for bit
        assert torch.equal(trainers[c].data.mr, tiny_data.train[c].mr)
        assert torch.equal(trainers[c].data.ct, tiny_data.train[c].ct)
    noisy = trainers["B"].data
    assert not torch.equal(noisy.mr, tiny_data.train["B"].mr) and not torch.equal(noisy.ct, tiny_data.train["B"].ct)
    assert torch.equal(noisy.mask, tiny_data.train["B"].mask) and noisy.patient == tiny_data.train["B"].patient
    for c, (mr, ct) in before.items():  # the shared data object is never modified
        assert torch.equal(tiny_data.train[c].mr, mr) and torch.equal(tiny_data.train[c].ct, ct)
    for c, mr in val_before.items():
        assert torch.equal(tiny_data.val[c].mr, mr)


def test_noise_levels_in_image_units_and_hu(tiny_data) -> None:
    clean = tiny_data.train["A"]
    noisy = noisy_slices(clean, mr_sigma=0.1, ct_sigma_hu=200.0, seed=1, clip_ct=False)
    assert float((noisy.mr - clean.mr).std()) == pytest.approx(0.1, rel=0.05)
    hu = unit_to_hu(noisy.ct) - unit_to_hu(clean.ct)
    assert float(hu.std()) == pytest.approx(200.0, rel=0.05)
    again = noisy_slices(clean, 0.1, 200.0, seed=1, clip_ct=False)
    assert torch.equal(again.mr, noisy.mr)  # same seed, same noise
    clipped = noisy_slices(clean, 0.0, 3000.0, seed=1)
    assert torch.equal(clipped.mr, clean.mr)  # MRI sigma 0 leaves the MRI alone
    assert float(clipped.ct.min()) >= -1.0 and float(clipped.ct.max()) <= 1.0


def test_update_transforms() -> None:
    gen = torch.Generator().manual_seed(0)
    delta = torch.randn(20000, generator=gen) * 0.01
    assert torch.equal(update_transform("scale", {"factor": 10.0})(delta, gen), delta * 10)
    assert torch.equal(update_transform("sign_flip", {"factor": 2.0})(delta, gen), delta * -2)
    noised = update_transform("update_noise", {"sigma": 3.0})(delta, gen)
    rms = float(delta.pow(2).mean().sqrt())
    assert float((noised - delta).std()) == pytest.approx(3.0 * rms, rel=0.05)
    replaced = update_transform("update_replace", {"sigma": 1.0})(delta, gen)
    assert abs(float(torch.corrcoef(torch.stack([replaced, delta]))[0, 1])) < 0.05
    with pytest.raises(ConfigError, match="not an update attack"):
        update_transform("data_noise", {})


def _toy_round(gen: torch.Generator, attacker_sigma: float) -> dict[str, ClientUpdate]:
    """Four centres: a shared direction, each centre's own persistent offset (scanner heterogeneity; D
    differs most, twice as much as B) and round noise; A optionally adds strong noise."""
    common = torch.ones(4000)
    offsets = {"A": 0.15, "B": 0.12, "C": 0.18, "D": 0.25}
    out = {}
    for i, (c, off) in enumerate(offsets.items()):
        persistent = torch.randn(4000, generator=torch.Generator().manual_seed(100 + i))
        delta = common + off * persistent + 0.05 * torch.randn(4000, generator=gen)
        if c == "A":
            delta = delta + attacker_sigma * torch.randn(4000, generator=gen)
        out[c] = ClientUpdate(c, delta, 100, 1, 0.0)
    return out


@pytest.mark.parametrize("attacker_sigma", [0.0, 2.0])
def test_detector_flags_attacker_not_heterogeneous_centre(attacker_sigma: float) -> None:
    detector = UpdateDetector()
    gen = torch.Generator().manual_seed(0)
    for r in range(6):
        detector(r, torch.zeros(4000), _toy_round(gen, attacker_sigma))
    summary = detector.summary()
    assert "D" not in summary["flagged"]  # honest, just further from the others than B and C
    if attacker_sigma:
        assert summary["flagged"] == ["A"] and summary["first_flag_round"]["A"] == 0
    else:
        assert summary["flagged"] == []
    assert len(summary["running"]["A"]) == 6


def test_detector_needs_three_updates() -> None:
    detector = UpdateDetector()
    detector(0, torch.zeros(3), {c: ClientUpdate(c, torch.randn(3), 1, 1, 0.0) for c in "AB"})
    assert detector.flagged() == [] and "skipped" in detector.history[0]


def test_rule_resolution_for_four_centres() -> None:
    params = RuleParams()
    assert resolve_rule("fedmedian", 4, params) == ({"strategy": "fedmedian"}, 1, None)
    fed, tol, skip = resolve_rule("krum", 4, params)
    assert fed["krum_f"] == 0 and tol == 0 and skip is None
    fed, tol, skip = resolve_rule("trimmed", 4, params)
    assert tol == 1 and skip is None
    assert "needs n >= 4f+3 = 7" in resolve_rule("bulyan", 4, params)[2]
    assert resolve_rule("bulyan", 7, params)[2] is None
    assert "Krum with f=1 needs n >= 2f+3 = 5" in resolve_rule("krum", 4, RuleParams(krum_f=1))[2]


def test_plan_is_complete_and_stable(tiny_config: Config, tiny_data) -> None:
    cfg = _with_poison(tiny_config, rules=["fedavg", "bulyan"], attacks=["data_noise", "scale"])
    cells = [c for c in plan_poison(cfg, data=tiny_data) if c.replicate == 0]
    assert len(cells) == 2 * (1 + 2 * 3 * 2)
    keys = [c.key for c in cells]
    assert len(set(keys)) == len(keys) and "fedavg__baseline" in keys and "bulyan__scale__high__m2" in keys
    largest = min(tiny_data.train, key=lambda c: (-len(tiny_data.train[c]), c))  # ties: first ID
    assert all(c.malicious[0] == largest for c in cells if c.n_malicious)
    assert all(c.skip_reason for c in cells if c.rule == "bulyan")
    assert all(c.skip_reason is None for c in cells if c.rule == "fedavg")
    assert [c.key for c in plan_poison(cfg, data=tiny_data)][:len(keys)] == keys


def test_replicates_cover_what_the_verdicts_read(tiny_config: Config, tiny_data) -> None:
    """Default 3 seeds, ``deciding``: FedAvg's and FedMedian's baselines, each attack at its highest level with
    a malicious minority (1 of 4; 2 of 4 is a majority attack) and data noise at its lowest level with 1
    malicious centre run twice more; a rule that cannot run (Bulyan with 4 clients) is never replicated."""
    cfg = _with_poison(tiny_config, rules=["fedavg", "fedmedian", "bulyan"], attacks=["data_noise", "scale"])
    cells = plan_poison(cfg, data=tiny_data)
    again = {c.key.removesuffix("__r1") for c in cells if c.replicate == 1}
    assert again == {f"{rule}__{name}" for rule in ("fedavg", "fedmedian") for name in
                     ("baseline", "data_noise__high__m1", "scale__high__m1", "data_noise__low__m1")}
    assert {c.key.removesuffix("__r2") for c in cells if c.replicate == 2} == again
    everything = plan_poison(_with_poison(tiny_config, rules=["fedavg"], replicate="all"), data=tiny_data)
    assert len(everything) == 3 * (1 + 3 * 2)
    assert len(plan_poison(_with_poison(tiny_config, rules=["fedavg"], seeds=1), data=tiny_data)) == 1 + 3 * 2


def _fake(attack: str, level: str, malicious: list[str], scores: dict[str, list[float]]) -> dict:
    return {"key": f"fedavg__{attack}__{level}", "rule": "fedavg", "attack": attack, "level": level,
            "n_malicious": len(malicious), "malicious": malicious, "status": "done",
            "detector": {"running": scores, "flagged": [c for c, s in scores.items() if s[-1] > 3]}}


def test_detection_table_roc_per_level() -> None:
    results = [
        _fake("none", "none", [], {"A": [0.1, 0.2], "B": [0.5, 0.4], "C": [0.2, 0.1]}),
        _fake("x", "low", ["A"], {"A": [0.3, 0.3], "B": [0.6, 0.5], "C": [0.1, 0.2]}),
        _fake("x", "high", ["A"], {"A": [2.0, 5.0], "B": [0.6, 0.5], "C": [0.1, 0.2]}),
    ]
    table = detection_table(results)
    entry = table["attacks"]["x"]
    assert entry["levels"] == ["low", "high"]
    high, low = entry["by_level"]["high"]["all"], entry["by_level"]["low"]["all"]
    assert high["auc"] == 1.0 and high["detection_rate"] == 1.0 and high["false_alarm_rate"] == 0.0
    # low: the attacker (0.3) ranks above 3 of the 5 honest/baseline scores at the last round
    assert low["auc"] == pytest.approx(3 / 5) and low["detection_rate"] == 0.0
    assert high["margin"] == pytest.approx(4.5) and low["margin"] == pytest.approx(-0.2)
    assert entry["separated"]["1"] == {"low": False, "high": True}
    assert entry["stops_separating_at"] == {"all": "low", "1": "low"}
    assert detection_table(results, min_gap=5.0)["attacks"]["x"]["stops_separating_at"]["1"] == "high"
    assert table["baseline_false_alarm_rate"] == 0.0 and math.isclose(high["auc_per_round"][0], 1.0)


def test_weight_mask_leaves_out_batchnorm_statistics(tiny_config: Config) -> None:
    from fedi2i.attacks.poisoning.detector import weight_mask
    from fedi2i.fl.params import ParamSpec
    from fedi2i.models import build_unet

    model = build_unet(tiny_config.model)
    mask = weight_mask(model)
    spec = ParamSpec.from_module(model)
    assert mask.numel() == spec.numel
    assert int(mask.sum()) == sum(p.numel() for p in model.parameters())
    offset = 0
    for name, size in zip(spec.names, spec.sizes):
        assert bool(mask[offset:offset + size].all()) != ("running_" in name)
        offset += size


def test_detector_sees_sign_flip_and_scaling() -> None:
    gen = torch.Generator().manual_seed(1)
    for attack, strength in (("sign_flip", {"factor": 1.0}), ("scale", {"factor": 10.0})):
        detector = UpdateDetector()
        poison = update_transform(attack, strength)
        for r in range(4):
            updates = _toy_round(gen, 0.0)
            updates["C"].delta = poison(updates["C"].delta, gen)
            detector(r, torch.zeros(4000), updates)
        assert detector.flagged() == ["C"], attack
