"""The training-recipe options: weighted loss, one-cycle schedule, paired augmentation, config checks."""

from __future__ import annotations

import math

import pytest
import torch

from fedi2i.config import TrainConfig, load_config
from fedi2i.data.slices import ct_to_unit
from fedi2i.errors import ConfigError
from fedi2i.fl.client import LocalTrainer, augment_batch, onecycle_factor, recipe_loss
from fedi2i.figures import sct_panels


def _pair() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three voxels: bone (1000 HU) in the body, soft tissue (0 HU) in the body, background outside."""
    ct = ct_to_unit(torch.tensor([1000.0, 0.0, -1000.0])).view(1, 1, 1, 3)
    mask = torch.tensor([1.0, 1.0, 0.0]).view(1, 1, 1, 3)
    return ct, mask, ct + torch.tensor([0.2, 0.1, 0.4]).view(1, 1, 1, 3)


def test_weighted_l1_by_hand() -> None:
    ct, mask, pred = _pair()
    cfg = TrainConfig(bone_weight=3.0, background_weight=0.5)
    # weights 3, 1, 0.5 on errors 0.2, 0.1, 0.4: (0.6 + 0.1 + 0.2) / 4.5
    assert recipe_loss(cfg, pred, ct, mask).item() == pytest.approx(0.9 / 4.5, rel=1e-5)
    # the defaults are the plain L1
    assert recipe_loss(TrainConfig(), pred, ct, mask).item() == pytest.approx(0.7 / 3, rel=1e-5)


def test_edge_term_by_hand() -> None:
    """Two identical rows; the sCT misses the bone voxel, so one of each row's two x-differences is off."""
    ct, mask, _ = _pair()
    ct, mask = ct.expand(1, 1, 2, 3).contiguous(), mask.expand(1, 1, 2, 3).contiguous()
    missed = ct.clone()
    missed[..., 0] = missed[..., 1]
    step = (ct[0, 0, 0, 0] - ct[0, 0, 0, 1]).abs().item()
    l1 = 2 * step / 6           # two wrong voxels of six
    edge = 2 * step / 4         # two wrong x-differences of four; y-differences all agree
    assert recipe_loss(TrainConfig(), missed, ct, mask).item() == pytest.approx(l1, rel=1e-5)
    assert recipe_loss(TrainConfig(edge_weight=2.0), missed, ct, mask).item() == pytest.approx(l1 + 2 * edge, rel=1e-5)


def test_onecycle_shape() -> None:
    assert onecycle_factor(0.0) == pytest.approx(0.04)
    assert onecycle_factor(0.3) == pytest.approx(1.0)
    assert onecycle_factor(0.65) == pytest.approx(0.505)
    assert onecycle_factor(1.0) == pytest.approx(0.01)


def test_augmentation_keeps_mri_and_ct_aligned() -> None:
    """Flips must move MRI, CT and mask together, or the model learns from mismatched pairs."""
    image = torch.arange(64 * 4, dtype=torch.float32).view(64, 1, 2, 2) / 256
    cfg = TrainConfig(augment=["flip"])
    mr, ct, mask = augment_batch(cfg, image, image.clone(), image.clone(), torch.Generator().manual_seed(0))
    assert torch.equal(mr, ct) and torch.equal(mr, mask)
    flipped = (mr != image).flatten(1).any(1)
    assert 16 < int(flipped.sum()) < 48  # about half the slices are mirrored
    gamma = TrainConfig(augment=["gamma"])
    mr_g, ct_g, _ = augment_batch(gamma, image, image.clone(), image, torch.Generator().manual_seed(0))
    assert torch.equal(ct_g, image) and not torch.equal(mr_g, image)


def test_recipe_fields_are_validated() -> None:
    with pytest.raises(ConfigError, match="train.bone_weight"):
        load_config("tiny", {"train.bone_weight": 0.5})
    with pytest.raises(ConfigError, match="train.augment"):
        load_config("tiny", {"train.augment": ["rotate"]})
    with pytest.raises(ConfigError, match="train.lr_schedule"):
        load_config("tiny", {"train.lr_schedule": "warm-restarts"})


def test_recipe_trains_reproducibly(tiny_config, tiny_data) -> None:
    """The full recipe (weighted loss, edge term, one-cycle, augmentation, AdamW) is seeded like the rest."""
    overrides = {"train.bone_weight": 3.0, "train.background_weight": 0.1, "train.edge_weight": 1.0,
                               "train.lr_schedule": "onecycle", "train.augment": ["flip", "gamma"],
                               "train.optimizer": "adamw", "train.weight_decay": 1e-4, "train.batch_size": 4}
    cfg = tiny_config.model_copy(update={"train": tiny_config.train.model_copy(update={
        k.split(".")[1]: v for k, v in overrides.items()})})
    cid, slices = next(iter(tiny_data.train.items()))
    trainer = LocalTrainer(cid, slices, cfg.model, cfg.train, cfg.seed)
    start = trainer.spec.flatten(trainer.model.state_dict()).clone()
    first = trainer.fit(start, 0)
    second = trainer.fit(start, 0)
    assert torch.equal(first.delta, second.delta)
    assert first.delta.abs().sum() > 0 and math.isfinite(first.mean_loss)
    other = trainer.fit(start, 1)
    assert not torch.equal(first.delta, other.delta)  # augmentation and batches are drawn per round


def test_sct_panels_draw_tissue_errors(tiny_data, tmp_path) -> None:
    slices = next(iter(tiny_data.test.values()))
    path = sct_panels(slices, slices.ct, tmp_path / "sct.png")
    assert path.stat().st_size > 10_000
