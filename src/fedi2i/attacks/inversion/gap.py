"""The objective gap: how well the true batch explains the observed update, beside the reconstruction.

The audit knows the truth, so it can ask what the attack's search could not: is there a better answer than
the one found? Both batches are put through the same exact replay of the client's local training, with the
client's real loss (L1 or MSE, no relaxation, no prior), and compared with the observed update by cosine
distance over the weights (0: explains it exactly; about 1: unrelated). The cosine is blind to the update's
scale, which DP clipping changes.

* Truth far below the reconstruction (``GAP_FACTOR`` or more): the search stopped short of an answer that
  explains the update better. A leak is **not excluded**: the verdict reads "search-limited".
* Truth not clearly below: the reconstruction explains the update as well as the truth does (the search
  did its job, or noise hides both); what it fails to show is then not in the update for this attack.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedi2i.attacks.inversion.base import cosine_distance, group_slices, replay_groups
from fedi2i.attacks.inversion.observation import Observation
from fedi2i.attacks.inversion.replay import LocalReplay

GAP_FACTOR = 2.0  # truth's distance at most 1/2 of the reconstruction's: the search left a better answer
FLOOR = 1e-6  # float32 resolution of a cosine: a truth below it explains the update exactly


class UpdateDistance:
    """Cosine distance of the update a candidate batch would produce to the observed one (weights only)."""

    def __init__(self, obs: Observation) -> None:
        self.obs = obs
        self.replay = LocalReplay(obs)
        self.observed = self.replay.split(obs.update).params
        self.rows = group_slices(obs)
        self.loss = F.l1_loss if obs.loss == "l1" else F.mse_loss

    def __call__(self, mr: torch.Tensor, ct: torch.Tensor) -> float:
        """``mr``, ``ct``: [N, 1, H, W] with N = the observation's items, rows in client order."""
        if mr.shape[0] != self.obs.items or ct.shape != mr.shape:
            raise ValueError(f"the update holds {self.obs.items} images; got MRI {tuple(mr.shape)}, "
                             f"CT {tuple(ct.shape)}")
        mr, ct = mr.float().detach(), ct.float().detach()
        if len(self.rows) == 1:
            sim = replay_groups(self.replay, self.obs, mr, lambda _k, pred, _t: self.loss(pred, ct))
        else:
            sim = replay_groups(self.replay, self.obs, mr, lambda k, pred, _t: self.loss(pred, ct[self.rows[k]]))
        return float(cosine_distance([p.detach() for p in sim.params], self.observed))


@dataclass(frozen=True)
class ObjectiveGap:
    reconstruction: float
    truth: float

    @property
    def ratio(self) -> float:
        """How many times better the truth explains the update (its distance floored at ``FLOOR``)."""
        return self.reconstruction / max(self.truth, FLOOR)

    @property
    def large(self) -> bool:
        return self.ratio >= GAP_FACTOR

    def as_dict(self) -> dict[str, object]:
        return {"reconstruction": self.reconstruction, "truth": self.truth, "ratio": self.ratio,
                "large": self.large, "factor": GAP_FACTOR, "distance": "cosine, weights, exact replay"}
