"""Synthesis quality of a model: per patient volume (SynthRAD metrics), summarised per centre."""

from __future__ import annotations

import numpy as np
import torch

from fedi2i.data.slices import SliceSet, unit_to_hu
from fedi2i.metrics import image_metrics
from fedi2i.tissue_metrics import TISSUE_KEYS, tissue_metrics


@torch.no_grad()
def predict(model: torch.nn.Module, slices: SliceSet, batch_size: int = 64) -> torch.Tensor:
    """sCT in the model's [-1, 1] scale for every slice, BatchNorm in eval mode."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(slices.mr[i:i + batch_size]) for i in range(0, len(slices), batch_size)])
    model.train(was_training)
    return out


def patient_volumes(slices: SliceSet, sct_unit: torch.Tensor) -> dict[str, tuple[np.ndarray, ...]]:
    """Stack each patient's slices back into (ct_hu, sct_hu, mask) volumes."""
    volumes = {}
    for pid in slices.patients:
        idx = [i for i, p in enumerate(slices.patient) if p == pid]
        order = sorted(idx, key=lambda i: int(slices.slice_index[i]))
        ct = unit_to_hu(slices.ct[order, 0]).numpy()
        sct = unit_to_hu(sct_unit[order, 0].clamp(-1, 1)).numpy()
        volumes[pid] = (ct, sct, slices.mask[order, 0].numpy())
    return volumes


def evaluate_patients(model: torch.nn.Module, slices: SliceSet) -> dict[str, dict[str, float]]:
    """MAE (HU), PSNR (dB), SSIM per patient."""
    sct = predict(model, slices)
    return {pid: image_metrics(ct, pred, mask) | tissue_metrics(ct, pred, mask)
            for pid, (ct, pred, mask) in patient_volumes(slices, sct).items()}


def summarise(per_patient: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean and median of each metric over patients (the challenge ranks on the mean)."""
    summary: dict[str, float] = {"n_patients": float(len(per_patient))}
    for key in ("mae", "psnr", "ssim", *TISSUE_KEYS):
        values = np.array([m[key] for m in per_patient.values()])
        values = values[~np.isnan(values)]  # a tissue absent from a volume has no MAE there
        summary[key] = float(values.mean()) if values.size else float("nan")
        summary[f"{key}_median"] = float(np.median(values)) if values.size else float("nan")
    return summary


def evaluate_centres(model: torch.nn.Module, sets: dict[str, SliceSet]) -> dict[str, dict[str, object]]:
    """Per centre: summary plus per-patient metrics."""
    results: dict[str, dict[str, object]] = {}
    for centre, slices in sets.items():
        if len(slices) == 0:
            continue
        per_patient = evaluate_patients(model, slices)
        results[centre] = {"summary": summarise(per_patient), "patients": per_patient}
    return results
