"""Membership ground truth by patient, and the one fixed list of candidate slices every model scores.

Members of centre k are the slices of k's training patients. Non-members are patients nobody trained
on: the held-out (``data.holdout_patients``), validation and test patients of every training centre and
the patients of the unseen centre(s). Membership is decided per patient, never per slice, because neighbouring axial slices of
one patient are near-duplicates: a held-out slice of a training patient would be a member in all
but name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedi2i.data.federation import FederatedData
from fedi2i.data.slices import SliceSet
from fedi2i.errors import DataError

SAME_CENTRE = "same_centre"
OTHER_CENTRE = "other_centre"


@dataclass
class TargetLabels:
    """Which candidate slices take part when centre ``target`` is attacked, and their labels.

    ``index``: candidate slice indices evaluated for this target (its members and every non-member;
    other centres' members are left out, they are members of the federation but not of this centre).
    ``label``: 1 member, 0 non-member. ``group``: for non-members, whether they come from the target's
    own centre (the true membership test) or another centre (confounded by scanner differences).
    """

    target: str
    index: np.ndarray
    label: np.ndarray
    group: np.ndarray  # "member", SAME_CENTRE or OTHER_CENTRE per evaluated slice
    patient: np.ndarray  # patient id per evaluated slice


@dataclass
class Candidates:
    """Candidate slices (one fixed list) with, per patient, its centre and who trained on it."""

    slices: SliceSet
    member_of: dict[str, str | None]  # patient -> training centre that trained on it, None: nobody
    home: dict[str, str]  # patient -> centre the patient comes from

    def __len__(self) -> int:
        return len(self.slices)

    @property
    def patients(self) -> list[str]:
        return self.slices.patients

    def members(self, centre: str) -> list[str]:
        return [p for p, c in self.member_of.items() if c == centre]

    def nonmembers(self) -> list[str]:
        return [p for p, c in self.member_of.items() if c is None]

    def labels_for(self, target: str, shuffle_seed: int | None = None) -> TargetLabels:
        """Evaluation set of one target centre; ``shuffle_seed`` permutes membership among its patients."""
        members = set(self.members(target))
        if not members:
            raise DataError(f"centre {target} has no member patients among the candidates; "
                            f"training centres: {sorted({c for c in self.member_of.values() if c})}")
        outsiders = set(self.nonmembers())
        wanted = members | outsiders
        if shuffle_seed is not None:  # control: same number of members, drawn at random among patients
            pool = sorted(wanted)
            rng = np.random.default_rng([shuffle_seed, 7919])
            members = set(rng.choice(pool, size=len(members), replace=False).tolist())
        index = np.array([i for i, p in enumerate(self.slices.patient) if p in wanted], dtype=np.int64)
        patient = np.array([self.slices.patient[i] for i in index])
        label = np.array([int(p in members) for p in patient], dtype=np.int64)
        group = np.array(["member" if p in members else
                          SAME_CENTRE if self.home[p] == target else OTHER_CENTRE for p in patient])
        return TargetLabels(target, index, label, group, patient)


def check_disjoint(data: FederatedData) -> None:
    """Raise if a patient is both trained on and held out, or trained on by two centres."""
    seen: dict[str, str] = {}
    for centre, pids in data.split.train.items():
        for pid in pids:
            if pid in seen:
                raise DataError(f"patient {pid} is a training patient of both centre {seen[pid]} and "
                                f"centre {centre}; membership would be ambiguous", patient=pid)
            seen[pid] = centre
    held_out = {p for groups in (data.split.val, data.split.test, data.split.holdout)
                for pids in groups.values() for p in pids}
    both = sorted(held_out & set(seen))
    if both:
        raise DataError(f"patient(s) {', '.join(both)} are both training and held-out patients: the patient "
                        "split is broken, members and non-members must never share a patient")


def _pick(slices: SliceSet, max_per_patient: int, rng: np.random.Generator) -> SliceSet:
    """At most ``max_per_patient`` slices per patient, drawn at random, kept in patient/slice order."""
    keep: list[int] = []
    for pid in slices.patients:
        idx = np.array([i for i, p in enumerate(slices.patient) if p == pid])
        if len(idx) > max_per_patient:
            idx = np.sort(rng.choice(idx, size=max_per_patient, replace=False))
        keep.extend(idx.tolist())
    return slices.select(torch.as_tensor(keep))


def build_candidates(data: FederatedData, max_slices_per_patient: int, seed: int) -> Candidates:
    """The candidate list: members of every training centre, then every non-member (seeded subsample)."""
    check_disjoint(data)
    rng = np.random.default_rng([seed, 1299709])
    parts: list[SliceSet] = []
    member_of: dict[str, str | None] = {}
    for centre in sorted(data.split.train):
        pids = data.split.train[centre]
        if centre not in data.train:
            raise DataError(f"training centre {centre} has no slices loaded")
        missing = sorted(set(pids) - set(data.train[centre].patient))
        if missing:
            raise DataError(f"training patient(s) {', '.join(missing)} of centre {centre} have no slices")
        parts.append(_pick(data.train[centre].of_patients(pids), max_slices_per_patient, rng))
        member_of.update({p: centre for p in pids})
    for groups, sets in ((data.split.holdout, data.holdout), (data.split.val, data.val), (data.split.test, data.test)):
        for centre in sorted(groups):
            if centre in sets and groups[centre]:
                part = _pick(sets[centre].of_patients(groups[centre]), max_slices_per_patient, rng)
                parts.append(part)
                member_of.update({p: None for p in part.patients})
    slices = SliceSet.concat(parts)
    if not any(c is None for c in member_of.values()):
        raise DataError("no non-member patients: membership inference needs held-out patients "
                        "(set data.val_fraction/test_fraction or add an unseen centre)")
    home = {p: c for p, c in zip(slices.patient, slices.centre)}
    return Candidates(slices, member_of, home)
