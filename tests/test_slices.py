"""Slicing, normalisation, splits, and that the same seed gives the same data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fedi2i.config import load_config
from fedi2i.data.federation import load_federation
from fedi2i.data.phantom import build_phantom_dataset, make_phantom_head
from fedi2i.data.slices import ct_to_unit, split_patients, unit_to_hu
from fedi2i.data.synthrad import scan_dataset


def test_phantom_is_seeded_and_paired() -> None:
    mr, ct, mask = make_phantom_head((64, 64, 64), seed=5)
    again = make_phantom_head((64, 64, 64), seed=5)
    np.testing.assert_array_equal(mr, again[0])
    np.testing.assert_array_equal(ct, again[1])
    other = make_phantom_head((64, 64, 64), seed=6)
    assert not np.array_equal(ct, other[1])
    bone = ct > 700
    assert bone.any() and mr[bone].mean() < mr[(ct > 20) & (ct < 60)].mean()  # bone dark on T1
    assert ct[mask == 0].mean() < -900


def test_ct_scaling_round_trip() -> None:
    hu = np.array([-2000.0, -1024.0, 0.0, 3000.0, 4000.0])
    unit = ct_to_unit(hu)
    assert unit.min() == -1.0 and unit.max() == 1.0
    np.testing.assert_allclose(unit_to_hu(unit), np.clip(hu, -1024, 3000), atol=1e-3)
    assert torch.allclose(ct_to_unit(torch.tensor(hu)).float(), torch.from_numpy(unit))


def test_splits_are_patient_level_disjoint_and_seeded(phantom_root: Path) -> None:
    records = scan_dataset(phantom_root)
    a = split_patients(records, ["A", "B", "C", "D"], ["E"], 0.25, 0.25, seed=1)
    b = split_patients(records, ["A", "B", "C", "D"], ["E"], 0.25, 0.25, seed=1)
    assert a == b
    for centre in ["A", "B", "C", "D"]:
        groups = [set(a.train[centre]), set(a.val[centre]), set(a.test[centre])]
        assert sum(map(len, groups)) == 4 and len(set.union(*groups)) == 4
    assert a.test["E"] and "E" not in a.train
    c = split_patients(records, ["A", "B", "C", "D"], ["E"], 0.25, 0.25, seed=2)
    assert c != a


def test_federation_slices_normalised_and_reproducible(tmp_path: Path) -> None:
    build_phantom_dataset(tmp_path, n_centres=3, patients_per_centre=3, shape=(16, 40, 40))
    cfg = load_config("tiny", {"data.root": str(tmp_path), "data.train_centres": ["A", "B"],
                               "data.unseen_centres": ["C"], "data.val_fraction": 0.0,
                               "data.test_fraction": 0.34})
    fed = load_federation(cfg.data, cfg.seed)
    s = fed.train["A"]
    assert s.mr.shape[1:] == (1, 32, 32) and s.ct.shape == s.mr.shape == s.mask.shape
    assert s.ct.min() >= -1 and s.ct.max() <= 1
    body = s.mask > 0
    top = float(torch.quantile(s.mr[body][::7], 0.995))
    assert 0.8 < top < 1.2 and float(torch.quantile(s.mr[body][::7], 0.005)) < 0.1  # percentile-normalised
    again = load_federation(cfg.data, cfg.seed)
    assert torch.equal(s.mr, again.train["A"].mr) and s.patient == again.train["A"].patient
    assert set(s.patient).isdisjoint(fed.test["A"].patient)
