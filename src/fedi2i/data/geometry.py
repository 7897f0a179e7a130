"""Patient geometry: canonical orientation, the physical model grid, and the way back to a native grid.

Every volume is resampled (SimpleITK) onto one *model grid* per patient before slicing:

- canonical orientation: the grid has the identity direction, i.e. ITK's LPS (x to the patient's left,
  y posterior, z superior), whatever the file's direction matrix (flipped or permuted axes, oblique);
- axial slices: an oblique volume is resampled onto axial planes;
- physical pixels: ``image_size`` x ``image_size`` pixels of ``pixel_mm`` in-plane (a fixed field of
  view of ``image_size * pixel_mm`` mm), centred on the body mask; the MRI is anti-aliased first
  where the scan is finer, so the model's input does not depend on the scan's voxel size (the CT
  target and the mask are sampled as they are);
- through-plane: the native slice spacing is kept, and for a non-oblique volume the native slice
  positions too, so no slice is interpolated in z.

The same grid maps a prediction back onto the patient's native grid (:func:`to_native`), for
evaluation and for ``fedi2i predict``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

CANONICAL_ORIENTATION = "LPS"  # ITK's identity direction
DEFAULT_FOV_MM = 240.0
OBLIQUE_DEG = 1.0  # a voxel axis further than this from every world axis makes a grid oblique
ANISOTROPY_RATIO = 3.0  # largest / smallest voxel size above this is flagged as strongly anisotropic


@dataclass(frozen=True)
class GridSettings:
    """The model grid's in-plane size: ``image_size`` pixels of ``pixel_mm`` (field of view their product)."""

    image_size: int
    pixel_mm: float

    @property
    def fov_mm(self) -> float:
        return self.image_size * self.pixel_mm

    @classmethod
    def default(cls, image_size: int) -> "GridSettings":
        return cls(image_size, DEFAULT_FOV_MM / image_size)

    def as_dict(self) -> dict[str, float]:
        return {"image_size": self.image_size, "pixel_mm": self.pixel_mm, "fov_mm": self.fov_mm}


def make_image(array: np.ndarray, spacing: tuple[float, float, float],
               origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
               direction: tuple[float, ...] | np.ndarray | None = None) -> sitk.Image:
    """SimpleITK image from a (z, y, x) array, spacing (sz, sy, sx), LPS origin (x, y, z), 3x3 direction."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    image.SetOrigin(tuple(float(o) for o in origin))
    if direction is not None:
        image.SetDirection(tuple(float(d) for d in np.asarray(direction, dtype=np.float64).ravel()))
    return image


def orientation_code(direction: tuple[float, ...] | np.ndarray) -> str:
    """Three-letter code of the closest orientation, e.g. ``LPS`` (ITK identity) or ``RAS`` (x, y flipped)."""
    cosines = tuple(float(d) for d in np.asarray(direction, dtype=np.float64).ravel())
    return str(sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(cosines))


def obliquity_deg(direction: tuple[float, ...] | np.ndarray) -> float:
    """Largest angle (degrees) between a voxel axis and the world axis closest to it (0 when axis-aligned)."""
    d = np.abs(np.asarray(direction, dtype=np.float64).reshape(3, 3))
    cos = np.clip(d.max(axis=0) / np.linalg.norm(d, axis=0), -1.0, 1.0)
    return float(np.degrees(np.arccos(cos)).max())


def anisotropy(spacing: tuple[float, float, float]) -> float:
    """Largest over smallest voxel size (1 for isotropic voxels)."""
    return float(max(spacing) / min(spacing))


def _corners(image: sitk.Image, lo: tuple[int, int, int], hi: tuple[int, int, int]) -> np.ndarray:
    """World (x, y, z) of the 8 corners of the index box [lo, hi] (ITK index order x, y, z); [8, 3]."""
    pts = [image.TransformIndexToPhysicalPoint((int(i), int(j), int(k)))
           for i in (lo[0], hi[0]) for j in (lo[1], hi[1]) for k in (lo[2], hi[2])]
    return np.asarray(pts, dtype=np.float64)


def _through_plane_spacing(image: sitk.Image) -> float:
    """Spacing along the voxel axis closest to world z."""
    d = np.abs(np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3))
    return float(image.GetSpacing()[int(np.argmax(d[2]))])


def _shift_to_fit(lo: np.ndarray, hi: np.ndarray, settings: GridSettings) -> np.ndarray:
    """Whole-pixel shift (mm, per in-plane axis) that brings the box [lo, hi] (relative to the current
    centre) inside the field of view, or centres it when it is wider."""
    half, px = settings.fov_mm / 2, settings.pixel_mm
    shift = np.zeros_like(lo)
    for a in range(lo.size):
        if hi[a] - lo[a] > 2 * half:
            shift[a] = np.round(0.5 * (lo[a] + hi[a]) / px) * px
        elif hi[a] > half:
            shift[a] = np.ceil((hi[a] - half) / px) * px
        elif lo[a] < -half:
            shift[a] = -np.ceil((-half - lo[a]) / px) * px
    return shift


def model_grid(native: sitk.Image, mask: np.ndarray, settings: GridSettings) -> sitk.Image:
    """The patient's model grid (an empty float32 image): identity direction, axial, physical pixels.

    ``mask`` is the body mask on ``native``'s grid, (z, y, x). In-plane the grid is centred on the
    volume's centre, moved by whole model pixels only as far as needed to hold the mask's bounding box
    (or onto the box's centre when the box is wider than the field of view); so a volume whose field of
    view equals the model's is sampled exactly as a plain resize would. In z it keeps the native slice
    spacing and covers the whole volume.
    """
    size = tuple(int(s) for s in native.GetSize())
    box = _corners(native, (0, 0, 0), tuple(s - 1 for s in size))  # type: ignore[arg-type]
    centre = 0.5 * (box.min(0) + box.max(0))
    nz_idx = np.nonzero(mask)
    if nz_idx[0].size:
        lo = (int(nz_idx[2].min()), int(nz_idx[1].min()), int(nz_idx[0].min()))
        hi = (int(nz_idx[2].max()), int(nz_idx[1].max()), int(nz_idx[0].max()))
        body = _corners(native, lo, hi)
        centre[:2] += _shift_to_fit(body.min(0)[:2] - centre[:2], body.max(0)[:2] - centre[:2], settings)
    sz = _through_plane_spacing(native)
    z0, z1 = float(box[:, 2].min()), float(box[:, 2].max())
    nz = max(int(math.floor((z1 - z0) / sz + 1e-6)) + 1, 1)
    n = settings.image_size
    half = (n - 1) / 2 * settings.pixel_mm
    grid = sitk.Image(n, n, nz, sitk.sitkFloat32)
    grid.SetSpacing((settings.pixel_mm, settings.pixel_mm, sz))
    grid.SetOrigin((float(centre[0] - half), float(centre[1] - half), z0))
    grid.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return grid


def antialias_sigma_mm(image: sitk.Image, grid: sitk.Image) -> tuple[float, float, float]:
    """Gaussian sigma (mm, per image axis) before sampling ``image`` on a coarser ``grid``.

    As scikit-image's ``resize(anti_aliasing=True)``: sigma = (factor - 1) / 2 input voxels, where factor
    is the grid's spacing along the world axis closest to that image axis over the image's spacing;
    0 where the grid is not coarser.
    """
    d = np.abs(np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3))
    g = np.abs(np.asarray(grid.GetDirection(), dtype=np.float64).reshape(3, 3))
    sigmas = []
    for axis, spacing in enumerate(image.GetSpacing()):
        world = int(np.argmax(d[:, axis]))
        coarse = float(grid.GetSpacing()[int(np.argmax(g[world]))])
        sigmas.append(max(coarse - spacing, 0.0) / 2)
    return tuple(sigmas)  # type: ignore[return-value]


def resample(image: sitk.Image, grid: sitk.Image, default: float = 0.0, linear: bool = True,
             antialias: bool = False) -> np.ndarray:
    """``image`` sampled on ``grid`` (same world positions), as a float32 (z, y, x) array.

    With ``antialias``, sampling onto a coarser grid is preceded by a Gaussian (:func:`antialias_sigma_mm`),
    so that a head scanned at 1 mm and one scanned at 2 mm give the model the same input.
    """
    image = sitk.Cast(image, sitk.sitkFloat32)
    sigma = antialias_sigma_mm(image, grid) if antialias else (0.0, 0.0, 0.0)
    if max(sigma) > 0:
        image = sitk.DiscreteGaussian(image, [s * s for s in sigma], 32, 0.01, True)
    out = sitk.Resample(image, grid, sitk.Transform(),
                        sitk.sitkLinear if linear else sitk.sitkNearestNeighbor, float(default), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def to_native(volume: np.ndarray, grid: sitk.Image, native: sitk.Image, default: float) -> np.ndarray:
    """A (z, y, x) volume on the model ``grid`` resampled (linear) onto ``native``'s grid; float32."""
    source = sitk.GetImageFromArray(np.ascontiguousarray(volume, dtype=np.float32))
    source.CopyInformation(grid)
    return resample(source, native, default=default)
