"""Apply a trained model to new patients: the model file, the inputs it accepts, the sCT it writes.

The model file (``model.safetensors`` in a run folder) holds the weights and, as JSON metadata, all
that prediction needs: the run's config, the model grid (pixel size, field of view) and the MRI/CT
normalisation. It is read as data (safetensors), never as code.

Prediction resamples each MRI onto its model grid, predicts every axial slice and resamples the sCT
back onto the MRI's own grid (:func:`fedi2i.evaluate.sct_on_native`, the same path as the native-grid
evaluation), then writes it as int16 HU with the MRI's exact geometry (NIfTI: its affine and header;
MetaImage: its origin, spacing and direction).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch

from fedi2i.config import Config, config_from_dict, load_config
from fedi2i.data.federation import grid_settings
from fedi2i.data.geometry import GridSettings, make_image
from fedi2i.data.slices import HU_MAX, HU_MIN
from fedi2i.data.synthrad import EXTENSIONS, check_image_values, read_image
from fedi2i.errors import ConfigError, DataError, RunStateError
from fedi2i.evaluate import sct_on_native
from fedi2i.io import atomic_path, load_safetensors, load_torch, save_safetensors
from fedi2i.models import build_unet
from fedi2i.runfolder import MODEL_FILE
FORMAT = "fedi2i-sct-model/1"


@dataclass
class SctModel:
    """A trained U-Net with what it needs to turn an MRI file into an sCT file."""

    model: torch.nn.Module
    config: Config
    grid: GridSettings
    percentiles: tuple[float, float]

    def sct(self, mr: sitk.Image, mask: sitk.Image) -> np.ndarray:
        """sCT in HU (float32, (z, y, x)) on ``mr``'s grid; ``mask`` is a body mask on the same grid."""
        return sct_on_native(self.model, mr, mask, self.grid, self.percentiles)


def save_model(path: Path, model: torch.nn.Module, config: Config, grid: GridSettings) -> None:
    """Weights as safetensors, with the config, model grid and normalisation as JSON metadata."""
    metadata = {
        "format": FORMAT,
        "config": json.dumps(config.model_dump(mode="json")),
        "grid": json.dumps(grid.as_dict()),
        "normalisation": json.dumps({"mr": "per-volume percentiles inside the body mask -> [0, 1]",
                                     "mr_percentiles": list(config.data.mr_percentiles),
                                     "ct": "HU clipped to [hu_min, hu_max] -> [-1, 1]",
                                     "hu_min": HU_MIN, "hu_max": HU_MAX}),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_safetensors(Path(path), tensors, metadata)


def _build(config: Config, state: dict[str, torch.Tensor], source: Path) -> torch.nn.Module:
    model = build_unet(config.model)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise RunStateError(f"{source} does not fit the U-Net of its config ({first}); it is not this "
                            "run's model") from None
    return model.eval()


def load_model(path: Path) -> SctModel:
    """A model file written by :func:`save_model` (a RunStateError names the file when it is not one)."""
    path = Path(path)
    if not path.is_file():
        raise RunStateError(f"model file {path} not found; train a run first (fedi2i train) or pass --run")
    tensors, metadata = load_safetensors(path, hint="use the model file of a finished run")
    if metadata.get("format") != FORMAT:
        raise RunStateError(f"{path} is not a fedi2i sCT model (no {FORMAT!r} metadata); "
                            "use model.safetensors from a finished run")
    try:
        config = config_from_dict(json.loads(metadata["config"]), source=str(path))
        g = json.loads(metadata["grid"])
        grid = GridSettings(int(g["image_size"]), float(g["pixel_mm"]))
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise RunStateError(f"{path} has unreadable metadata ({exc}); use model.safetensors from a finished run") \
            from None
    return SctModel(_build(config, tensors, path), config, grid, tuple(config.data.mr_percentiles))  # type: ignore[arg-type]


def load_run_model(run_dir: Path) -> SctModel:
    """The final model of a finished run folder (``model.safetensors``, else ``model.pt`` + ``config.yaml``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunStateError(f"run folder {run_dir} not found")
    if (run_dir / MODEL_FILE).exists():
        return load_model(run_dir / MODEL_FILE)
    weights, cfg_file = run_dir / "model.pt", run_dir / "config.yaml"
    if not (weights.exists() and cfg_file.exists()):
        raise RunStateError(f"{run_dir} holds no finished run ({MODEL_FILE}, or model.pt with config.yaml); "
                            "train it to the end first")
    config = load_config(cfg_file)
    state = load_torch(weights, hint="train the run again")
    if not isinstance(state, dict):
        raise RunStateError(f"{weights} is not a model state; train the run again")
    return SctModel(_build(config, state, weights), config, grid_settings(config.data),
                    tuple(config.data.mr_percentiles))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- inputs and outputs


@dataclass(frozen=True)
class PredictJob:
    """One MRI to translate: a name for messages, its file, an optional body mask, where the sCT goes."""

    name: str
    mr: Path
    mask: Path | None
    out: Path


def _image_ext(path: Path) -> str | None:
    return next((e for e in EXTENSIONS if path.name.endswith(e)), None)


def _modality_file(folder: Path, modality: str) -> Path | None:
    return next((folder / f"{modality}{e}" for e in EXTENSIONS if (folder / f"{modality}{e}").is_file()), None)


def plan_jobs(source: Path, out: Path, mask: Path | None = None) -> list[PredictJob]:
    """What to translate and where to write it.

    ``source`` is an MRI file (``.nii.gz``, ``.nii``, ``.mha``), a SynthRAD patient folder
    (``mr.*`` and optionally ``mask.*``), or a folder of patient folders or of MRI files. A single
    MRI goes to ``out`` when that names an image file, else to ``out/<name>_sct<ext>``; a patient
    folder goes to ``out/<ID>/sct<ext>``.
    """
    source, out = Path(source), Path(out)
    if not source.exists():
        raise DataError("MRI input not found", path=str(source))
    if source.is_file():
        ext = _image_ext(source)
        if ext is None:
            raise DataError(f"not an image file: expected one of {', '.join(EXTENSIONS)}", path=str(source))
        target = out if _image_ext(out) else out / (source.name[: -len(ext)] + "_sct" + ext)
        return [PredictJob(source.name[: -len(ext)], source, mask, target)]
    if mask is not None:
        raise DataError("--mask goes with a single MRI file; a patient folder brings its own mask.*",
                        path=str(mask))
    if _image_ext(out):
        raise DataError("a folder of MRIs needs an output folder, not an image file name", path=str(out))
    mr = _modality_file(source, "mr")
    if mr is not None:
        return [PredictJob(source.name, mr, _modality_file(source, "mask"), out / source.name / f"sct{_image_ext(mr)}")]
    jobs = []
    for entry in sorted(source.iterdir()):
        if entry.is_dir() and (mr := _modality_file(entry, "mr")) is not None:
            jobs.append(PredictJob(entry.name, mr, _modality_file(entry, "mask"),
                                   out / entry.name / f"sct{_image_ext(mr)}"))
        elif entry.is_file() and (ext := _image_ext(entry)) is not None:
            jobs.append(PredictJob(entry.name[: -len(ext)], entry, None, out / (entry.name[: -len(ext)] + "_sct" + ext)))
    if not jobs:
        raise DataError("holds no MRI: expected an image file, a patient folder with mr.nii.gz (or .mha), or a "
                        "folder of those", path=str(source))
    return jobs


def body_mask(mr: sitk.Image) -> sitk.Image:
    """A body mask estimated from an MRI (Otsu threshold, largest component, holes filled), uint8."""
    fg = sitk.OtsuThreshold(sitk.Cast(mr, sitk.sitkFloat32), 0, 1)
    largest = sitk.RelabelComponent(sitk.ConnectedComponent(fg), sortByObjectSize=True) == 1
    filled = sitk.BinaryFillhole(sitk.BinaryMorphologicalClosing(largest, (3, 3, 3)))
    return sitk.Cast(sitk.BinaryDilate(filled, (2, 2, 2)), sitk.sitkUInt8)


def _write_like(sct: np.ndarray, source: Path, image: sitk.Image, out: Path) -> None:
    """int16 HU on the source's grid: NIfTI with the source's affine and header, else SimpleITK."""
    values = np.clip(np.rint(sct), -32768, 32767).astype(np.int16)
    with atomic_path(out, suffix=f".tmp{_image_ext(out)}") as tmp:
        if out.name.endswith((".nii", ".nii.gz")) and source.name.endswith((".nii", ".nii.gz")):
            ref = nib.load(str(source))
            header = ref.header.copy()
            header.set_data_dtype(np.int16)
            header.set_slope_inter(1.0, 0.0)
            nib.save(nib.Nifti1Image(values.transpose(2, 1, 0), ref.affine, header), str(tmp))
        else:
            written = sitk.GetImageFromArray(values)
            written.CopyInformation(image)
            sitk.WriteImage(written, str(tmp), useCompression=not out.name.endswith(".nii"))


def predict_job(model: SctModel, job: PredictJob, apply_mask: bool = False) -> Path:
    """Translate one MRI and write its sCT; returns the file written."""
    native = read_image(job.mr, "mr", job.name)
    check_image_values(native.array, "mr", job.name, job.mr)
    mr = native.image()
    if job.mask is not None:
        m = read_image(job.mask, "mask", job.name)
        if m.array.shape != native.array.shape or not np.allclose(m.affine, native.affine, atol=1e-3):
            raise DataError("mask is not on the MRI's grid (shape, spacing, origin or direction differ)",
                            patient=job.name, path=str(job.mask))
        mask = make_image((m.array > 0.5).astype(np.uint8), m.spacing, m.origin, m.direction)
    else:
        mask = body_mask(mr)
    if not sitk.GetArrayViewFromImage(mask).any():
        raise DataError("no body found in the MRI (empty mask)", patient=job.name,
                        path=str(job.mask or job.mr))
    try:
        sct = model.sct(mr, mask)
    except DataError as exc:
        raise DataError(str(exc), patient=job.name, path=str(job.mr)) from None
    if apply_mask:
        sct = np.where(sitk.GetArrayViewFromImage(mask) > 0, sct, HU_MIN)
    _write_like(sct, job.mr, mr, job.out)
    return job.out
