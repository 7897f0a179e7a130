"""Deep Leakage from Gradients (Zhu et al., NeurIPS 2019), applied to the I2I update as the study did.

The attacker treats the observed update as one gradient of the whole batch at the global model
(``-update / (lr * steps)``, exact for one SGD step), and optimises a dummy MRI and a dummy CT, both
started from N(0, 1), so that their gradient matches it in squared L2 distance, with L-BFGS.
DLG knows nothing of image-to-image losses: with an L1 loss the gradient of the matching distance with
respect to the dummy CT is zero (the loss gradient only holds sign(prediction - CT)), so the CT never
moves from its random start. That is the baseline's known failure, kept on purpose.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
import torch.nn.functional as F

from fedi2i.attacks.inversion.base import CT_BOX, Progress, Reconstruction, Tracker, l2_distance, seeded
from fedi2i.attacks.inversion.observation import Observation
from fedi2i.attacks.inversion.replay import LocalReplay
from fedi2i.attacks.inversion.settings import DLGSettings


def dlg_attack(obs: Observation, settings: DLGSettings, seed: int = 0, mr_box: tuple[float, float] = (-0.1, 1.5),
               progress: Progress | None = None, snapshot_every: int | None = None,
               snapshot_at: Collection[int] = ()) -> Reconstruction:
    """Run DLG on one observation; ``settings.iterations`` L-BFGS steps (strong-Wolfe line search)."""
    replay = LocalReplay(obs)
    target = [-g / (obs.lr * obs.steps) for g in replay.split(obs.update).params]
    size = obs.image_size
    gen = seeded(seed, 0)
    x = torch.randn(obs.items, 1, size, size, generator=gen).requires_grad_(True)
    y = torch.randn(obs.items, 1, size, size, generator=gen).requires_grad_(True)
    loss_fn = F.l1_loss if obs.loss == "l1" else F.mse_loss
    optimiser = torch.optim.LBFGS([x, y], lr=settings.lr, max_iter=1, history_size=settings.history_size,
                                  line_search_fn="strong_wolfe")
    tracker = Tracker(progress, snapshot_every, snapshot_at)
    evaluations = 0

    def closure() -> torch.Tensor:
        nonlocal evaluations
        evaluations += 1
        optimiser.zero_grad()
        grads = replay.gradient(x, lambda pred: loss_fn(pred, y))
        objective = l2_distance(grads, target)
        objective.backward()
        return objective

    objective = float("nan")
    for it in range(1, settings.iterations + 1):
        objective = float(optimiser.step(closure).detach())
        tracker.step(it, objective, lambda: (x, y))
        if not torch.isfinite(x).all():
            break
    mr = torch.nan_to_num(x.detach()).clamp(*mr_box)
    ct = torch.nan_to_num(y.detach()).clamp(*CT_BOX)
    return Reconstruction("dlg", mr, ct, objective, len(tracker.history), tracker.seconds, tracker.history,
                          tracker.snapshots, {"evaluations": evaluations})
