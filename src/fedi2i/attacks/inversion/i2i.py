"""An inversion attack built for image-to-image updates: recovers the MRI input and the CT target.

What it does differently from DLG / Inverting Gradients, and why (DESIGN.md section 6):

* **Residual parameterisation.** The unknowns are the MRI x and the residual r = f(x) - CT at the
  global model, not the CT itself. For an MSE loss the weight gradient is linear in r, so the match is a
  well-conditioned problem in r; the CT is then f(x) - r. The distance has a norm term, since the
  scale of the update is the scale of r (a cosine alone would not see it).
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
* Coarse-to-fine: the MRI and the residual are first solved at 1/2**(levels-1) of the size, then each
  level's answer, upsampled, starts the next (L-BFGS per level: few variables, a smoother landscape),
  then Adam refines at full size. From a random start at full size the same budget gets caught in far
  worse local minima (bench/inversion.py shows both).
* The distance: cosine over the weights (robust, as Inverting Gradients found) plus a log-norm term
  (the scale a cosine ignores: for MSE it is the size of the residual) plus relative L2 on the BatchNorm
  running statistics; under DP clipping the norm carries nothing and is left out.
* Box projection from the known normalisation, TV prior, restarts picked by the objective (never by
  the truth).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fedi2i.attacks.inversion.base import (CT_BOX, Progress, Reconstruction, Tracker, cosine_distance,
                                           group_slices, relative_l2, replay_groups, seeded, total_variation)
from fedi2i.attacks.inversion.observation import Observation
from fedi2i.attacks.inversion.replay import LocalReplay, SimulatedUpdate
from fedi2i.attacks.inversion.settings import I2ISettings


def log_cosh(r: torch.Tensor, tau: float) -> torch.Tensor:
    """tau * log(cosh(r / tau)), computed stably; tends to |r| as tau -> 0."""
    z = (r / tau).abs()
    return tau * (z + torch.log1p(torch.exp(-2 * z)) - math.log(2.0))


class _Problem:
    """The attacker's objective on candidate (MRI x, residual r) and how it turns them into losses."""

    def __init__(self, obs: Observation, settings: I2ISettings, mr_box: tuple[float, float]) -> None:
        self.obs, self.settings, self.mr_box = obs, settings, mr_box
        self.replay = LocalReplay(obs)
        observed = self.replay.split(obs.update)
        self.params = observed.params
        self.buffers = observed.buffers
        self.params_norm = torch.sqrt(sum((p * p).sum() for p in self.params))
        self.rows = group_slices(obs)
        self.tau = settings.tau_start
        self.evaluations = 0

    def _part(self, v: torch.Tensor, k: int) -> torch.Tensor:
        return v[self.rows[k]] if len(self.rows) > 1 else v

    def simulate(self, x: torch.Tensor, r: torch.Tensor) -> SimulatedUpdate:
        labels: dict[int, torch.Tensor] = {}

        def loss(k: int, pred: torch.Tensor, t: int) -> torch.Tensor:
            r0 = self._part(r, k)
            if t == 0:
                # value r0, weight-gradient through the prediction: exactly what the client computed
                residual = pred - pred.detach() + r0
            else:
                if k not in labels:  # CT = f_global(x) - r0, fixed over the local steps
                    labels[k] = self.replay.predict(self._part(x, k)) - r0
                residual = pred - labels[k]
            if self.obs.loss == "mse":
                return (residual ** 2).mean()
            return log_cosh(residual, self.tau).mean()

        return replay_groups(self.replay, self.obs, x, loss)

    def match(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Distance between the simulated and the observed update (no prior)."""
        self.evaluations += 1
        s = self.settings
        sim = self.simulate(x, r)
        out = cosine_distance(sim.params, self.params)
        if s.bn_weight and self.buffers:
            out = out + s.bn_weight * relative_l2(sim.buffers, self.buffers, self.obs.clipped)
        if s.norm_weight and not self.obs.clipped:
            norm = torch.sqrt(sum((p * p).sum() for p in sim.params))
            out = out + s.norm_weight * torch.log((norm + 1e-20) / (self.params_norm + 1e-20)) ** 2
        return out

    def objective(self, x: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        match = self.match(x, r)
        return match + self.settings.tv_weight * total_variation(x), match

    def box(self, z: torch.Tensor) -> torch.Tensor:
        lo, hi = self.mr_box
        return lo + (hi - lo) * torch.sigmoid(z)

    def unbox(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.mr_box
        return torch.logit(((x - lo) / (hi - lo)).clamp(1e-3, 1 - 1e-3))

    @torch.no_grad()
    def ct(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """The CT estimate: f(x) - r for MSE; the middle of the sign-feasible interval for L1."""
        parts = []
        for k in range(len(self.rows)):
            xk, rk = self._part(x, k), self._part(r, k)
            pred = self.replay.predict(xk).clamp(*CT_BOX)
            if self.obs.loss == "mse":
                parts.append(pred - rk)
            else:
                parts.append(torch.where(rk < 0, (pred + CT_BOX[1]) / 2, (pred + CT_BOX[0]) / 2))
        return torch.cat(parts).clamp(*CT_BOX)


def _resize(v: torch.Tensor, size: int) -> torch.Tensor:
    return v if v.shape[-1] == size else F.interpolate(v, size=(size, size), mode="bilinear", align_corners=False)


def pyramid(size: int, levels: int) -> list[int]:
    """Coarse level sizes before the full size, e.g. 64, 3 levels -> [16, 32]."""
    sizes = [size // 2 ** k for k in range(levels - 1, 0, -1)]
    return [s for s in sizes if s >= 4]


def _run_once(problem: _Problem, gen: torch.Generator, tracker: Tracker, start_iteration: int) -> tuple[float, torch.Tensor, torch.Tensor, int]:
    """One restart: coarse-to-fine L-BFGS, then Adam at full size. Returns (match, x, r, iterations)."""
    s, obs = problem.settings, problem.obs
    size, n = obs.image_size, obs.items
    levels = pyramid(size, s.levels)
    total = len(levels) * s.level_iterations + s.iterations
    first = levels[0] if levels else size
    z = (0.1 * torch.randn(n, 1, first, first, generator=gen))
    r = (0.01 * torch.randn(n, 1, first, first, generator=gen))
    it = start_iteration
    done = 0

    def anneal() -> None:
        progress = done / max(total - 1, 1)
        problem.tau = s.tau_start * (s.tau_end / s.tau_start) ** min(progress, 1.0)

    match_value = float("inf")
    for level in levels:
        z = _resize(z, level).detach().requires_grad_(True)
        r = _resize(r, level).detach().requires_grad_(True)
        optimiser = torch.optim.LBFGS([z, r], lr=1, max_iter=1, history_size=30, line_search_fn="strong_wolfe")
        last: dict[str, torch.Tensor] = {}

        def closure() -> torch.Tensor:
            optimiser.zero_grad()
            loss, match = problem.objective(problem.box(_resize(z, size)), _resize(r, size))
            loss.backward()
            last["match"] = match.detach()
            return loss

        for _ in range(s.level_iterations):
            anneal()
            optimiser.step(closure)
            done += 1
            it += 1
            match_value = float(last.get("match", torch.tensor(float("nan"))))
            tracker.step(it, match_value, lambda: (problem.box(_resize(z, size)), problem.ct(
                problem.box(_resize(z, size)), _resize(r, size))))
            if not math.isfinite(match_value):
                break
    x = problem.box(_resize(z, size)).detach().requires_grad_(True)
    r = _resize(r, size).detach().requires_grad_(True)
    optimiser = torch.optim.Adam([x, r], lr=s.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(s.iterations, 1), eta_min=s.lr * 0.01)
    for _ in range(s.iterations):
        anneal()
        optimiser.zero_grad()
        loss, match = problem.objective(x, r)
        loss.backward()
        optimiser.step()
        scheduler.step()
        with torch.no_grad():
            x.clamp_(*problem.mr_box)
        done += 1
        it += 1
        match_value = float(match.detach())
        tracker.step(it, match_value, lambda: (x, problem.ct(x, r)))
    return match_value, x.detach(), r.detach(), it - start_iteration


def i2i_attack(obs: Observation, settings: I2ISettings, seed: int = 0, mr_box: tuple[float, float] = (-0.1, 1.5),
               progress: Progress | None = None, snapshot_every: int | None = None) -> Reconstruction:
    """Run the I2I attack; the best of ``settings.restarts`` runs by final match (never by the truth)."""
    problem = _Problem(obs, settings, mr_box)
    tracker = Tracker(progress, snapshot_every)
    best: tuple[float, torch.Tensor, torch.Tensor] | None = None
    iterations = 0
    for restart in range(settings.restarts):
        match, x, r, its = _run_once(problem, seeded(seed, restart), tracker, iterations)
        iterations += its
        if best is None or not math.isfinite(best[0]) or (math.isfinite(match) and match < best[0]):
            best = (match, x, r)
    assert best is not None
    match, x, r = best
    return Reconstruction("i2i", x.clamp(*mr_box), problem.ct(x, r), match, iterations, tracker.seconds,
                          tracker.history, tracker.snapshots,
                          {"restarts": settings.restarts, "evaluations": problem.evaluations})
