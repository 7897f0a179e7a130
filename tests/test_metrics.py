"""SynthRAD2023 metrics: hand-computed cases and a cross-check against scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from fedi2i.metrics import image_similarity, mae, psnr, roc_summary, ssim


def test_mae_hand_computed_and_unclipped() -> None:
    ct = np.zeros((8, 8, 8))
    sct = np.full((8, 8, 8), 10.0)
    mask = np.zeros((8, 8, 8), bool)
    mask[2:4] = True
    sct[0] = 5000.0  # outside the mask: ignored
    assert mae(ct, sct, mask) == pytest.approx(10.0)
    sct[2, 0, 0] = 5000.0  # inside and beyond the HU range: MAE is not clipped
    assert mae(ct, sct, mask) == pytest.approx((10.0 * 127 + 5000.0) / 128)


def test_psnr_uses_population_range_and_clips() -> None:
    rng = np.random.default_rng(0)
    ct = rng.uniform(-1000, 2000, (10, 10, 10))
    sct = ct + rng.normal(0, 50, ct.shape)
    mask = np.ones(ct.shape, bool)
    mse = np.mean((ct - np.clip(sct, -1024, 3000)) ** 2)
    assert psnr(ct, sct, mask) == pytest.approx(10 * np.log10(4024**2 / mse), rel=1e-6)
    far = sct.copy()
    far[0, 0, 0] = 1e6  # clipped to 3000 before PSNR
    clipped = np.clip(far, -1024, 3000)
    assert psnr(ct, far, mask) == pytest.approx(peak_signal_noise_ratio(ct, clipped, data_range=4024))


def test_ssim_matches_skimage_on_interior_mask() -> None:
    rng = np.random.default_rng(1)
    ct = rng.uniform(-1000, 1500, (12, 16, 16)).astype(np.float32)
    sct = ct + rng.normal(0, 400, ct.shape).astype(np.float32)
    mask = np.ones(ct.shape, bool)
    gt, pr = ct + 1024, np.clip(sct, -1024, 3000) + 1024
    _, smap = structural_similarity(gt, pr, data_range=4024, full=True)
    assert ssim(ct, sct, mask) == pytest.approx(smap[3:-3, 3:-3, 3:-3].mean(), rel=1e-6)
    assert ssim(ct, ct, mask) == pytest.approx(1.0)
    assert ssim(ct, sct, mask) < 0.95


@pytest.mark.parametrize("sct_hu, expected_hu", [(1000.0, 1000.0), (5000.0, 3000.0)])
def test_ssim_hand_computed_on_constant_volumes(sct_hu: float, expected_hu: float) -> None:
    """Constant volumes have no variance, so SSIM is its luminance term alone:
    (2 x y + C1) / (x^2 + y^2 + C1) with x, y shifted by +1024 HU, the sCT clipped to 3000 HU first,
    and C1 = (0.01 * 4024)^2."""
    ct = np.zeros((10, 10, 10), np.float32)
    x, y, c1 = 1024.0, expected_hu + 1024.0, (0.01 * 4024) ** 2
    assert ssim(ct, np.full(ct.shape, sct_hu, np.float32), np.ones(ct.shape, bool)) == pytest.approx(
        (2 * x * y + c1) / (x**2 + y**2 + c1), rel=1e-6)


def test_ssim_ignores_outside_mask() -> None:
    rng = np.random.default_rng(2)
    ct = rng.uniform(-500, 500, (12, 16, 16))
    mask = np.zeros(ct.shape, bool)
    mask[3:9, 4:12, 4:12] = True
    other = ct.copy()
    other[~mask] = rng.uniform(-1000, 3000, int((~mask).sum()))
    assert ssim(ct, other, mask) == pytest.approx(1.0)


def test_ssim_on_a_small_mask_equals_the_whole_volume_definition() -> None:
    """SSIM is computed on the mask's bounding box only; it must equal the map over the whole volume."""
    rng = np.random.default_rng(4)
    ct = rng.uniform(-1000, 1500, (20, 40, 36)).astype(np.float32)
    sct = ct + rng.normal(0, 300, ct.shape).astype(np.float32)
    mask = np.zeros(ct.shape, bool)
    mask[2:12, 10:25, 5:30] = True  # touches the 3-voxel face band in z, away from the faces in y and x
    gt = np.where(mask, ct, -1024) + 1024
    pr = np.where(mask, np.clip(sct, -1024, 3000), -1024) + 1024
    _, smap = structural_similarity(gt, pr, data_range=4024, full=True)
    inner = np.zeros_like(mask)
    inner[3:-3, 3:-3, 3:-3] = mask[3:-3, 3:-3, 3:-3]
    assert ssim(ct, sct, mask) == pytest.approx(smap[inner].mean(), rel=1e-5)


def test_roc_summary_counts_and_tpr() -> None:
    labels = np.array([1] * 50 + [0] * 200)
    scores = np.concatenate([np.linspace(1, 2, 50), np.linspace(0, 1.5, 200)])
    summary = roc_summary(labels, scores)
    # AUC by its definition, the share of (member, non-member) pairs ranked right: the 133 non-members
    # below 1.0 are beaten by all 50 members, each of the 67 above by the members above it
    pairs = (scores[:50, None] > scores[None, 50:]).mean()
    assert summary.auc == pytest.approx(pairs) and pairs == pytest.approx(0.9141) and summary.n_negative == 200
    # FPR <= 1% lets 2 of 200 non-members through (scores 1.5 and 1.4925); the members at or above the
    # threshold 1 + 24/49 = 1.4898 that admits exactly those two are j = 24..49: 26 of 50
    assert summary.tpr_at_fpr["0.01"] == pytest.approx(0.52)
    # FPR <= 0.1% admits no non-member: only the members above 1.5 (j = 25..49)
    assert summary.tpr_at_fpr["0.001"] == pytest.approx(0.5)
    perfect = roc_summary(labels, np.concatenate([np.ones(50) * 5, np.zeros(200)]))
    assert perfect.auc == 1.0 and perfect.tpr_at_fpr["0.001"] == 1.0
    with pytest.raises(ValueError):
        roc_summary(np.ones(4), np.arange(4.0))


def test_image_similarity_random_is_low() -> None:
    rng = np.random.default_rng(3)
    truth = rng.uniform(0, 1, (32, 32))
    assert image_similarity(truth, truth)["ssim"] == pytest.approx(1.0)
    assert image_similarity(truth, rng.uniform(0, 1, (32, 32)))["ssim"] < 0.1
