"""Membership with power: the hold-out split (how many same-centre non-members it gives, never a patient on
both sides), the smaller federations of the exposure curve, and the Flower node splitting as the engine does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedi2i.attacks.membership import MembershipSettings, build_candidates
from fedi2i.config import load_config
from fedi2i.data.federation import load_federation
from fedi2i.data.slices import centre_split, split_patients
from fedi2i.data.synthrad import PatientRecord
from fedi2i.errors import DataError


def _records(per_centre: int) -> list[PatientRecord]:
    return [PatientRecord(f"1B{c}{i:03d}", c) for c in "ABC" for i in range(1, per_centre + 1)]


def test_holdout_is_carved_first_and_the_fractions_split_the_rest() -> None:
    split = split_patients(_records(20), ["A", "B"], ["C"], 0.17, 0.17, seed=0, holdout=8)
    for centre in ("A", "B"):
        parts = [split.train[centre], split.val[centre], split.test[centre], split.holdout[centre]]
        assert [len(p) for p in parts] == [8, 2, 2, 8]
        assert sorted(p for part in parts for p in part) == sorted(r.pid for r in _records(20) if r.centre == centre)
    assert "C" not in split.holdout and len(split.test["C"]) == 20  # the unseen centre is all test
    # the quick preset before the hold-out: 12 patients, the same fractions, no hold-out
    before = split_patients(_records(12), ["A"], ["C"], 0.17, 0.17, seed=0)
    assert [len(before.train["A"]), len(before.val["A"]) + len(before.test["A"])] == [8, 4]
    assert before.holdout["A"] == []


def test_holdout_that_leaves_no_training_patient_is_refused() -> None:
    with pytest.raises(DataError, match="holding out 4"):
        centre_split("A", [f"p{i}" for i in range(5)], 0, 0.6, 0.0, seed=0, holdout=4)


def test_train_cap_keeps_the_first_training_patients_and_nothing_else_moves() -> None:
    pids = [f"p{i:02d}" for i in range(20)]
    full = centre_split("A", pids, 0, 0.17, 0.17, seed=3, holdout=8)
    capped = centre_split("A", pids, 0, 0.17, 0.17, seed=3, holdout=8, train_cap=3)
    assert capped[0] == full[0][:3] and capped[1:] == full[1:]


@pytest.fixture(scope="module")
def holdout_data(phantom_root: Path):
    # 4 phantom patients per centre: 1 held out, then 1 validation, 0 test, 2 training
    cfg = load_config("tiny", {"data.root": str(phantom_root), "data.holdout_patients": 1,
                               "data.val_fraction": 0.34, "data.test_fraction": 0.0})
    return cfg, load_federation(cfg.data, cfg.seed, progress=False)


def test_holdout_gives_the_stated_same_centre_nonmembers_and_no_patient_on_both_sides(holdout_data) -> None:
    cfg, data = holdout_data
    cands = build_candidates(data, max_slices_per_patient=2, seed=0)
    members = {p for p, c in cands.member_of.items() if c is not None}
    assert not members & set(cands.nonmembers())
    for centre in cfg.data.train_centres:
        held = data.split.holdout[centre]
        assert len(held) == 1 and len(data.split.val[centre]) == 1 and len(data.split.train[centre]) == 2
        assert set(data.holdout[centre].patient) == set(held)
        labels = cands.labels_for(centre)
        same = set(labels.patient[labels.group == "same_centre"])
        assert same == set(held) | set(data.split.val[centre])  # 2 same-centre non-members per centre
        assert not set(held) & members


def test_smaller_federation_is_the_one_the_config_would_load(holdout_data, phantom_root: Path) -> None:
    cfg, data = holdout_data
    small = data.with_train_patients(1)
    loaded = load_federation(cfg.data.model_copy(update={"train_patients": 1}), cfg.seed, progress=False)
    assert small.split == loaded.split
    assert {c: s.patient for c, s in small.train.items()} == {c: s.patient for c, s in loaded.train.items()}
    assert small.split.holdout == data.split.holdout  # same non-members at every federation size


def test_flower_node_leaves_the_holdout_out_as_the_engine_does(holdout_data, phantom_root: Path) -> None:
    from fedi2i.fl.flower.nodedata import load_centre

    cfg, data = holdout_data
    for centre in cfg.data.train_centres:
        node = load_centre(cfg.data, cfg.seed, centre, phantom_root)
        assert node.ids["train"] == data.split.train[centre] and node.ids["val"] == data.split.val[centre]


# --- exposure against the round (synthetic signals: the AUC of each round is known) -------------------------
def _synthetic_candidates(centres: str = "ABC", per_group: int = 3, slices: int = 2):
    """``per_group`` member and ``per_group`` held-out patients per centre, ``slices`` slices each."""
    import torch

    from fedi2i.attacks.membership.candidates import Candidates
    from fedi2i.data.slices import SliceSet

    patients, member_of = [], {}
    for c in centres:
        for i in range(2 * per_group):
            pid = f"{c}{i}"
            member_of[pid] = c if i < per_group else None
            patients += [pid] * slices
    n = len(patients)
    zeros = torch.zeros(n, 1, 2, 2)
    s = SliceSet(zeros, zeros, zeros, patients, torch.arange(n), [p[0] for p in patients])
    return Candidates(s, member_of, {p: p[0] for p in member_of})


def _synthetic_signals(cands, rounds: list[int], fitted: dict[int, str], secure: bool = False):
    """Loss 1 everywhere, except: after round r the global model (and each centre's own model) fits the members
    of the centres in ``fitted[r]`` (loss 0.5)."""
    from fedi2i.attacks.membership import Signals

    centres = sorted({c for c in cands.member_of.values() if c})
    member = np.array([cands.member_of[p] for p in cands.slices.patient], dtype=object)
    target = np.ones((len(rounds), len(centres), len(member)))
    agg = np.ones((len(rounds), len(member)))
    for ri, r in enumerate(rounds):
        for k, c in enumerate(centres):
            if c in fitted[r]:
                target[ri, k, member == c] = 0.5
                agg[ri, member == c] = 0.5
    return Signals(rounds=rounds, clients=centres, secure=secure, loss_target=target, loss_aggregate=agg)


def test_exposure_curve_has_one_point_per_recorded_round_in_order() -> None:
    from fedi2i.attacks.membership.exposure import round_exposure

    cands = _synthetic_candidates()
    sig = _synthetic_signals(cands, [0, 3, 7], {0: "", 3: "A", 7: "ABC"})
    curve = round_exposure(sig, cands, ["A", "B", "C"], MembershipSettings(bootstrap=50))
    assert curve["rounds"] == [0, 3, 7]
    for method in ("fedmia-loss", "loss-global"):
        points = curve["methods"][method]
        assert [p["round"] for p in points] == [0, 3, 7]
        # nobody fitted, then centre A only (mean of 1, 0.5, 0.5), then every centre
        assert [p["auc"] for p in points] == pytest.approx([0.5, 2 / 3, 1.0])
        assert points[1]["centres"]["A"]["auc"] == 1.0 and points[1]["centres"]["B"]["auc"] == 0.5
        assert points[2]["ci95"] == [1.0, 1.0]


@pytest.mark.parametrize("rounds", [[0, 7, 3], [0, 3, 3]])
def test_exposure_curve_refuses_misordered_or_repeated_rounds(rounds: list[int]) -> None:
    from fedi2i.attacks.membership.exposure import round_exposure
    from fedi2i.errors import RecordError

    cands = _synthetic_candidates()
    sig = _synthetic_signals(cands, rounds, {r: "A" for r in rounds})
    with pytest.raises(RecordError, match="strictly increasing"):
        round_exposure(sig, cands, ["A", "B", "C"], MembershipSettings(bootstrap=0))


def test_exposure_curve_under_secagg_has_only_the_global_model_attack() -> None:
    from fedi2i.attacks.membership.exposure import round_exposure

    cands = _synthetic_candidates()
    sig = _synthetic_signals(cands, [0, 1], {0: "", 1: "AB"}, secure=True)
    curve = round_exposure(sig, cands, ["A", "B", "C"], MembershipSettings(bootstrap=0))
    assert list(curve["methods"]) == ["loss-global"]
    assert [p["auc"] for p in curve["methods"]["loss-global"]] == pytest.approx([0.5, 5 / 6])


def test_mean_over_centres_interval_is_narrower_than_one_centre_interval() -> None:
    from fedi2i.attacks.membership.evaluation import mean_auc

    rng = np.random.default_rng(0)
    blocks = {}
    for c in "ABCD":  # 8 members, 12 non-members, 6 slices each, a modest signal
        label = np.repeat([1] * 8 + [0] * 12, 6)
        patient = np.repeat([f"{c}{i}" for i in range(20)], 6)
        blocks[c] = (label, rng.normal(size=label.size) + 0.5 * label, patient)
    out = mean_auc(blocks, 200, seed=0)
    width = out["ci95"][1] - out["ci95"][0]
    single = np.mean([v["ci95"][1] - v["ci95"][0] for v in out["centres"].values()])
    assert out["ci95"][0] < out["auc"] < out["ci95"][1]
    assert 0.35 * single < width < 0.75 * single  # about 1/sqrt(4) of one centre's width


def test_membership_attack_draws_the_curve_over_the_recorded_rounds(tiny_config, tiny_data, tmp_path: Path) -> None:
    from fedi2i.attacks.membership import run_membership
    from fedi2i.fl.observer import ServerRecord
    from fedi2i.training import train

    cfg = tiny_config.model_copy(update={"train": tiny_config.train.model_copy(update={"rounds": 3}),
                                         "federation": tiny_config.federation.model_copy(
                                             update={"record_rounds": [0, 2], "eval_every": 0})})
    run = train(cfg, tmp_path / "run", tiny_data).run_dir
    assert ServerRecord(run).rounds() == [0, 2]
    settings = MembershipSettings(methods=["fedmia-loss", "loss"], rounds=[2], exposure_rounds="all",
                                  bootstrap=20, max_slices_per_patient=2)
    result = run_membership(run, tiny_data, settings, tmp_path / "attack")
    curve = result["exposure_round"]
    assert curve["rounds"] == [0, 2]
    assert [p["round"] for p in curve["methods"]["loss-global"]] == [0, 2]
    # the attack's own round is reused: FedMIA at round 2 on the curve is the attack's FedMIA
    assert curve["methods"]["fedmia-loss"][1]["auc"] == pytest.approx(result["methods"]["fedmia-loss"]["same_centre_mean"]["auc"])
    assert (tmp_path / "attack" / "exposure_round.png").is_file()
    from fedi2i.errors import RecordError
    with pytest.raises(RecordError, match=r"round\(s\) \[1\] were not recorded"):
        run_membership(run, tiny_data, settings.model_copy(update={"exposure_rounds": [1, 2]}))


def test_audit_plans_one_cell_per_federation_size_that_trains_and_attacks_it(tiny_config, tmp_path: Path) -> None:
    from fedi2i.audit.cells import AuditContext, build_cells

    config = tiny_config.model_copy(update={"attacks": tiny_config.attacks.model_copy(update={"membership": {
        **tiny_config.attacks["membership"], "exposure_sizes": [1], "rounds": [1]}})})
    cells = {c.key: c for c in build_cells(AuditContext(config, tmp_path))}
    assert "membership/size-1" in cells and cells["membership/size-1"].kind == "membership"
    assert not any(c.key.startswith("membership/size") for c in build_cells(AuditContext(tiny_config, tmp_path / "b")))
    result = cells["membership/size-1"].action()
    assert result["train_patients"] == 1
    assert set(result["methods"]) == {"fedmia-loss", "loss-global"}
    assert all(n == 1 for n in result["candidates"]["member_patients"].values())


# --- the report: what secure aggregation does not protect, and the curves ------------------------------------
def _membership_cell(secure: bool, fedmia: tuple[float, float, float], global_model: tuple[float, float, float]):
    def mean(v: tuple[float, float, float]) -> dict:
        return {"auc": v[0], "ci95": [v[1], v[2]]}

    centre = {"slice": {"auc": 0.8, "auc_same_centre": global_model[0], "auc_same_centre_ci95": list(global_model[1:]),
                        "n_members": 64, "n_nonmembers": 96},
              "patient": {"n_same_centre": 12, "n_members": 8}}
    methods = {"loss-global": {"available": True, "centres": {"A": centre}, "same_centre_mean": mean(global_model)}}
    curve = {"loss-global": [{"round": r, **mean(global_model)} for r in (0, 5, 9)]}
    if secure:
        methods["fedmia-loss"] = {"available": False, "reason": "unavailable by construction"}
    else:
        methods["fedmia-loss"] = {"available": True, "centres": {"A": centre}, "same_centre_mean": mean(fedmia)}
        curve["fedmia-loss"] = [{"round": r, **mean(fedmia)} for r in (0, 5, 9)]
    result = {"methods": methods, "secure": secure, "candidates": {"member_patients": {"A": 8}},
              "exposure_round": {"rounds": [0, 5, 9], "methods": curve}}
    return {"kind": "membership", "title": "membership", "status": "ok", "result": result, "seconds": 1.0}


def test_report_states_what_secagg_does_not_protect_with_its_interval(tiny_config, tmp_path: Path) -> None:
    from fedi2i.audit.report import write_report
    from fedi2i.audit.store import CellStore

    store = CellStore(tmp_path)
    store.put("membership/none", {"key": "membership/none", **_membership_cell(False, (0.71, 0.64, 0.78),
                                                                               (0.58, 0.52, 0.64))})
    store.put("membership/secagg", {"key": "membership/secagg", **_membership_cell(True, (0, 0, 0),
                                                                                   (0.57, 0.51, 0.63))})
    html = write_report(tiny_config, tmp_path, [], store).read_text()
    assert ("It does not protect the aggregate model that every centre receives: the loss attack on the global "
            "model still reaches a same-centre AUC of 0.57 [95% CI 0.51-0.63] under secure aggregation") in html
    assert "FedMIA-I&#x27;s per-update exposure (same-centre AUC 0.71 [95% CI 0.64-0.78]" in html
    assert "8 member patients against 12 same-centre non-member patients" in html
    results = json.loads((tmp_path / "results.json").read_text())
    row = next(t for t in results["summary"] if t["threat"].startswith("Membership through the shared model"))
    assert "0.57 [95% CI 0.51-0.63]" in row["with_defence"] and row["defence"] == "secure aggregation"
    assert row["verdict"] == "low to medium"  # read from the interval's two ends (chance up to 0.6)
    assert (tmp_path / "membership" / "exposure_round.png").is_file()
    assert "0.58 [0.52-0.64]" in html  # a point of the round curve's table


def test_only_the_federations_the_report_draws_measure_the_round_curve(tiny_config, tmp_path: Path,
                                                                        monkeypatch) -> None:
    """The round curve costs a pass over every recorded round: the DP cell, whose curve no report shows, skips
    it; the plain and SecAgg cells keep it."""
    import fedi2i.attacks.membership.run as membership_run
    from fedi2i.audit.cells import AuditContext, build_cells

    seen: dict[str, object] = {}
    monkeypatch.setattr(membership_run, "run_membership",
                        lambda run_dir, data, settings, out: seen.update({Path(out).name: settings.exposure_rounds}))
    config = tiny_config.model_copy(update={"attacks": tiny_config.attacks.model_copy(update={"membership": {
        **tiny_config.attacks["membership"], "exposure_rounds": "all"}})})
    ctx = AuditContext(config, tmp_path)
    monkeypatch.setattr(AuditContext, "data", None)  # the actions must not need the data to pick their settings
    for cell in build_cells(ctx):
        if cell.key in ("membership/none", "membership/secagg", "membership/dp"):
            cell.action()
    assert seen == {"none": "all", "secagg": "all", "dp": None}
