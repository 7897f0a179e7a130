"""Fetch and parse the two Debian packages that ship real head data (a CT and the Colin27 T1).

The data is GPL-2, so it is never bundled: ``apt-get download`` puts the packages into a cache
folder and ``dpkg-deb -x`` unpacks them there, without installing anything on the system.
Where apt or dpkg is missing or the download fails, :class:`HeadSourcesUnavailable` says so and the
caller can fall back to the procedural phantom.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from fedi2i.data.cache import cache_dir as default_cache_dir, cache_lock
from fedi2i.errors import DataError

PACKAGES = ("invesalius-examples", "mricron-data")
CRANIUM = "usr/share/doc/invesalius-examples/examples/Cranium.inv3"
COLIN_T1 = "usr/share/mricron/templates/ch2.nii.gz"
COLIN_BRAIN = "usr/share/mricron/templates/ch2bet.nii.gz"
REQUIRED = (CRANIUM, COLIN_T1, COLIN_BRAIN)


class HeadSourcesUnavailable(DataError):
    """The real head data could not be fetched or read; use the procedural phantom instead."""


def _have_sources(sources: Path) -> bool:
    return all((sources / rel).is_file() for rel in REQUIRED)


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HeadSourcesUnavailable(f"could not run {' '.join(cmd)}: {exc}") from exc


def _tail(proc: subprocess.CompletedProcess[str]) -> str:
    lines = (proc.stderr or proc.stdout or "").strip().splitlines()
    return " | ".join(lines[-3:]) if lines else f"exit status {proc.returncode}"


def _download(debs: Path) -> list[Path]:
    """``apt-get download`` the packages, refreshing the package lists once if needed."""
    debs.mkdir(parents=True, exist_ok=True)
    proc = _run(["apt-get", "download", *PACKAGES], debs)
    if proc.returncode != 0 and os.geteuid() == 0:
        _run(["apt-get", "update"], debs)
        proc = _run(["apt-get", "download", *PACKAGES], debs)
    files = sorted(debs.glob("*.deb"))
    missing = [p for p in PACKAGES if not any(f.name.startswith(p + "_") for f in files)]
    if proc.returncode != 0 or missing:
        raise HeadSourcesUnavailable(
            f"apt-get download {' '.join(PACKAGES)} failed ({_tail(proc)}); "
            "the realistic head data needs apt with Debian package lists and network access"
        )
    return files


def fetch_head_sources(cache_dir: Path | None = None) -> Path:
    """Download and unpack the head data into ``<cache>/sources`` (once); return that folder.

    Raises HeadSourcesUnavailable when apt-get or dpkg-deb is missing or fails.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    sources = cache / "sources"
    if _have_sources(sources):
        return sources
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise HeadSourcesUnavailable(
                f"{tool} is not available on this system, so the Debian head data cannot be fetched; "
                "use the procedural phantom instead"
            )
    with cache_lock(cache, "sources"):
        if _have_sources(sources):
            return sources
        debs = _download(cache / "debs")
        staging = Path(tempfile.mkdtemp(prefix="sources-", dir=cache))
        try:
            for deb in debs:
                proc = _run(["dpkg-deb", "-x", str(deb), str(staging)], cache)
                if proc.returncode != 0:
                    raise HeadSourcesUnavailable(f"dpkg-deb -x {deb.name} failed: {_tail(proc)}")
            if not _have_sources(staging):
                raise HeadSourcesUnavailable(
                    "the unpacked packages lack the expected files: " + ", ".join(REQUIRED))
            if sources.exists():
                shutil.rmtree(sources)
            os.replace(staging, sources)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return sources


def read_cranium_ct(sources: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The InVesalius example CT as (z, y, x) HU int16 and its spacing (sz, sy, sx) in mm.

    ``Cranium.inv3`` is a gzip tar holding ``main.plist`` (shape, dtype, spacing as x, y, z) and the
    raw voxel matrix it names.
    """
    path = Path(sources) / CRANIUM
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            plist = plistlib.loads(tar.extractfile(members["main.plist"]).read())  # type: ignore[union-attr]
            info = plist["matrix"]
            raw = tar.extractfile(members[info["filename"]]).read()  # type: ignore[union-attr]
    except (OSError, KeyError, tarfile.TarError, plistlib.InvalidFileException) as exc:
        raise HeadSourcesUnavailable(f"cannot read the example CT: {exc}", path=str(path)) from exc
    shape = tuple(int(s) for s in info["shape"])
    dtype = np.dtype(info.get("dtype", "int16")).newbyteorder("<")
    if len(raw) != int(np.prod(shape)) * dtype.itemsize:
        raise HeadSourcesUnavailable(f"matrix size {len(raw)} bytes does not match shape {shape}",
                                     path=str(path))
    volume = np.frombuffer(raw, dtype=dtype).reshape(shape).astype(np.int16)
    sx, sy, sz = (float(s) for s in plist["spacing"])
    return volume, (sz, sy, sx)


def read_colin(sources: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Colin27 T1 (float32) and its brain mask (bool) as (z, y, x) arrays in RAS+, with spacing."""
    images = []
    for rel in (COLIN_T1, COLIN_BRAIN):
        path = Path(sources) / rel
        try:
            images.append(nib.as_closest_canonical(nib.load(str(path))))
        except (OSError, nib.filebasedimages.ImageFileError) as exc:
            raise HeadSourcesUnavailable(f"cannot read {path.name}: {exc}", path=str(path)) from exc
    t1 = np.asarray(images[0].dataobj, dtype=np.float32).transpose(2, 1, 0)
    brain = (np.asarray(images[1].dataobj) > 0).transpose(2, 1, 0)
    zooms = images[0].header.get_zooms()[:3]
    return np.ascontiguousarray(t1), np.ascontiguousarray(brain), (
        float(zooms[2]), float(zooms[1]), float(zooms[0]))
