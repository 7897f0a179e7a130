"""One node's data: the training and validation slices of its own centre, from its own disk.

A hospital's SuperNode holds only its own patients, so it cannot call
:func:`fedi2i.data.federation.load_federation` (which needs every centre). It splits its centre with the
same per-centre rule, :func:`fedi2i.data.slices.centre_split` (seeded by the centre's position in
``data.train_centres`` only), and loads patients through the same
:func:`fedi2i.data.federation.patient_slices`; with ``skip_bad`` it checks every patient before the split,
as ``load_federation`` does, so a bad patient takes no place in it. A node therefore gets exactly the
slices the in-process engine gives that centre (``tests/test_flower_app.py`` checks this against
``load_federation``). Without ``skip_bad`` a split's patients load when that split is first asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fedi2i.config import DataConfig
from fedi2i.data.federation import patient_slices
from fedi2i.data.slices import SliceSet, centre_split
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
    loaded: dict[str, SliceSet] = field(default_factory=dict)  # patient ID -> slices, once read

    def split(self, name: str) -> SliceSet | None:
        """The slices of one split; None when the centre has no patient in it."""
        if name not in self.ids:
            raise ConfigError(f"unknown split {name!r}; splits are {sorted(self.ids)}")
        if not self.ids[name]:
            if name == "train":
                raise DataError(f"centre {self.centre} has no training patients under {self.root}")
            return None
        missing = [self.records[p] for p in self.ids[name] if p not in self.loaded]
        self.loaded.update(patient_slices(missing, self.cfg)[0])
        return SliceSet.concat([self.loaded[p] for p in self.ids[name] if p in self.loaded])


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
    loaded: dict[str, SliceSet] = {}
    pids = list(mine)
    if cfg.skip_bad:  # bad patients leave before the split, as in load_federation
        loaded, _ = patient_slices(list(mine.values()), cfg)
        pids = [p for p in pids if p in loaded]
    train, val, test, _ = centre_split(centre, pids, cfg.train_centres.index(centre), cfg.val_fraction,
                                       cfg.test_fraction, seed, cfg.holdout_patients, cfg.train_patients)
    return CentreData(centre, Path(root), {"train": train, "val": val, "test": test}, mine, cfg, loaded)
