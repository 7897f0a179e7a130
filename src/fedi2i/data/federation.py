"""From a data config to per-centre slice sets: resolve (or build) the dataset, split, load, slice."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from fedi2i.config import DataConfig
from fedi2i.data.phantom import build_phantom_dataset
from fedi2i.data.slices import PatientSplit, SliceSet, load_slices, split_patients
from fedi2i.data.synthrad import PatientRecord, load_centre_mapping, scan_dataset
from fedi2i.errors import DataError

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where fetched sources and built datasets live (``FEDI2I_CACHE`` overrides ``~/.cache/fedi2i``)."""
    return Path(os.environ.get("FEDI2I_CACHE", Path.home() / ".cache" / "fedi2i"))


def default_dataset_dir(cfg: DataConfig, seed: int) -> Path:
    return cache_dir() / "datasets" / f"{cfg.source}-{cfg.n_centres}x{cfg.patients_per_centre}-seed{seed}"


def build_dataset(root: Path, cfg: DataConfig, seed: int, progress: bool = True) -> str:
    """Build the built-in dataset; falls back to the phantom (and says so) where apt is unavailable.

    Returns the source actually built ("head" or "phantom"). A ``.complete`` marker is written last so
    an interrupted build is redone instead of used half-made.
    """
    root = Path(root)
    source = cfg.source
    if source == "head":
        from fedi2i.data.headsim import HeadSourcesUnavailable, build_head_dataset

        try:
            build_head_dataset(root, n_centres=cfg.n_centres, patients_per_centre=cfg.patients_per_centre,
                               seed=seed, cache_dir=cache_dir(), progress=progress)
        except HeadSourcesUnavailable as exc:
            log.warning("realistic head sources unavailable (%s); falling back to the procedural phantom", exc)
            source = "phantom"
    if source == "phantom":
        build_phantom_dataset(root, n_centres=cfg.n_centres, patients_per_centre=cfg.patients_per_centre,
                              seed=seed)
    (root / ".complete").write_text(source)
    return source


def resolve_root(cfg: DataConfig, seed: int, progress: bool = True) -> Path:
    """The configured data folder, or the built-in dataset in the cache (built on first use)."""
    if cfg.root is not None:
        return Path(cfg.root)
    root = default_dataset_dir(cfg, seed)
    if not (root / ".complete").exists():
        log.info("building the built-in %s dataset in %s", cfg.source, root)
        build_dataset(root, cfg, seed, progress=progress)
    return root


@dataclass
class FederatedData:
    """Slices of every centre, split by patient."""

    root: Path
    split: PatientSplit
    train: dict[str, SliceSet]
    val: dict[str, SliceSet]
    test: dict[str, SliceSet]

    def centralised_train(self) -> SliceSet:
        return SliceSet.concat(list(self.train.values()))


def load_federation(cfg: DataConfig, seed: int, progress: bool = True) -> FederatedData:
    """Resolve the dataset, split patients per centre (seeded) and load the slices of every split."""
    root = resolve_root(cfg, seed, progress)
    mapping = load_centre_mapping(cfg.centre_mapping) if cfg.centre_mapping else None
    records = scan_dataset(root, mapping)
    split = split_patients(records, cfg.train_centres, cfg.unseen_centres, cfg.val_fraction,
                           cfg.test_fraction, seed)
    by_pid: dict[str, PatientRecord] = {r.pid: r for r in records}

    def load(pids: list[str]) -> SliceSet:
        return load_slices([by_pid[p] for p in pids], cfg.image_size, cfg.mr_percentiles,
                           cfg.min_mask_fraction, cfg.slice_stride, cfg.skip_bad)

    def load_all(groups: dict[str, list[str]]) -> dict[str, SliceSet]:
        out = {}
        for centre, pids in groups.items():
            if not pids:
                continue
            try:
                out[centre] = load(pids)
            except DataError as exc:
                if not cfg.skip_bad:
                    raise
                log.warning("centre %s: %s", centre, exc)
        return out

    train = load_all(split.train)
    empty = [c for c in cfg.train_centres if c not in train]
    if empty:
        raise DataError(f"training centre(s) {', '.join(empty)} have no usable training data")
    return FederatedData(root=root, split=split, train=train, val=load_all(split.val), test=load_all(split.test))
