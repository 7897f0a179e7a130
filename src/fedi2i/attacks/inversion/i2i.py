"""An inversion attack built for image-to-image updates: recovers the MRI input and the CT target.

What it does differently from DLG / Inverting Gradients, and why (DESIGN.md section 6):

* **Residual parameterisation.** The unknowns are the MRI x and the residual r = f(x) - CT at the
  global model, not the CT itself. For an MSE loss the weight gradient is linear in r, so the match is a
  well-conditioned least-squares problem in r; the CT is then f(x) - r. The distance is a per-entry
  relative L2 (it sees the scale of r, a cosine would not).
* **L1 sign relaxation.** With an L1 loss the gradient holds only sign(r): the loss is replaced by the
  smooth tau * log cosh(r / tau) (its gradient is tanh(r / tau)), tau annealed geometrically towards
  zero so the relaxed loss becomes the L1 the client used. The sign field says on which side of the
  model's prediction the CT lies; the CT estimate is the middle of that side within the CT range,
  i.e. (f(x) + 1) / 2 where CT > f(x) and (f(x) - 1) / 2 where CT < f(x), the estimate with the smallest
  worst-case error given only the sign and the box.
* **BatchNorm.** In train mode BatchNorm makes the gradient invariant to x -> a x + b: the intensity is
  fixed by (i) the box the known percentile normalisation implies and (ii) the running-statistics
  deltas, which leak each layer's batch mean and variance (the first layer's pin down a and b). The
  simulated update includes those deltas and matches them (``bn_weight``).
* **The federation's structure.** Several local steps are unrolled with the observed optimiser; an
  aggregate is replayed client by client (own BatchNorm batch, own weight), as secure aggregation
  really sums them.
* Signed Adam steps with cosine learning-rate decay, box projection, TV prior, restarts picked by the
  objective (never by the truth).
"""

from __future__ import annotations

import math

import torch

from fedi2i.attacks.inversion.base import (CT_BOX, Progress, Reconstruction, Tracker, group_slices,
                                           relative_l2, replay_groups, seeded, total_variation)
from fedi2i.attacks.inversion.observation import Observation
from fedi2i.attacks.inversion.replay import LocalReplay
from fedi2i.attacks.inversion.settings import I2ISettings


def log_cosh(r: torch.Tensor, tau: float) -> torch.Tensor:
    """tau * log(cosh(r / tau)), computed stably; tends to |r| as tau -> 0."""
    z = (r / tau).abs()
    return tau * (z + torch.log1p(torch.exp(-2 * z)) - math.log(2.0))


def tau_at(settings: I2ISettings, progress: float) -> float:
    """Geometric annealing from tau_start to tau_end over the budget."""
    return settings.tau_start * (settings.tau_end / settings.tau_start) ** min(max(progress, 0.0), 1.0)


class _Unknowns:
    """The attacker's variables and how they turn into per-client training losses."""

    def __init__(self, obs: Observation, replay: LocalReplay, mr_box: tuple[float, float], gen: torch.Generator):
        n, size = obs.items, obs.image_size
        lo, hi = mr_box
        self.x = (lo + (hi - lo) * torch.rand(n, 1, size, size, generator=gen)).requires_grad_(True)
        self.r = (0.01 * torch.randn(n, 1, size, size, generator=gen)).requires_grad_(True)
        self.obs, self.replay = obs, replay
        self.rows = group_slices(obs)
        self.tau = 1.0
        self._labels: dict[int, torch.Tensor] = {}

    def loss(self, k: int, pred: torch.Tensor, t: int) -> torch.Tensor:
        """Training loss of client k at local step t, as a function of (x, r)."""
        r0 = self.r[self.rows[k]] if len(self.obs.groups) > 1 else self.r
        if t == 0:
            # value r0, weight-gradient through the prediction: exactly what the client computed
            residual = pred - pred.detach() + r0
        else:
            if k not in self._labels:  # CT = f_global(x) - r0, fixed over the local steps
                x = self.x[self.rows[k]] if len(self.obs.groups) > 1 else self.x
                self._labels[k] = self.replay.predict(x) - r0
            residual = pred - self._labels[k]
        if self.obs.loss == "mse":
            return (residual ** 2).mean()
        return log_cosh(residual, self.tau).mean()

    def new_iteration(self, tau: float) -> None:
        self.tau = tau
        self._labels = {}

    @torch.no_grad()
    def ct(self) -> torch.Tensor:
        """The CT estimate: f(x) - r for MSE; the middle of the sign-feasible interval for L1."""
        parts = []
        for k, rows in enumerate(self.rows):
            x = self.x[rows] if len(self.obs.groups) > 1 else self.x
            r = self.r[rows] if len(self.obs.groups) > 1 else self.r
            pred = self.replay.predict(x).clamp(*CT_BOX)
            if self.obs.loss == "mse":
                parts.append(pred - r)
            else:
                parts.append(torch.where(r < 0, (pred + CT_BOX[1]) / 2, (pred + CT_BOX[0]) / 2))
        return torch.cat(parts).clamp(*CT_BOX)


def i2i_attack(obs: Observation, settings: I2ISettings, seed: int = 0, mr_box: tuple[float, float] = (-0.1, 1.5),
               progress: Progress | None = None, snapshot_every: int | None = None) -> Reconstruction:
    """Run the I2I attack; the best of ``settings.restarts`` runs by final objective."""
    replay = LocalReplay(obs)
    observed = replay.split(obs.update)
    entries = observed.params + observed.buffers
    weights = [1.0] * len(observed.params) + [settings.bn_weight] * len(observed.buffers)
    keep = [i for i, w in enumerate(weights) if w > 0]
    tracker = Tracker(progress, snapshot_every)
    best: tuple[float, torch.Tensor, torch.Tensor] | None = None
    iteration = 0
    its = settings.iterations
    for restart in range(settings.restarts):
        u = _Unknowns(obs, replay, mr_box, seeded(seed, restart))
        optimiser = torch.optim.Adam([u.x, u.r], lr=settings.lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=its, eta_min=settings.lr * 0.02)
        objective = float("inf")
        for i in range(its):
            u.new_iteration(tau_at(settings, i / max(its - 1, 1)))
            optimiser.zero_grad()
            sim = replay_groups(replay, obs, u.x, u.loss)
            simulated = sim.params + sim.buffers
            match = relative_l2([simulated[j] for j in keep], [entries[j] for j in keep], obs.clipped,
                                [weights[j] for j in keep])
            loss = match + settings.tv_weight * total_variation(u.x)
            loss.backward()
            if settings.signed:
                for v in (u.x, u.r):
                    if v.grad is not None:
                        v.grad.sign_()
            optimiser.step()
            scheduler.step()
            with torch.no_grad():
                u.x.clamp_(*mr_box)
            objective = float(match.detach())
            iteration += 1
            tracker.step(iteration, objective, lambda: (u.x, u.ct()))
        if best is None or objective < best[0]:
            best = (objective, u.x.detach().clone(), u.ct())
    assert best is not None
    return Reconstruction("i2i", best[1], best[2], best[0], iteration, tracker.seconds, tracker.history,
                          tracker.snapshots, {"restarts": settings.restarts})
