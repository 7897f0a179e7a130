"""Images the attacker may hold before it attacks: public slices, never the victim's.

A server that wants to invert updates can keep a population of head slices it is entitled to: a public data
set, or a centre outside the federation (the audit uses the unseen centres' slices, which no training ever
saw). From them it builds starts for its search: the **atlas** (their mean image) for a coarse-to-fine
solve, or a **population** of real slices, each candidate scored by how well it explains the update.

A :class:`Prior` holds tensors and the names of the centres and patients they came from, so the audit can
check that none of them belongs to a centre whose update is attacked (``check_disjoint``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from fedi2i.errors import ConfigError


@dataclass(frozen=True)
class Prior:
    """Slices the attacker holds: MRI (normalised) and CT ([-1, 1]) [P, 1, H, W], with where they came from."""

    mr: torch.Tensor
    ct: torch.Tensor
    centres: tuple[str, ...]
    patients: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.mr.ndim != 4 or self.mr.shape != self.ct.shape or self.mr.shape[0] == 0:
            raise ValueError(f"a prior needs matching non-empty [P, 1, H, W] MRI and CT, got {tuple(self.mr.shape)} "
                             f"and {tuple(self.ct.shape)}")

    def __len__(self) -> int:
        return int(self.mr.shape[0])

    @property
    def size(self) -> int:
        return int(self.mr.shape[-1])

    def atlas(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean MRI and CT [1, 1, H, W]: a blurred head at no particular level."""
        return self.mr.mean(0, keepdim=True), self.ct.mean(0, keepdim=True)

    def describe(self) -> str:
        return (f"{len(self)} slices of {len(set(self.patients))} patients from centre(s) "
                f"{', '.join(sorted(set(self.centres)))}")

    def check_disjoint(self, centres: Iterable[str], patients: Iterable[str] = ()) -> None:
        """Refuse a prior that holds a slice of an attacked centre or patient (the attacker cannot hold it)."""
        bad_c = sorted(set(self.centres) & set(centres))
        bad_p = sorted(set(self.patients) & set(patients))
        if bad_c or bad_p:
            raise ConfigError(f"the attacker's prior holds slices of the attacked centre(s) {bad_c} or patient(s) "
                              f"{bad_p[:5]}: a prior must come from centres outside the attacked update")
