"""Read and write paired MRI/CT volumes in the SynthRAD2023 layout.

Layout: ``<root>/<ID>/{mr,ct,mask}.nii.gz`` (``.mha`` also accepted), IDs such as ``1BA001``
(task 1, brain, centre letter ``A``, patient ``001``). In memory every volume is a float32 numpy
array in (z, y, x) order with spacing (sz, sy, sx) in millimetres, so ``volume[k]`` is an axial slice.
SimpleITK writes both formats and reads MetaImage; nibabel reads NIfTI.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from fedi2i.errors import DataError

MODALITIES = ("mr", "ct", "mask")
EXTENSIONS = (".nii.gz", ".nii", ".mha")
_ID_PATTERN = re.compile(r"^(?P<task>\d)(?P<region>[A-Z])(?P<centre>[A-Z])(?P<number>\d{3})$")


def patient_id(centre: str, index: int, task: int = 1, region: str = "B") -> str:
    """SynthRAD-style ID, e.g. ``patient_id("A", 1) == "1BA001"``."""
    return f"{task}{region}{centre}{index:03d}"


def centre_from_id(pid: str) -> str | None:
    """Centre letter encoded in a SynthRAD ID, or None when the ID does not follow the pattern."""
    match = _ID_PATTERN.match(pid)
    return match.group("centre") if match else None


@dataclass(frozen=True)
class PatientRecord:
    """Where one patient's files are and which centre it belongs to."""

    pid: str
    centre: str
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class PatientVolumes:
    """One patient's paired, validated volumes."""

    pid: str
    centre: str
    mr: np.ndarray
    ct: np.ndarray
    mask: np.ndarray
    spacing: tuple[float, float, float]


def _find_file(folder: Path, modality: str) -> Path | None:
    for ext in EXTENSIONS:
        candidate = folder / f"{modality}{ext}"
        if candidate.exists():
            return candidate
    return None


def load_centre_mapping(path: Path) -> dict[str, str]:
    """Read a patient->centre mapping from JSON (``{"pid": "centre"}``) or CSV (``pid,centre`` lines)."""
    path = Path(path)
    if not path.exists():
        raise DataError("centre mapping file not found", path=str(path))
    text = path.read_text()
    if path.suffix == ".json":
        return {str(k): str(v) for k, v in json.loads(text).items()}
    mapping: dict[str, str] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[0] and parts[0].lower() not in ("pid", "id", "patient"):
            mapping[parts[0]] = parts[1]
    return mapping


def scan_dataset(root: Path, mapping: dict[str, str] | None = None) -> list[PatientRecord]:
    """List the patient folders under ``root`` (missing files are kept so validation can name them)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist or is not a folder")
    records = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        pid = folder.name
        centre = (mapping or {}).get(pid) or centre_from_id(pid)
        if centre is None:
            raise DataError(
                "cannot tell the centre: the ID does not look like 1BA001 and no mapping file names it",
                patient=pid,
            )
        files = {m: f for m in MODALITIES if (f := _find_file(folder, m)) is not None}
        records.append(PatientRecord(pid=pid, centre=centre, files=files))
    if not records:
        raise DataError(f"no patient folders found under {root}")
    return records


@dataclass
class _Image:
    array: np.ndarray  # (z, y, x)
    affine: np.ndarray  # 4x4 voxel (x, y, z) -> world
    spacing: tuple[float, float, float]  # (sz, sy, sx)


def _read_image(record: PatientRecord, modality: str) -> _Image:
    """NIfTI through nibabel (SimpleITK's NIfTI reader silently turns NaN into 0, hiding corrupt voxels),
    MetaImage through SimpleITK."""
    path = record.files.get(modality)
    if path is None:
        raise DataError(f"missing {modality} image (expected {modality}.nii.gz or {modality}.mha)",
                        patient=record.pid)
    try:
        if path.name.endswith((".nii", ".nii.gz")):
            img = nib.load(str(path))
            array = np.asarray(img.dataobj, dtype=np.float32)
            if array.ndim != 3:
                raise DataError(f"{modality} image has {array.ndim} dimensions, expected 3",
                                patient=record.pid, path=str(path))
            zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
            return _Image(array.transpose(2, 1, 0), np.asarray(img.affine, dtype=np.float64), zooms[::-1])
        img = sitk.ReadImage(str(path))
        direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
        affine = np.eye(4)
        affine[:3, :3] = direction * np.asarray(img.GetSpacing())
        affine[:3, 3] = img.GetOrigin()
        return _Image(sitk.GetArrayFromImage(img).astype(np.float32), affine,
                      tuple(float(s) for s in img.GetSpacing()[::-1]))  # type: ignore[arg-type]
    except DataError:
        raise
    except Exception as exc:  # nibabel and SimpleITK raise many types for corrupt files
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DataError(f"unreadable {modality} image: {detail}", patient=record.pid, path=str(path)) from exc


def load_patient(record: PatientRecord, affine_tol: float = 1e-3) -> PatientVolumes:
    """Read and validate one patient: same grid for MR/CT/mask, finite voxels, non-empty mask."""
    images = {m: _read_image(record, m) for m in MODALITIES}
    ref = images["ct"]
    for modality in ("mr", "mask"):
        img = images[modality]
        path = str(record.files[modality])
        if img.array.shape != ref.array.shape:
            raise DataError(f"{modality} shape {img.array.shape} does not match ct shape {ref.array.shape}",
                            patient=record.pid, path=path)
        if not np.allclose(img.affine, ref.affine, atol=affine_tol):
            raise DataError(f"{modality} affine (spacing/origin/direction) does not match ct",
                            patient=record.pid, path=path)
    arrays = {m: images[m].array for m in MODALITIES}
    for modality in ("mr", "ct"):
        if not np.isfinite(arrays[modality]).all():
            bad = int((~np.isfinite(arrays[modality])).sum())
            raise DataError(f"{modality} has {bad} non-finite voxels", patient=record.pid,
                            path=str(record.files[modality]))
    mask = arrays["mask"] > 0.5
    if not mask.any():
        raise DataError("mask is empty", patient=record.pid, path=str(record.files["mask"]))
    return PatientVolumes(pid=record.pid, centre=record.centre, mr=arrays["mr"], ct=arrays["ct"],
                          mask=mask.astype(np.uint8), spacing=ref.spacing)


def write_patient(root: Path, patient_id: str, mr: np.ndarray, ct: np.ndarray, mask: np.ndarray,
                  spacing: tuple[float, float, float], fmt: str = "nii.gz") -> Path:
    """Write one patient folder; arrays are (z, y, x), spacing (sz, sy, sx) in mm."""
    if fmt not in ("nii.gz", "nii", "mha"):
        raise DataError(f"unknown image format {fmt!r}; use nii.gz, nii or mha")
    if not (mr.shape == ct.shape == mask.shape):
        raise DataError(f"shapes differ: mr {mr.shape}, ct {ct.shape}, mask {mask.shape}",
                        patient=patient_id)
    folder = Path(root) / patient_id
    folder.mkdir(parents=True, exist_ok=True)
    for name, array, dtype in (("mr", mr, np.float32), ("ct", ct, np.int16), ("mask", mask, np.uint8)):
        data = np.asarray(array)
        if dtype is np.int16:
            data = np.clip(np.rint(data), -32768, 32767)
        image = sitk.GetImageFromArray(data.astype(dtype))
        image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
        sitk.WriteImage(image, str(folder / f"{name}.{fmt}"), useCompression=fmt != "nii")
    return folder
