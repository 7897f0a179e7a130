"""Read and write paired MRI/CT volumes in the SynthRAD2023 layout.

Layout: ``<root>/<ID>/{mr,ct,mask}.nii.gz`` (``.mha`` also accepted), IDs such as ``1BA001``
(task 1, brain, centre letter ``A``, patient ``001``). In memory every volume is a float32 numpy
array in (z, y, x) order with spacing (sz, sy, sx) in millimetres, so ``volume[k]`` is an axial slice.
SimpleITK writes both formats and reads MetaImage; nibabel reads NIfTI.
"""

from __future__ import annotations

import errno
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from fedi2i.data.geometry import make_image
from fedi2i.errors import ConfigError, DataError

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
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)  # LPS world position of voxel (0, 0, 0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)  # ITK 3x3, row-major
    dtypes: dict[str, str] = field(default_factory=dict)  # on-disk pixel type per modality

    def image(self, modality: str) -> sitk.Image:
        """One of ``mr``, ``ct``, ``mask`` as a SimpleITK image on the native grid."""
        return make_image(getattr(self, modality), self.spacing, self.origin, self.direction)


def _find_file(folder: Path, modality: str) -> Path | None:
    for ext in EXTENSIONS:
        candidate = folder / f"{modality}{ext}"
        if candidate.is_symlink():
            _check_link(candidate)
        if candidate.exists():
            return candidate
    return None


def _check_link(path: Path) -> None:
    """A symbolic link that loops (or points nowhere) is an error naming it, not a silently missing file."""
    try:
        path.resolve(strict=True)
    except RuntimeError as exc:  # symlink loop (Python < 3.13)
        raise DataError("is a symbolic link that loops back on itself; replace it by the file or folder "
                        "it should point to", path=str(path)) from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DataError("is a symbolic link that loops back on itself; replace it by the file or folder "
                            "it should point to", path=str(path)) from exc
        raise DataError(f"is a symbolic link to something that does not exist ({os.readlink(path)})",
                        path=str(path)) from exc


def load_centre_mapping(path: Path) -> dict[str, str]:
    """Read a patient->centre mapping from JSON (``{"pid": "centre"}``) or CSV (``pid,centre`` lines)."""
    path = Path(path)
    if not path.exists():
        raise DataError("centre mapping file not found", path=str(path))
    if path.is_dir():
        raise ConfigError(f"centre mapping {path} is a folder; give a JSON or CSV file")
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix == ".json" else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"centre mapping {path} is not valid UTF-8 JSON ({exc}); write it as "
                          '{"patient ID": "centre", ...}') from None
    if path.suffix == ".json":
        if not isinstance(raw, dict):
            raise ConfigError(f"centre mapping {path} holds a {type(raw).__name__}, not an object; write it as "
                              '{"patient ID": "centre", ...}')
        return {str(k): str(v) for k, v in raw.items()}
    mapping: dict[str, str] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[0] and parts[0].lower() not in ("pid", "id", "patient"):
            mapping[parts[0]] = parts[1]
    return mapping


def _not_synthrad(root: Path, folders: list[Path]) -> DataError:
    """The most helpful message for a folder that holds no patient folder of the SynthRAD layout."""
    layout = "expected the SynthRAD2023 layout <ID>/{mr,ct,mask}.nii.gz (or .mha), e.g. 1BA001/mr.nii.gz"
    if any(_find_file(root, m) for m in MODALITIES):
        return DataError(f"is a single patient folder, not a dataset; {layout}: give its parent folder "
                         f"{root.parent}", path=str(root))
    nested = [f for f in folders if any((g / "mr.nii.gz").exists() or (g / "mr.mha").exists()
                                        for g in f.iterdir() if g.is_dir())]
    if nested:
        names = ", ".join(str(f) for f in nested[:3])
        return DataError(f"holds no patient folders itself but {names} does; {layout}: give that folder",
                         path=str(root))
    found = ", ".join(sorted(p.name for p in root.iterdir())[:5]) or "nothing"
    return DataError(f"is not a SynthRAD dataset: no folder in it holds mr/ct/mask images (found {found}); "
                     f"{layout}", path=str(root))


def scan_dataset(root: Path, mapping: dict[str, str] | None = None) -> list[PatientRecord]:
    """List the patient folders under ``root`` (missing files are kept so validation can name them).

    A folder counts as a patient when it holds one of mr/ct/mask or is named like one (``1BA001``, or
    in the mapping); a root without any is not the SynthRAD layout and raises a DataError saying what
    was expected.
    """
    root = Path(root)
    if root.is_symlink():
        _check_link(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist or is not a folder")
    folders = []
    for entry in sorted(root.iterdir()):
        if entry.is_symlink():
            _check_link(entry)
        if entry.is_dir():
            folders.append(entry)
    if not folders:
        if any(_find_file(root, m) for m in MODALITIES):
            raise _not_synthrad(root, folders)
        raise DataError(f"no patient folders found under {root}")
    records = []
    for folder in folders:
        files = {m: f for m in MODALITIES if (f := _find_file(folder, m)) is not None}
        pid = folder.name
        if not files and centre_from_id(pid) is None and pid not in (mapping or {}):
            continue  # not a patient folder (e.g. a notes/ or overview/ folder beside the patients)
        centre = (mapping or {}).get(pid) or centre_from_id(pid)
        if centre is None:
            raise DataError(
                "cannot tell the centre: the ID does not look like 1BA001 and no mapping file names it",
                patient=pid, path=str(folder))
        records.append(PatientRecord(pid=pid, centre=centre, files=files))
    if not records:
        raise _not_synthrad(root, folders)
    return records


@dataclass
class NativeImage:
    """One image file as read: array (z, y, x), LPS affine, spacing (sz, sy, sx), on-disk pixel type."""

    array: np.ndarray  # (z, y, x)
    affine: np.ndarray  # 4x4 voxel (x, y, z) -> world, LPS (ITK) convention
    spacing: tuple[float, float, float]  # (sz, sy, sx)
    dtype: str  # on disk

    @property
    def origin(self) -> tuple[float, float, float]:
        return tuple(float(o) for o in self.affine[:3, 3])  # type: ignore[return-value]

    @property
    def direction(self) -> tuple[float, ...]:
        cosines = self.affine[:3, :3] / np.asarray(self.spacing[::-1])
        return tuple(float(d) for d in cosines.ravel())

    def image(self) -> sitk.Image:
        """The image as SimpleITK sees it (same grid, float32 voxels)."""
        return make_image(self.array, self.spacing, self.origin, self.direction)


_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def read_image(path: Path, modality: str = "mr", patient: str | None = None) -> NativeImage:
    """Read a NIfTI or MetaImage file; every problem is a DataError naming the file (and patient).

    NIfTI goes through nibabel (SimpleITK's NIfTI reader silently turns NaN into 0, hiding corrupt
    voxels), MetaImage through SimpleITK. The affine is converted to ITK's LPS convention for both.
    """
    path = Path(path)
    if path.is_symlink():
        _check_link(path)
    if not path.is_file():
        raise DataError(f"{modality} image not found", patient=patient, path=str(path))
    try:
        if path.name.endswith((".nii", ".nii.gz")):
            img = nib.load(str(path))
            array = np.asarray(img.dataobj, dtype=np.float32)
            if array.ndim != 3:
                raise DataError(f"{modality} image has {array.ndim} dimensions, expected 3",
                                patient=patient, path=str(path))
            affine = _RAS_TO_LPS @ np.asarray(img.affine, dtype=np.float64)
            spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
            return NativeImage(array.transpose(2, 1, 0), affine, spacing[::-1],  # type: ignore[arg-type]
                               str(img.get_data_dtype()))
        img = sitk.ReadImage(str(path))
        if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
            raise DataError(f"{modality} image has {img.GetDimension()} dimensions and "
                            f"{img.GetNumberOfComponentsPerPixel()} components, expected a 3D scalar image",
                            patient=patient, path=str(path))
        direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
        affine = np.eye(4)
        affine[:3, :3] = direction * np.asarray(img.GetSpacing())
        affine[:3, 3] = img.GetOrigin()
        return NativeImage(sitk.GetArrayFromImage(img).astype(np.float32), affine,
                           tuple(float(s) for s in img.GetSpacing()[::-1]),  # type: ignore[arg-type]
                           img.GetPixelIDTypeAsString())
    except DataError:
        raise
    except Exception as exc:  # nibabel and SimpleITK raise many types for corrupt files
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DataError(f"unreadable {modality} image: {detail}", patient=patient, path=str(path)) from exc


def _read_image(record: PatientRecord, modality: str) -> NativeImage:
    path = record.files.get(modality)
    if path is None:
        raise DataError(f"missing {modality} image (expected {modality}.nii.gz or {modality}.mha)",
                        patient=record.pid)
    return read_image(path, modality, record.pid)


def check_image_values(values: np.ndarray, modality: str, patient: str | None, path: Path | str) -> None:
    """Finite and not constant (an all-zero or constant image holds no anatomy)."""
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        raise DataError(f"{modality} has {bad} non-finite voxels", patient=patient, path=str(path))
    lo, hi = float(values.min()), float(values.max())
    if lo == hi:
        what = "all zero" if lo == 0 else f"constant (every voxel is {lo:g})"
        raise DataError(f"{modality} image is {what}: no anatomy to learn from; re-export the image",
                        patient=patient, path=str(path))


HEAD_HU = -500.0  # CT voxels above this are the head (and the table, where present)
MIN_HEAD_COVERAGE = 0.5  # a mask holding less than this share of the head misses it


def _check_content(record: PatientRecord, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Finite, non-constant MR and CT, and a non-empty mask that covers the head; returns the mask."""
    for modality in ("mr", "ct"):
        check_image_values(arrays[modality], modality, record.pid, record.files[modality])
    mask = arrays["mask"] > 0.5
    path = str(record.files["mask"])
    if not mask.any():
        raise DataError("mask is empty", patient=record.pid, path=path)
    head = arrays["ct"] > HEAD_HU
    if head.any():
        coverage = float((mask & head).sum() / head.sum())
        if coverage < MIN_HEAD_COVERAGE:
            raise DataError(f"mask misses the head: it covers {coverage:.0%} of the voxels above {HEAD_HU:g} HU "
                            "in the CT; check that the mask belongs to this patient and shares its grid",
                            patient=record.pid, path=path)
    return mask


def load_patient(record: PatientRecord, affine_tol: float = 1e-3) -> PatientVolumes:
    """Read and validate one patient: same grid for MR/CT/mask, finite non-constant images, a mask on
    the head. The volumes keep their native grid (spacing, LPS origin and direction)."""
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
    mask = _check_content(record, arrays)
    return PatientVolumes(pid=record.pid, centre=record.centre, mr=arrays["mr"], ct=arrays["ct"],
                          mask=mask.astype(np.uint8), spacing=ref.spacing, origin=ref.origin,
                          direction=ref.direction, dtypes={m: images[m].dtype for m in MODALITIES})


def write_patient(root: Path, patient_id: str, mr: np.ndarray, ct: np.ndarray, mask: np.ndarray,
                  spacing: tuple[float, float, float], fmt: str = "nii.gz",
                  origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
                  direction: tuple[float, ...] | np.ndarray | None = None, mr_dtype: type = np.float32) -> Path:
    """Write one patient folder; arrays are (z, y, x), spacing (sz, sy, sx) in mm, LPS origin (x, y, z)
    and 3x3 direction (identity when None)."""
    if fmt not in ("nii.gz", "nii", "mha"):
        raise DataError(f"unknown image format {fmt!r}; use nii.gz, nii or mha")
    if not (mr.shape == ct.shape == mask.shape):
        raise DataError(f"shapes differ: mr {mr.shape}, ct {ct.shape}, mask {mask.shape}",
                        patient=patient_id)
    folder = Path(root) / patient_id
    folder.mkdir(parents=True, exist_ok=True)
    for name, array, dtype in (("mr", mr, mr_dtype), ("ct", ct, np.int16), ("mask", mask, np.uint8)):
        data = np.asarray(array)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            data = np.clip(np.rint(data), info.min, info.max)
        image = make_image(data.astype(dtype), spacing, origin, direction)
        sitk.WriteImage(image, str(folder / f"{name}.{fmt}"), useCompression=fmt != "nii")
    return folder
