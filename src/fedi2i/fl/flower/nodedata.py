"""One node's data: the training and validation slices of its own centre, from its own disk.

A hospital's SuperNode holds only its own patients, so it cannot call
:func:`fedi2i.data.federation.load_federation` (which needs every centre). The split below is the same
per-centre rule as :func:`fedi2i.data.slices.split_patients`: a centre's patients are shuffled by
``default_rng([seed, 104729, i])`` where ``i`` is the centre's position in ``data.train_centres``, so
it depends only on that centre's patients. A node therefore gets exactly the slices the in-process
engine gives that centre (``tests/test_flower_app.py`` checks this against ``load_federation``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedi2i.config import DataConfig
from fedi2i.data.federation import grid_settings
from fedi2i.data.slices import SliceSet, centre_split, load_slices
from fedi2i.data.synthrad import PatientRecord, load_centre_mapping, scan_dataset
from fedi2i.errors import ConfigError, DataError


@dataclass
class CentreData:
    """A centre's patients per split (``train``, ``val``, ``test``) and their slices, loaded on demand."""

    centre: str
    root: Path
    ids: dict[str, list[str]]
    records: dict[str, PatientRecord]
    cfg: DataConfig

    def split(self, name: str) -> SliceSet | None:
        """The slices of one split; None when the centre has no patient in it."""
        if name not in self.ids:
            raise ConfigError(f"unknown split {name!r}; splits are {sorted(self.ids)}")
        if not self.ids[name] and name != "train":  # no training patients is an error load_slices explains
            return None
        cfg = self.cfg
        return load_slices([self.records[p] for p in self.ids[name]], grid_settings(cfg), cfg.mr_percentiles,
                           cfg.min_mask_fraction, cfg.slice_stride, cfg.skip_bad)


def load_centre(cfg: DataConfig, seed: int, centre: str, root: Path,
                mapping: Path | None = None) -> CentreData:
    """Scan ``root`` for ``centre``'s patients and split them as the in-process engine does."""
    if centre not in cfg.train_centres:
        raise ConfigError(f"node centre {centre!r} is not a training centre of this run "
                          f"(data.train_centres = {cfg.train_centres}); fix the node's centre-id")
    mapping_path = mapping or cfg.centre_mapping
    records = scan_dataset(Path(root), load_centre_mapping(mapping_path) if mapping_path else None)
    mine = {r.pid: r for r in records if r.centre == centre}
    if not mine:
        found = sorted({r.centre for r in records})
        raise DataError(f"no patients of centre {centre} under {root} (centres found: {found}); check the "
                        f"node's data-path and centre-id")
    train, val, test, _ = centre_split(centre, list(mine), cfg.train_centres.index(centre), cfg.val_fraction,
                                       cfg.test_fraction, seed, cfg.holdout_patients, cfg.train_patients)
    return CentreData(centre, Path(root), {"train": train, "val": val, "test": test}, mine, cfg)
