"""Inverting Gradients (Geiping et al., NeurIPS 2020), applied to the I2I update.

Cosine distance between the simulated and the observed update (over every weight, as one vector) plus
total variation; Adam on the sign of the gradient (robust to badly scaled layers), the known data range
as box constraints, step decay of the learning rate at 3/8, 5/8 and 7/8 of the budget, and restarts
from which the one with the lowest objective is kept (the attacker cannot see the truth). Several local
steps are unrolled (the paper's FedAvg setting); the aggregate of several clients is treated as one
batch. The dummy CT is a free variable as in the paper: with an L1 loss it receives no gradient.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
import torch.nn.functional as F

from fedi2i.attacks.inversion.base import (CT_BOX, Progress, Reconstruction, Tracker, cosine_distance,
                                           replay_groups, seeded, total_variation)
from fedi2i.attacks.inversion.observation import Observation
from fedi2i.attacks.inversion.replay import LocalReplay
from fedi2i.attacks.inversion.settings import IGSettings


def ig_attack(obs: Observation, settings: IGSettings, seed: int = 0, mr_box: tuple[float, float] = (-0.1, 1.5),
              progress: Progress | None = None, snapshot_every: int | None = None,
              snapshot_at: Collection[int] = ()) -> Reconstruction:
    """Run Inverting Gradients; the best of ``settings.restarts`` runs by final objective."""
    replay = LocalReplay(obs)
    target = replay.split(obs.update).params
    loss_fn = F.l1_loss if obs.loss == "l1" else F.mse_loss
    size, n = obs.image_size, obs.items
    tracker = Tracker(progress, snapshot_every, snapshot_at)
    best: tuple[float, torch.Tensor, torch.Tensor] | None = None
    iteration = 0
    for restart in range(settings.restarts):
        gen = seeded(seed, restart)
        x = torch.randn(n, 1, size, size, generator=gen).clamp(*mr_box).requires_grad_(True)
        y = torch.randn(n, 1, size, size, generator=gen).clamp(*CT_BOX).requires_grad_(True)
        optimiser = torch.optim.Adam([x, y], lr=settings.lr)
        its = settings.iterations
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimiser, milestones=[int(its * f) for f in (3 / 8, 5 / 8, 7 / 8)], gamma=0.1)
        objective = float("inf")
        for _ in range(its):
            optimiser.zero_grad()
            sim = replay_groups(replay, obs, x, lambda _k, pred, _t: loss_fn(pred, y), as_one_batch=True)
            loss = cosine_distance(sim.params, target) + settings.tv_weight * total_variation(x)
            loss.backward()
            for v in (x, y):
                if v.grad is not None:
                    v.grad.sign_()
            optimiser.step()
            scheduler.step()
            with torch.no_grad():
                x.clamp_(*mr_box)
                y.clamp_(*CT_BOX)
            objective = float(loss.detach())
            iteration += 1
            tracker.step(iteration, objective, lambda: (x, y))
        if best is None or objective < best[0]:
            best = (objective, x.detach().clone(), y.detach().clone())
    assert best is not None
    return Reconstruction("ig", best[1], best[2], best[0], iteration, tracker.seconds, tracker.history,
                          tracker.snapshots, {"restarts": settings.restarts})
