"""Test volumes: one head put on another grid, as another hospital might have stored it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from fedi2i.data.geometry import resample
from fedi2i.data.synthrad import write_patient


def write_regridded(root: Path, pid: str, images: dict[str, sitk.Image], spacing_xyz: tuple[float, float, float],
                    direction: np.ndarray, fmt: str = "nii.gz", mr_dtype: type = np.float32) -> Path:
    """Resample ``images`` (mr, ct, mask on one grid) onto a grid of ``spacing_xyz`` and 3x3 ``direction``
    with the same centre, large enough to hold the whole volume, and write them as patient ``pid``."""
    ref = images["ct"]
    extent = np.abs(direction.T) @ (np.asarray(ref.GetSize()) * np.asarray(ref.GetSpacing()))
    size = [int(math.ceil(e / s)) + 1 for e, s in zip(extent, spacing_xyz)]
    centre = np.asarray(ref.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in ref.GetSize()]))
    origin = centre - direction @ ((np.asarray(size) - 1) / 2 * np.asarray(spacing_xyz))
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing(tuple(float(s) for s in spacing_xyz))
    grid.SetDirection(tuple(float(d) for d in direction.ravel()))
    grid.SetOrigin(tuple(float(o) for o in origin))
    return write_patient(root, pid, resample(images["mr"], grid), resample(images["ct"], grid, -1000.0),
                         resample(images["mask"], grid, linear=False), tuple(spacing_xyz[::-1]), fmt=fmt,
                         origin=tuple(origin), direction=direction, mr_dtype=mr_dtype)
