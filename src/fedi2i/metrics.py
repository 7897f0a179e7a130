"""Image metrics as SynthRAD2023 defines them, and attack metrics (ROC AUC, TPR at low FPR).

Image metrics follow the challenge's evaluation code: HU range [-1024, 3000] (data range 4024);
MAE over mask voxels, unclipped; PSNR over mask voxels after clipping; SSIM in 3D with
scikit-image's default 7-voxel window on clipped volumes whose outside-mask voxels are set to
-1024 and which are shifted by +1024, averaged over mask voxels at least 3 voxels from a face.
They are meant per patient volume, not per slice (2D SSIM is not comparable).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from sklearn.metrics import roc_auc_score, roc_curve

HU_MIN, HU_MAX = -1024.0, 3000.0
DATA_RANGE = HU_MAX - HU_MIN
_SSIM_PAD = 3


def _as_mask(mask: np.ndarray | None, like: np.ndarray) -> np.ndarray:
    return np.ones(like.shape, dtype=bool) if mask is None else np.asarray(mask) > 0


def mae(ct: np.ndarray, sct: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute error in HU over the mask (not clipped)."""
    m = _as_mask(mask, ct)
    return float(np.abs(ct[m].astype(np.float64) - sct[m]).mean())


def psnr(ct: np.ndarray, sct: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR in dB over the mask after clipping both volumes to the HU range."""
    m = _as_mask(mask, ct)
    gt = np.clip(ct, HU_MIN, HU_MAX)[m]
    pred = np.clip(sct, HU_MIN, HU_MAX)[m]
    return float(peak_signal_noise_ratio(gt, pred, data_range=DATA_RANGE))


def ssim(ct: np.ndarray, sct: np.ndarray, mask: np.ndarray | None = None) -> float:
    """3D SSIM averaged over mask voxels away from the volume faces (SynthRAD2023 definition)."""
    if min(ct.shape) <= 2 * _SSIM_PAD:
        raise ValueError(f"SSIM needs volumes larger than {2 * _SSIM_PAD + 1} voxels per axis, got {ct.shape}")
    m = _as_mask(mask, ct)
    scored = np.zeros_like(m)
    inner = (slice(_SSIM_PAD, -_SSIM_PAD),) * ct.ndim
    scored[inner] = m[inner]
    # Every 7-voxel window centred on a scored voxel lies inside the scored voxels' bounding box grown by
    # 3 voxels, so computing the map on that box alone gives the same values, in a fraction of the time.
    box = _grown_box(scored, _SSIM_PAD)
    gt = np.where(m[box], np.clip(ct[box], HU_MIN, HU_MAX), HU_MIN).astype(np.float32) - HU_MIN
    pred = np.where(m[box], np.clip(sct[box], HU_MIN, HU_MAX), HU_MIN).astype(np.float32) - HU_MIN
    _, ssim_map = structural_similarity(gt, pred, data_range=DATA_RANGE, full=True)
    return float(ssim_map[scored[box]].mean(dtype=np.float64))


def _grown_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Bounding box of ``mask`` grown by ``margin`` voxels per side (clipped to the array); whole array if empty."""
    if not mask.any():
        return (slice(None),) * mask.ndim
    box = []
    for axis in range(mask.ndim):
        hit = np.nonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))[0]
        box.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + margin + 1, mask.shape[axis])))
    return tuple(box)


def image_metrics(ct: np.ndarray, sct: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """MAE, PSNR and SSIM of one patient volume."""
    return {"mae": mae(ct, sct, mask), "psnr": psnr(ct, sct, mask), "ssim": ssim(ct, sct, mask)}


def image_similarity(truth: np.ndarray, recon: np.ndarray, data_range: float | None = None) -> dict[str, float]:
    """SSIM and PSNR of a 2D reconstruction against its truth (used to score attacks, not synthesis)."""
    truth = np.asarray(truth, dtype=np.float64)
    recon = np.asarray(recon, dtype=np.float64)
    dr = float(data_range if data_range is not None else (truth.max() - truth.min()) or 1.0)
    return {
        "ssim": float(structural_similarity(truth, recon, data_range=dr)),
        "psnr": float(peak_signal_noise_ratio(truth, np.clip(recon, truth.min(), truth.max()), data_range=dr)),
    }


@dataclass(frozen=True)
class RocSummary:
    """ROC of a membership (or detection) score: AUC and TPR at low FPR, with the counts behind them."""

    auc: float
    tpr_at_fpr: dict[str, float]
    n_positive: int
    n_negative: int
    fpr: list[float]
    tpr: list[float]

    def as_dict(self) -> dict[str, object]:
        return {"auc": self.auc, "tpr_at_fpr": self.tpr_at_fpr, "n_positive": self.n_positive,
                "n_negative": self.n_negative,
                "min_meaningful_fpr": 1.0 / self.n_negative if self.n_negative else None}


def roc_summary(labels: np.ndarray, scores: np.ndarray, fprs: tuple[float, ...] = (1e-2, 1e-3)) -> RocSummary:
    """AUC and TPR at the given FPRs (interpolation-free: the largest TPR with FPR <= target).

    TPR at FPR f is only meaningful with at least 1/f negatives; ``n_negative`` is reported so a reader
    can tell.
    """
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.min() == labels.max():
        raise ValueError("ROC needs both members (1) and non-members (0)")
    fpr, tpr, _ = roc_curve(labels, scores)
    at = {f"{f:g}": float(tpr[fpr <= f].max()) if (fpr <= f).any() else 0.0 for f in fprs}
    return RocSummary(auc=float(roc_auc_score(labels, scores)), tpr_at_fpr=at,
                      n_positive=int(labels.sum()), n_negative=int((1 - labels).sum()),
                      fpr=fpr.tolist(), tpr=tpr.tolist())
