"""Tissue MAE and bone Dice against small volumes worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import torch

from fedi2i.data.slices import SliceSet, ct_to_unit
from fedi2i.evaluate import evaluate_patients, summarise
from fedi2i.tissue_metrics import bone_dice, tissue_metrics

# one row per voxel: CT, sCT, in mask
_VOXELS = [
    (-1000.0, 0.0, 0),     # outside the mask: ignored everywhere
    (500.0, 300.0, 1),     # bone, error 200, sCT bone
    (1000.0, 200.0, 1),    # bone, error 800, sCT missed it
    (0.0, 50.0, 1),        # soft, error 50
    (250.0, 250.0, 1),     # exactly 250 HU is soft tissue, not bone: error 0
    (-100.0, 400.0, 1),    # exactly -100 HU is soft tissue; sCT paints bone there: error 500
    (-500.0, -300.0, 1),   # air cavity, error 200
]


def _volume() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ct, sct, mask = (np.array(col, dtype=np.float32).reshape(1, 1, -1) for col in zip(*_VOXELS))
    return ct, sct, mask


def test_tissue_mae_by_hand() -> None:
    m = tissue_metrics(*_volume())
    assert m["mae_bone"] == 500.0              # (200 + 800) / 2
    assert m["mae_soft"] == 550.0 / 3          # (50 + 0 + 500) / 3
    assert m["mae_air"] == 200.0               # the -1000 HU voxel outside the mask is not air here


def test_bone_dice_by_hand() -> None:
    ct, sct, mask = _volume()
    # truth {500, 1000}; prediction {300 at the 500 voxel, 400 at the -100 voxel}: overlap 1 -> 2*1/(2+2)
    assert bone_dice(ct, sct, mask) == 0.5
    # without the mask the outside voxel still has no bone on either side: same answer
    assert bone_dice(ct, sct) == 0.5
    assert bone_dice(ct, ct, mask) == 1.0


def test_empty_tissue_is_nan_not_zero() -> None:
    ct = np.zeros((1, 2, 2), dtype=np.float32)
    m = tissue_metrics(ct, ct + 10, np.ones_like(ct))
    assert math.isnan(m["mae_bone"]) and math.isnan(m["mae_air"]) and math.isnan(m["dice_bone"])
    assert m["mae_soft"] == 10.0


def test_metrics_json_fields_come_from_evaluation() -> None:
    """A model that returns its input: feeding the CT as MRI gives a perfect sCT on every tissue."""
    ct_hu = torch.full((8, 1, 8, 8), 40.0)
    ct_hu[:, :, 2:6, 2] = 1200.0   # a bone strip
    ct_hu[:, :, 4, 4] = -700.0     # a cavity
    unit = ct_to_unit(ct_hu)
    slices = SliceSet(unit, unit, torch.ones_like(unit), ["P1"] * 8, torch.arange(8), ["A"] * 8)
    per_patient = evaluate_patients(torch.nn.Identity(), slices)
    summary = summarise(per_patient)
    assert summary["dice_bone"] == 1.0
    assert summary["mae_bone"] < 0.01 and summary["mae_air"] < 0.01
    # a model that shifts every voxel by -1000 HU (in [-1, 1] units) loses all bone
    summary = summarise(evaluate_patients(_Shift(-1000.0), slices))
    assert summary["dice_bone"] == 0.0
    assert abs(summary["mae_soft"] - 1000.0) < 0.1
    assert abs(summary["mae_air"] - 324.0) < 0.1   # -1700 HU is clipped to the -1024 HU floor


class _Shift(torch.nn.Module):
    """Returns its input shifted by a fixed number of HU (in the model's [-1, 1] units)."""

    def __init__(self, hu: float) -> None:
        super().__init__()
        self.offset = hu / 4024.0 * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.offset
