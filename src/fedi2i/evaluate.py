"""Synthesis quality of a model: per patient volume (SynthRAD metrics), summarised per centre.

Two grids are scored:

- *model grid*: the kept axial slices the model sees (body fraction >= ``min_mask_fraction``),
  stacked back into a volume on the model grid (fast; used for validation during training);
- *native grid*, as SynthRAD scores it: the sCT of every model-grid slice, resampled back onto the
  patient's own CT grid, scored over the whole body mask (all slices).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from fedi2i.data.geometry import GridSettings, to_native
from fedi2i.data.slices import HU_MIN, SliceSet, mr_to_grid, unit_to_hu
from fedi2i.data.synthrad import PatientRecord, load_patient
from fedi2i.metrics import image_metrics
from fedi2i.tissue_metrics import TISSUE_KEYS, tissue_metrics

GRIDS = {
    "model_grid": "kept axial slices on the model grid (pixel_mm x image_size), slices with under "
                  "min_mask_fraction body left out",
    "native_grid": "sCT resampled onto each patient's own CT grid, whole body mask, all slices (SynthRAD2023)",
}


@torch.no_grad()
def predict(model: torch.nn.Module, slices: SliceSet, batch_size: int = 64) -> torch.Tensor:
    """sCT in the model's [-1, 1] scale for every slice, BatchNorm in eval mode."""
    return predict_tensor(model, slices.mr, batch_size)


@torch.no_grad()
def predict_tensor(model: torch.nn.Module, mr: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Model output [N, 1, H, W] for normalised MR slices [N, 1, H, W], BatchNorm in eval mode."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(mr[i:i + batch_size]) for i in range(0, len(mr), batch_size)])
    model.train(was_training)
    return out


def sct_on_native(model: torch.nn.Module, mr: sitk.Image, mask: sitk.Image, grid: GridSettings,
                  percentiles: tuple[float, float], batch_size: int = 64) -> np.ndarray:
    """The sCT (HU, float32, (z, y, x)) of an MRI on the MRI's own grid.

    The MRI is resampled onto its model grid (canonical orientation, axial, physical pixels), every
    model-grid slice is predicted, and the sCT volume is resampled back (linear; -1024 HU outside the
    field of view). ``mask`` (on the MRI's grid) places the field of view and normalises the MRI.
    """
    mr_g, _, grid_img = mr_to_grid(mr, mask, grid, percentiles)
    out = predict_tensor(model, torch.from_numpy(mr_g[:, None]), batch_size)
    sct_g = unit_to_hu(out[:, 0].clamp(-1, 1)).numpy()
    return to_native(sct_g, grid_img, mr, default=HU_MIN)


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
    """MAE (HU), PSNR (dB), SSIM per patient on the model grid."""
    sct = predict(model, slices)
    return {pid: image_metrics(ct, pred, mask) | tissue_metrics(ct, pred, mask)
            for pid, (ct, pred, mask) in patient_volumes(slices, sct).items()}


def evaluate_native(model: torch.nn.Module, records: list[PatientRecord], grid: GridSettings,
                    percentiles: tuple[float, float]) -> dict[str, dict[str, float]]:
    """MAE (HU), PSNR (dB), SSIM per patient on the patient's own CT grid, whole mask (SynthRAD)."""
    results = {}
    for record in records:
        vol = load_patient(record)
        sct = sct_on_native(model, vol.image("mr"), vol.image("mask"), grid, percentiles)
        results[record.pid] = image_metrics(vol.ct, sct, vol.mask) | tissue_metrics(vol.ct, sct, vol.mask)
    return results


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
    """Per centre on the model grid: summary plus per-patient metrics."""
    results: dict[str, dict[str, object]] = {}
    for centre, slices in sets.items():
        if len(slices) == 0:
            continue
        per_patient = evaluate_patients(model, slices)
        results[centre] = {"summary": summarise(per_patient), "patients": per_patient}
    return results


def evaluate_centres_native(model: torch.nn.Module, records: dict[str, list[PatientRecord]], grid: GridSettings,
                            percentiles: tuple[float, float]) -> dict[str, dict[str, object]]:
    """Per centre on the native grids: summary plus per-patient metrics."""
    results: dict[str, dict[str, object]] = {}
    for centre, recs in records.items():
        if recs:
            per_patient = evaluate_native(model, recs, grid, percentiles)
            results[centre] = {"summary": summarise(per_patient), "patients": per_patient}
    return results


def by_role(results: dict[str, dict[str, object]], train_centres: list[str],
            unseen_centres: list[str]) -> dict[str, object]:
    """``{"test": per centre, "unseen": summaries, "seen": summaries}`` as metrics.json holds them."""
    return {"test": results,
            "unseen": {c: results[c]["summary"] for c in unseen_centres if c in results},
            "seen": {c: results[c]["summary"] for c in train_centres if c in results}}
