"""Membership with power: the hold-out split (how many same-centre non-members it gives, never a patient on
both sides), the smaller federations of the exposure curve, and the Flower node splitting as the engine does."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedi2i.attacks.membership import build_candidates
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
