"""Evaluation: match reconstructions to the true batch items (Hungarian) and score them.

With ``anatomy.py`` and ``assess.py``, the only place of the attack code that sees true images. A
reconstruction carries no order (the gradient of a batch mean is permutation invariant), so each true item
is paired with the reconstruction that maximises the summed MRI + CT SSIM over the whole assignment
(``scipy.optimize.linear_sum_assignment``; with more reconstructions than items, as from an aggregate, the
best ones are picked). MRI is scored on its normalised scale, CT in HU; both with
``fedi2i.metrics.image_similarity`` (2D, data range of the truth). These whole-slice scores are the study's
measure; what a reconstruction shows of the patient is judged in ``anatomy.py``.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from fedi2i.data.slices import unit_to_hu
from fedi2i.metrics import image_similarity

STUDY_SSIM_BOUND = 0.16  # the published DLG result: SSIM <= 0.16, PSNR <= 11 dB
STUDY_PSNR_BOUND = 11.0


def _pairwise(truth: np.ndarray, recon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ssim = np.zeros((len(truth), len(recon)))
    psnr = np.zeros_like(ssim)
    for i, t in enumerate(truth):
        for j, r in enumerate(recon):
            s = image_similarity(t, r)
            ssim[i, j], psnr[i, j] = s["ssim"], s["psnr"]
    return ssim, psnr


def score(truth_mr: torch.Tensor, truth_ct: torch.Tensor, recon_mr: torch.Tensor,
          recon_ct: torch.Tensor) -> dict[str, object]:
    """Mean SSIM/PSNR of MRI (normalised) and CT (HU) after optimal matching; per-item values too.

    Tensors are [N, 1, H, W]; CTs in the model's [-1, 1] scale. With more true items than
    reconstructions (an update over many slices), each reconstruction is paired with a distinct best
    true slice; ``assignment[i]`` is the reconstruction matched to the i-th matched true item, listed in
    ``truth_index``.
    """
    t_mr, r_mr = truth_mr[:, 0].double().numpy(), recon_mr[:, 0].double().numpy()
    t_ct, r_ct = unit_to_hu(truth_ct[:, 0].double()).numpy(), unit_to_hu(recon_ct[:, 0].double()).numpy()
    mr_ssim, mr_psnr = _pairwise(t_mr, r_mr)
    ct_ssim, ct_psnr = _pairwise(t_ct, r_ct)
    rows, cols = linear_sum_assignment(-(mr_ssim + ct_ssim))
    pick = (rows, cols)
    return {
        "mri_ssim": float(mr_ssim[pick].mean()), "mri_psnr": float(mr_psnr[pick].mean()),
        "ct_ssim": float(ct_ssim[pick].mean()), "ct_psnr": float(ct_psnr[pick].mean()),
        "mri_ssim_max": float(mr_ssim[pick].max()), "ct_ssim_max": float(ct_ssim[pick].max()),
        "assignment": [int(c) for c in cols], "truth_index": [int(r) for r in rows],
        "per_item": [{"mri_ssim": float(mr_ssim[r, c]), "mri_psnr": float(mr_psnr[r, c]),
                      "ct_ssim": float(ct_ssim[r, c]), "ct_psnr": float(ct_psnr[r, c])} for r, c in zip(rows, cols)],
    }


def chance_level(truth_mr: torch.Tensor, truth_ct: torch.Tensor, mr_box: tuple[float, float],
                 seed: int = 0, n_recon: int | None = None) -> dict[str, float]:
    """Scores of images drawn uniformly in the known boxes: what an attack that learned nothing gets.

    ``n_recon`` random images (default: one per true item) go through the same matching as a real
    reconstruction, so picking the best of many candidates (an aggregate) is not mistaken for leakage.
    """
    gen = torch.Generator().manual_seed(seed)
    lo, hi = mr_box
    shape = (n_recon or len(truth_mr), *truth_mr.shape[1:])
    mr = lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)
    ct = 2 * torch.rand(shape, generator=gen, dtype=torch.float64) - 1
    out = score(truth_mr, truth_ct, mr, ct)
    return {k: out[k] for k in ("mri_ssim", "mri_psnr", "ct_ssim", "ct_psnr")}  # type: ignore[misc]
