"""Tissue-level sCT quality, as sCT papers report it next to the SynthRAD whole-mask metrics.

A whole-mask MAE hides missing bone: the skull is a few percent of the head, so an sCT that paints it as
soft tissue can still score a fair MAE while being useless for dose calculation or PET attenuation
correction. These metrics split the error by the tissue the *reference CT* shows:

- ``mae_bone``: mean |CT - sCT| (HU) over mask voxels with CT > 250 HU;
- ``mae_soft``: the same over mask voxels with -100 <= CT <= 250 HU;
- ``mae_air``: the same over mask voxels with CT < -100 HU (air cavities, sinuses);
- ``dice_bone``: Dice of {sCT > 250 HU} against {CT > 250 HU}, both inside the mask.

Thresholds as in DESIGN section 8 and, e.g., Dinkla et al. (2018, Med. Phys. 45:5659) and the
FedSynthCT-Brain evaluation. MAE is not clipped, like the SynthRAD MAE (fedi2i.metrics.mae). A region
that is empty in a volume gives NaN (nothing to average), and so does the Dice when neither volume
has bone: the summary then averages over the volumes that have it.
"""

from __future__ import annotations

import numpy as np

BONE_HU = 250.0
AIR_HU = -100.0
TISSUE_KEYS = ("mae_bone", "mae_soft", "mae_air", "dice_bone")


def tissue_masks(ct: np.ndarray, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Boolean bone / soft / air regions of a CT volume (any shape), restricted to the mask."""
    body = np.ones(ct.shape, dtype=bool) if mask is None else np.asarray(mask) > 0
    return {"bone": body & (ct > BONE_HU),
            "soft": body & (ct >= AIR_HU) & (ct <= BONE_HU),
            "air": body & (ct < AIR_HU)}


def region_mae(ct: np.ndarray, sct: np.ndarray, region: np.ndarray) -> float:
    """Mean |CT - sCT| over a boolean region; NaN when the region is empty."""
    if not region.any():
        return float("nan")
    return float(np.abs(ct[region].astype(np.float64) - sct[region]).mean())


def bone_dice(ct: np.ndarray, sct: np.ndarray, mask: np.ndarray | None = None,
              threshold: float = BONE_HU) -> float:
    """Dice of sCT > threshold against CT > threshold inside the mask; NaN when neither has bone."""
    body = np.ones(ct.shape, dtype=bool) if mask is None else np.asarray(mask) > 0
    truth = body & (ct > threshold)
    pred = body & (sct > threshold)
    total = int(truth.sum()) + int(pred.sum())
    if total == 0:
        return float("nan")
    return 2.0 * int((truth & pred).sum()) / total


def tissue_metrics(ct: np.ndarray, sct: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """MAE per tissue class and bone Dice of one patient volume (keys: :data:`TISSUE_KEYS`)."""
    if ct.shape != sct.shape:
        raise ValueError(f"CT and sCT shapes differ: {ct.shape} vs {sct.shape}")
    regions = tissue_masks(ct, mask)
    out = {f"mae_{name}": region_mae(ct, sct, region) for name, region in regions.items()}
    out["dice_bone"] = bone_dice(ct, sct, mask)
    return out
