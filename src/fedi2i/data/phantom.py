"""Fast procedural head phantom (deformed ellipsoid layers) for unit tests and the no-apt fallback.

It looks cartoonish on purpose: it exists so that tests run in milliseconds with paired MRI/CT that
share anatomy, and so that fedi2i still works where the real head sources cannot be fetched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from fedi2i.data.geometry import DEFAULT_FOV_MM
from fedi2i.data.synthrad import patient_id, write_patient
from fedi2i.seeding import hash_seed

# (CT HU, T1 intensity) per tissue class; T1: fat/scalp bright, bone and air dark, WM > GM > CSF.
TISSUES = {
    "air": (-1000.0, 0.0),
    "scalp": (40.0, 0.75),
    "bone": (1200.0, 0.08),
    "csf": (15.0, 0.15),
    "gm": (40.0, 0.45),
    "wm": (28.0, 0.65),
}


@dataclass(frozen=True)
class ScannerProfile:
    """Per-centre acquisition differences (the natural heterogeneity between hospitals)."""

    mr_gain: float = 1000.0
    mr_gamma: float = 1.0
    mr_noise: float = 0.02
    bias_strength: float = 0.1
    ct_noise: float = 10.0
    ct_offset: float = 0.0

    @classmethod
    def for_centre(cls, centre_index: int, seed: int) -> "ScannerProfile":
        rng = np.random.default_rng([seed, 7919, centre_index])
        return cls(
            mr_gain=float(rng.uniform(600, 1400)),
            mr_gamma=float(rng.uniform(0.8, 1.25)),
            mr_noise=float(rng.uniform(0.01, 0.04)),
            bias_strength=float(rng.uniform(0.0, 0.2)),
            ct_noise=float(rng.uniform(5, 25)),
            ct_offset=float(rng.uniform(-15, 15)),
        )


def _smooth_field(shape: tuple[int, ...], rng: np.random.Generator, scale: float) -> np.ndarray:
    """Low-frequency random field in [-1, 1]: coarse noise upsampled with cubic interpolation."""
    coarse = rng.uniform(-1, 1, size=(4, 4, 4))
    zoom = [s / 4 for s in shape]
    return ndimage.zoom(coarse, zoom, order=3, mode="nearest")[: shape[0], : shape[1], : shape[2]] * scale


def make_phantom_head(shape: tuple[int, int, int] = (64, 64, 64), seed: int = 0,
                      profile: ScannerProfile | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One paired (mr, ct, mask) head, arrays (z, y, x); anatomy varies with ``seed``."""
    rng = np.random.default_rng(seed)
    profile = profile or ScannerProfile()
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij")
    warp = _smooth_field(shape, rng, 0.06).astype(np.float32)
    radii = np.array([0.80, 0.85, 0.70]) * rng.uniform(0.9, 1.05, size=3)
    centre = rng.uniform(-0.04, 0.04, size=3)
    r = np.sqrt(((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2
                + ((xx - centre[2]) / radii[2]) ** 2) + warp
    skull_outer, skull_inner = 0.9, 0.9 - rng.uniform(0.07, 0.11)
    labels = np.zeros(shape, dtype=np.int8)  # 0 air
    labels[r < 1.0] = 1  # scalp
    labels[r < skull_outer] = 2  # bone
    labels[r < skull_inner] = 3  # csf
    labels[r < skull_inner - 0.04] = 4  # grey matter
    labels[r < skull_inner - 0.04 - rng.uniform(0.12, 0.2)] = 5  # white matter
    vent = np.sqrt(((yy - centre[1]) / 0.25) ** 2 + ((xx - centre[2]) / 0.08) ** 2 + ((zz - 0.1) / 0.2) ** 2)
    labels[(vent < 1.0) & (labels >= 4)] = 3  # ventricles
    sinus = np.sqrt(((yy + 0.55) / 0.12) ** 2 + (xx / 0.25) ** 2 + ((zz + 0.25) / 0.15) ** 2)
    labels[(sinus < 1.0) & (labels >= 1)] = 0  # frontal sinus: air inside bone
    ct_values = np.array([v[0] for v in TISSUES.values()], dtype=np.float32)
    mr_values = np.array([v[1] for v in TISSUES.values()], dtype=np.float32)
    density = 1.0 + rng.uniform(-0.15, 0.15)
    ct = ct_values[labels]
    ct[labels == 2] *= density
    ct += rng.normal(0, profile.ct_noise, shape).astype(np.float32) + profile.ct_offset
    ct[labels == 0] = -1000.0 + rng.normal(0, 5, int((labels == 0).sum())).astype(np.float32)
    mr = mr_values[labels] * (1 + _smooth_field(shape, rng, 0.05)).astype(np.float32)
    mr = np.clip(mr, 0, None) ** profile.mr_gamma
    mr *= 1 + _smooth_field(shape, rng, profile.bias_strength).astype(np.float32)
    mr = np.abs(mr + rng.normal(0, profile.mr_noise, shape).astype(np.float32)) * profile.mr_gain
    mask = ndimage.binary_dilation(labels > 0, iterations=2).astype(np.uint8)
    return mr.astype(np.float32), ct.astype(np.float32), mask


def build_phantom_dataset(root: Path, n_centres: int = 5, patients_per_centre: int = 4, seed: int = 0,
                          shape: tuple[int, int, int] = (32, 64, 64), fmt: str = "nii.gz") -> list[str]:
    """Write a phantom federation in the SynthRAD layout; centres A, B, ... differ by scanner profile.

    Isotropic voxels sized so that the in-plane field of view is the model's default (240 mm): the
    phantom head is then about 200 mm wide, like a real one, whatever ``shape`` is.
    """
    mm = DEFAULT_FOV_MM / shape[2]
    written = []
    for c in range(n_centres):
        centre = chr(ord("A") + c)
        profile = ScannerProfile.for_centre(c, seed)
        for p in range(1, patients_per_centre + 1):
            pid = patient_id(centre, p)
            mr, ct, mask = make_phantom_head(shape, seed=hash_seed(seed, c, p), profile=profile)
            write_patient(Path(root), pid, mr, ct, mask, spacing=(mm, mm, mm), fmt=fmt)
            written.append(pid)
    return written
