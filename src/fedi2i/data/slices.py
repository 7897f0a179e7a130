"""Turn patient volumes into normalised 2D axial slice tensors, and split patients per centre.

All slices of a split are held in memory as tensors: the quick and paper datasets fit easily, and a
plain index permutation is faster than a DataLoader for this size (see bench/train_throughput.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch

from fedi2i.data.geometry import GridSettings, model_grid, resample
from fedi2i.data.synthrad import PatientRecord, PatientVolumes, load_patient
from fedi2i.errors import DataError

log = logging.getLogger(__name__)

HU_MIN, HU_MAX = -1024.0, 3000.0
HU_RANGE = HU_MAX - HU_MIN


def normalise_mr(mr: np.ndarray, mask: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Per-volume percentile scaling of the MRI inside the body to about [0, 1]."""
    lo, hi = np.percentile(mr[mask > 0], percentiles)
    scale = hi - lo if hi > lo else 1.0
    return ((mr - lo) / scale).astype(np.float32)


def ct_to_unit(ct: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """HU clipped to [-1024, 3000] and mapped to [-1, 1]."""
    if isinstance(ct, torch.Tensor):
        return (ct.clamp(HU_MIN, HU_MAX) - HU_MIN) / HU_RANGE * 2 - 1
    return ((np.clip(ct, HU_MIN, HU_MAX) - HU_MIN) / HU_RANGE * 2 - 1).astype(np.float32)


def unit_to_hu(x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Inverse of :func:`ct_to_unit` (within the clipping range)."""
    return (x + 1) / 2 * HU_RANGE + HU_MIN


@dataclass
class SliceSet:
    """Axial slices of several patients: mr/ct/mask tensors [N, 1, H, W] plus who each slice is from."""

    mr: torch.Tensor
    ct: torch.Tensor
    mask: torch.Tensor
    patient: list[str]
    slice_index: torch.Tensor
    centre: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.mr.shape[0])

    @property
    def patients(self) -> list[str]:
        return list(dict.fromkeys(self.patient))

    def select(self, index: torch.Tensor | list[int]) -> "SliceSet":
        idx = torch.as_tensor(index, dtype=torch.long)
        return SliceSet(self.mr[idx], self.ct[idx], self.mask[idx], [self.patient[i] for i in idx.tolist()],
                        self.slice_index[idx], [self.centre[i] for i in idx.tolist()])

    def of_patients(self, pids: list[str] | set[str]) -> "SliceSet":
        wanted = set(pids)
        return self.select([i for i, p in enumerate(self.patient) if p in wanted])

    @staticmethod
    def concat(parts: list["SliceSet"]) -> "SliceSet":
        parts = [p for p in parts if len(p)]
        if not parts:
            raise DataError("no slices to concatenate")
        return SliceSet(torch.cat([p.mr for p in parts]), torch.cat([p.ct for p in parts]),
                        torch.cat([p.mask for p in parts]), sum((p.patient for p in parts), []),
                        torch.cat([p.slice_index for p in parts]), sum((p.centre for p in parts), []))


@dataclass
class GridVolumes:
    """One patient resampled onto its model grid (:mod:`fedi2i.data.geometry`).

    ``mr`` normalised, ``ct`` in [-1, 1] and ``mask`` (0/1) are float32 arrays [Z, H, W] with
    H = W = image_size; ``grid`` is the SimpleITK image that places them in the world.
    """

    pid: str
    centre: str
    mr: np.ndarray
    ct: np.ndarray
    mask: np.ndarray
    grid: sitk.Image


def as_grid_settings(grid: GridSettings | int) -> GridSettings:
    """A bare image size means the default field of view."""
    return grid if isinstance(grid, GridSettings) else GridSettings.default(int(grid))


def mr_to_grid(mr: sitk.Image, mask: sitk.Image, settings: GridSettings,
               percentiles: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, sitk.Image]:
    """Normalised MR and mask on the model grid ([Z, H, W] float32 each) and the grid itself."""
    mask_native = sitk.GetArrayFromImage(mask) > 0.5
    grid = model_grid(mask, mask_native, settings)
    mask_g = (resample(mask, grid, 0.0) > 0.5).astype(np.float32)
    mr_g = resample(mr, grid, 0.0, antialias=True)
    if not mask_g.any():
        raise DataError("the body mask falls outside the model's field of view "
                        f"({settings.fov_mm:g} mm); check the image's origin and direction")
    return normalise_mr(mr_g, mask_g, percentiles), mask_g, grid


def to_model_grid(vol: PatientVolumes, grid: GridSettings | int, percentiles: tuple[float, float]) -> GridVolumes:
    """Reorient, resample in-plane to the model's pixel size and field of view, normalise."""
    settings = as_grid_settings(grid)
    try:
        mr, mask, grid_img = mr_to_grid(vol.image("mr"), vol.image("mask"), settings, percentiles)
    except DataError as exc:
        raise DataError(str(exc), patient=vol.pid) from None
    ct = ct_to_unit(resample(vol.image("ct"), grid_img, HU_MIN))
    ct = np.where(mask > 0, ct, np.float32(-1.0 + 24 / HU_RANGE * 2)).astype(np.float32)  # -1000 HU outside
    return GridVolumes(vol.pid, vol.centre, mr, ct, mask, grid_img)


def volume_to_slices(vol: PatientVolumes, image_size: GridSettings | int, percentiles: tuple[float, float],
                     min_mask_fraction: float = 0.05, stride: int = 1) -> SliceSet:
    """The patient's model-grid axial slices with at least ``min_mask_fraction`` body; [N, 1, H, W]."""
    g = to_model_grid(vol, image_size, percentiles)
    keep = np.where(g.mask.reshape(g.mask.shape[0], -1).mean(1) >= min_mask_fraction)[0][::stride]
    if keep.size == 0:
        raise DataError(f"no axial slice has {min_mask_fraction:.0%} body in its mask", patient=vol.pid)
    mr, ct, mask = (torch.from_numpy(np.ascontiguousarray(a[keep][:, None])) for a in (g.mr, g.ct, g.mask))
    return SliceSet(mr, ct, mask, [vol.pid] * len(keep), torch.from_numpy(keep.astype(np.int64)),
                    [vol.centre] * len(keep))


def slice_patients(records: list[PatientRecord], image_size: GridSettings | int, percentiles: tuple[float, float],
                   min_mask_fraction: float = 0.05, stride: int = 1,
                   skip_bad: bool = False) -> tuple[dict[str, SliceSet], dict[str, str]]:
    """Each patient's slices, by patient ID in record order; a patient that fails its checks raises
    DataError or, with ``skip_bad``, is left out and listed in the second dict with the reason."""
    slices: dict[str, SliceSet] = {}
    skipped: dict[str, str] = {}
    for record in records:
        try:
            slices[record.pid] = volume_to_slices(load_patient(record), image_size, percentiles, min_mask_fraction,
                                                  stride)
        except DataError as exc:
            if not skip_bad:
                raise
            log.warning("skipping %s", exc)
            skipped[record.pid] = str(exc)
    return slices, skipped


@dataclass(frozen=True)
class PatientSplit:
    """Patient IDs per centre for train / val / test; unseen centres are test-only. ``holdout``: patients of a
    training centre nobody trains, validates or tests on (membership inference's same-centre non-members)."""

    train: dict[str, list[str]]
    val: dict[str, list[str]]
    test: dict[str, list[str]]
    holdout: dict[str, list[str]] = field(default_factory=dict)

    def all_train(self) -> list[str]:
        return [p for pids in self.train.values() for p in pids]


def centre_split(centre: str, pids: list[str], index: int, val_fraction: float, test_fraction: float,
                 seed: int, holdout: int = 0, train_cap: int | None = None
                 ) -> tuple[list[str], list[str], list[str], list[str]]:
    """(train, val, test, holdout) patient IDs of the training centre at position ``index`` in the config.

    Seeded by (seed, index) only, so a Flower node that sees just its own centre splits it exactly as
    the in-process engine does. The first ``holdout`` patients of the shuffled order are held out; the
    fractions split the rest (with ``holdout=0`` the split is the one without a hold-out).
    ``train_cap`` keeps the first ``train_cap`` training patients by ID; the others take no part.
    """
    pids = sorted(pids)
    order = np.random.default_rng([seed, 104729, index]).permutation(len(pids))
    held, pids = sorted(pids[j] for j in order[:holdout]), [pids[j] for j in order[holdout:]]
    n_val = int(round(val_fraction * len(pids)))
    n_test = int(round(test_fraction * len(pids)))
    if len(pids) - n_val - n_test < 1:
        raise DataError(f"centre {centre} has {len(pids) + len(held)} patients: too few to keep one for training"
                        + (f" after holding out {len(held)} (data.holdout_patients)" if held else ""))
    train = sorted(pids[n_val + n_test:])[:train_cap]
    return train, sorted(pids[:n_val]), sorted(pids[n_val:n_val + n_test]), held


def split_patients(records: list[PatientRecord], train_centres: list[str], unseen_centres: list[str],
                   val_fraction: float, test_fraction: float, seed: int, holdout: int = 0,
                   train_cap: int | None = None) -> PatientSplit:
    """Seeded patient-level split per training centre (slices of one patient never cross splits)."""
    by_centre: dict[str, list[str]] = {}
    for r in records:
        by_centre.setdefault(r.centre, []).append(r.pid)
    missing = [c for c in train_centres + unseen_centres if c not in by_centre]
    if missing:
        raise DataError(f"centre(s) {', '.join(missing)} have no patients; found {sorted(by_centre)}")
    train, val, test, held = {}, {}, {}, {}
    for i, centre in enumerate(train_centres):
        train[centre], val[centre], test[centre], held[centre] = centre_split(
            centre, by_centre[centre], i, val_fraction, test_fraction, seed, holdout, train_cap)
    for centre in unseen_centres:
        test[centre] = sorted(by_centre[centre])
    return PatientSplit(train=train, val=val, test=test, holdout=held)
