"""From a data config to per-centre slice sets: resolve (or build) the dataset, split, load, slice."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from fedi2i.config import DataConfig
from fedi2i.data.cache import cache_dir
from fedi2i.data.phantom import build_phantom_dataset
from fedi2i.data.geometry import DEFAULT_FOV_MM, GridSettings
from fedi2i.data.slices import PatientSplit, SliceSet, slice_patients, split_patients
from fedi2i.data.synthrad import PatientRecord, load_centre_mapping, scan_dataset
from fedi2i.errors import DataError

log = logging.getLogger(__name__)

COMPLETE = ".complete"  # written last by a build; holds the source it built


def default_dataset_dir(cfg: DataConfig, seed: int, source: str | None = None) -> Path:
    """Cache folder of a built-in dataset; ``source`` (default: the config's) names what it holds."""
    return cache_dir() / "datasets" / f"{source or cfg.source}-{cfg.n_centres}x{cfg.patients_per_centre}-seed{seed}"


def grid_settings(cfg: DataConfig) -> GridSettings:
    """The model grid of a data config: ``spacing_mm`` or ``fov_mm`` (default 240 mm) over ``image_size``."""
    if cfg.spacing_mm is not None:
        return GridSettings(cfg.image_size, float(cfg.spacing_mm))
    return GridSettings(cfg.image_size, float(cfg.fov_mm or DEFAULT_FOV_MM) / cfg.image_size)


def complete_source(root: Path) -> str | None:
    """The source a finished build in ``root`` holds ("head" or "phantom"), None when unfinished."""
    marker = Path(root) / COMPLETE
    if not marker.is_file():
        return None
    text = marker.read_text().strip()
    return text if text in ("head", "phantom") else None


def build_dataset(root: Path, cfg: DataConfig, seed: int, progress: bool = True) -> str:
    """Build the built-in dataset into ``root`` and return the source built ("head" or "phantom").

    Raises HeadSourcesUnavailable where the real head sources cannot be fetched (see
    :func:`build_cached`, which falls back). A ``.complete`` marker is written last so an interrupted
    build is redone instead of used half-made.
    """
    root = Path(root)
    if cfg.source == "head":
        from fedi2i.data.headsim import build_head_dataset

        build_head_dataset(root, n_centres=cfg.n_centres, patients_per_centre=cfg.patients_per_centre,
                           seed=seed, cache_dir=cache_dir(), progress=progress)
    else:
        build_phantom_dataset(root, n_centres=cfg.n_centres, patients_per_centre=cfg.patients_per_centre,
                              seed=seed)
    (root / COMPLETE).write_text(cfg.source)
    return cfg.source


@dataclass(frozen=True)
class BuiltData:
    """A built-in dataset in the cache: where it is, what it holds, and whether it was already there."""

    root: Path
    source: str
    requested: str
    reused: bool

    @property
    def fallback(self) -> bool:
        return self.source != self.requested


def build_cached(cfg: DataConfig, seed: int, progress: bool = True, out: Path | None = None) -> BuiltData:
    """The built-in dataset, built on first use and reused when complete.

    Where the head sources are unavailable it warns and builds the phantom instead, cached under the
    phantom's own name (never under the head's), and says so in the result.
    """
    root = Path(out) if out is not None else default_dataset_dir(cfg, seed)
    done = complete_source(root)
    if done is not None:
        return BuiltData(root, done, cfg.source, reused=True)
    if cfg.source == "head":
        from fedi2i.data.headsim import HeadSourcesUnavailable

        try:
            return BuiltData(root, build_dataset(root, cfg, seed, progress), cfg.source, reused=False)
        except HeadSourcesUnavailable as exc:
            log.warning("realistic head sources unavailable (%s); falling back to the procedural phantom", exc)
            phantom_cfg = cfg.model_copy(update={"source": "phantom"})
            root = Path(out).with_name(Path(out).name + "-phantom") if out is not None \
                else default_dataset_dir(cfg, seed, "phantom")
            if complete_source(root) == "phantom":
                return BuiltData(root, "phantom", cfg.source, reused=True)
            return BuiltData(root, build_dataset(root, phantom_cfg, seed, progress), cfg.source, reused=False)
    return BuiltData(root, build_dataset(root, cfg, seed, progress), cfg.source, reused=False)


def resolve_root(cfg: DataConfig, seed: int, progress: bool = True) -> Path:
    """The configured data folder, or the built-in dataset in the cache (built on first use)."""
    return resolve_data(cfg, seed, progress)[0]


def resolve_data(cfg: DataConfig, seed: int, progress: bool = True) -> tuple[Path, str]:
    """(data folder, what it holds): ``"folder"`` for the user's own data, else the built-in source."""
    if cfg.root is not None:
        return Path(cfg.root), "folder"
    built = build_cached(cfg, seed, progress)
    return built.root, built.source


def fingerprint(records: list[PatientRecord]) -> str:
    """SHA-256 over every patient's ID, centre and image bytes: two runs with the same value saw the same data."""
    digest = hashlib.sha256()
    for record in sorted(records, key=lambda r: r.pid):
        digest.update(f"{record.pid}\0{record.centre}\0".encode())
        for modality in sorted(record.files):
            digest.update(modality.encode())
            with open(record.files[modality], "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def detect_centres(cfg: DataConfig) -> tuple[DataConfig, str | None]:
    """Centres found in ``cfg.root`` when the configured ones are not all there.

    Returns the config to use and a message saying what changed (None when the config's centres are
    all present). Found centres are sorted; the last one is left unseen, the others train.
    """
    if cfg.root is None:
        return cfg, None
    mapping = load_centre_mapping(cfg.centre_mapping) if cfg.centre_mapping else None
    found = sorted({r.centre for r in scan_dataset(Path(cfg.root), mapping)})
    wanted = cfg.train_centres + cfg.unseen_centres
    if all(c in found for c in wanted):
        return cfg, None
    if len(found) < 2:
        raise DataError(f"found only centre {', '.join(found)}: a federation needs at least two centres (one to "
                        "train, one unseen); set data.train_centres and data.unseen_centres, or give a "
                        "centre mapping file", path=str(cfg.root))
    train, unseen = found[:-1], found[-1:]
    message = (f"centre(s) {', '.join(c for c in wanted if c not in found)} of the config are not in {cfg.root}; "
               f"using the centres found there: training {', '.join(train)}, unseen {unseen[0]} "
               "(choose with --set data.train_centres=[...] --set data.unseen_centres=[...])")
    return cfg.model_copy(update={"train_centres": train, "unseen_centres": unseen}), message


@dataclass
class FederatedData:
    """Slices of every centre, split by patient, and what the run must record about the data."""

    root: Path
    split: PatientSplit
    train: dict[str, SliceSet]
    val: dict[str, SliceSet]
    test: dict[str, SliceSet]
    records: dict[str, PatientRecord] = field(default_factory=dict)
    grid: GridSettings = field(default_factory=lambda: GridSettings.default(64))
    percentiles: tuple[float, float] = (0.5, 99.5)
    source: str = "folder"
    fingerprint: str = ""
    skipped: dict[str, str] = field(default_factory=dict)
    requested: str = "folder"  # what the config asked for ("head" can fall back to "phantom")
    holdout: dict[str, SliceSet] = field(default_factory=dict)  # held-out patients (membership non-members)

    def centralised_train(self) -> SliceSet:
        return SliceSet.concat(list(self.train.values()))

    def with_train_patients(self, n: int) -> "FederatedData":
        """This federation with each centre's first ``n`` training patients by ID, as ``data.train_patients=n``
        splits it; the others take no part. Nothing is reloaded (the exposure curve's smaller federations)."""
        train = {c: sorted(pids)[:n] for c, pids in self.split.train.items()}
        return replace(self, split=replace(self.split, train=train),
                       train={c: self.train[c].of_patients(pids) for c, pids in train.items()})

    def summary(self) -> dict[str, object]:
        """What a run folder records about its data: folder, actual source, fingerprint, grid, skipped patients."""
        return {"root": str(self.root), "source": self.source, "requested_source": self.requested,
                "fallback": self.source != self.requested, "fingerprint": self.fingerprint,
                "grid": self.grid.as_dict(), "patients": len(self.records), "skipped": dict(self.skipped)}


def patient_slices(records: list[PatientRecord], cfg: DataConfig) -> tuple[dict[str, SliceSet], dict[str, str]]:
    """Each patient's slices on the config's grid; a bad patient raises, or with ``skip_bad`` is listed.

    Both the in-process federation and a Flower node's own centre (:mod:`fedi2i.fl.flower.nodedata`) load
    through here, and both leave bad patients out before they split, so their splits are the same."""
    return slice_patients(records, grid_settings(cfg), cfg.mr_percentiles, cfg.min_mask_fraction, cfg.slice_stride,
                          cfg.skip_bad)


def load_federation(cfg: DataConfig, seed: int, progress: bool = True) -> FederatedData:
    """Resolve the dataset, check every patient, split patients per centre (seeded), slice every split.

    With ``skip_bad`` a patient that fails its checks is left out *before* the split (so it takes no
    place in it) and listed in :attr:`FederatedData.skipped`; without it the first bad patient raises.
    """
    root, source = resolve_data(cfg, seed, progress)
    mapping = load_centre_mapping(cfg.centre_mapping) if cfg.centre_mapping else None
    used = set(cfg.train_centres) | set(cfg.unseen_centres)
    records = [r for r in scan_dataset(root, mapping) if r.centre in used]
    grid = grid_settings(cfg)
    slices, skipped = patient_slices(records, cfg)
    good = [r for r in records if r.pid in slices]
    if records and not good:
        raise DataError(f"every patient under {root} failed its checks; run `fedi2i data inspect {root}`")
    split = split_patients(good, cfg.train_centres, cfg.unseen_centres, cfg.val_fraction, cfg.test_fraction, seed,
                           cfg.holdout_patients, cfg.train_patients)

    def gather(groups: dict[str, list[str]]) -> dict[str, SliceSet]:
        return {c: SliceSet.concat([slices[p] for p in pids]) for c, pids in groups.items() if pids}

    return FederatedData(root=root, split=split, train=gather(split.train), val=gather(split.val),
                         test=gather(split.test), holdout=gather(split.holdout), records={r.pid: r for r in good},
                         grid=grid,
                         percentiles=tuple(cfg.mr_percentiles), source=source,  # type: ignore[arg-type]
                         fingerprint=fingerprint(good), skipped=skipped,
                         requested="folder" if cfg.root is not None else cfg.source)
