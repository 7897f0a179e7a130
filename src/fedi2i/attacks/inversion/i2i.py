"""An inversion attack built for image-to-image updates: recovers the MRI input and the CT target.

What it does differently from DLG / Inverting Gradients, and why (DESIGN.md section 6):

* **Both images are unknown, coupled through the residual.** The client's weight gradient depends on
  the CT y only through the residual r = f(x) - y: linearly for MSE, through sign(r) for L1. The
  attacker's unknowns are the MRI x and the CT y, and the replay computes r from them, so the residual
  (and for L1 its sign field) follows the candidate MRI instead of being an independent free field:
  with a free residual a wrong MRI is explained away by a matching wrong residual.
* **L1 sign relaxation.** The L1 loss is replaced by the smooth tau * log cosh(r / tau) (gradient
  tanh(r / tau)), tau annealed geometrically towards zero so the relaxed loss becomes the client's L1;
  without it the CT receives no gradient at all (DLG's failure).
* **A label model first.** At the coarse levels the CT is tanh(a * f(x) + b) with two scalars per
  image: a = 0 is a constant CT (right for an untrained model, whose prediction is far from any CT),
  a = 1, b = 0 is the model's own prediction (right for a trained model). Only at full size does the
  CT become free per pixel, so the early solve is about the MRI.
* **Coarse-to-fine.** The MRI is first solved at 1/2**(levels-1) of the size with L-BFGS (few
  variables, a smoother landscape), each level's answer upsampled to start the next, then Adam refines
  MRI and CT at full size. On 16-32 px slices this reached about twice the SSIM of a random full-size
  start at the same budget (bench/inversion.py compares both on the quick preset).
* **The distance.** Cosine over the weights (robust, as Inverting Gradients found) plus a log-norm
  term (the scale a cosine ignores: for MSE the size of the residual) plus a relative L2 on the
  BatchNorm running-statistics deltas. Under DP clipping the norm carries nothing and is left out.
* **BatchNorm.** In train mode BatchNorm makes the gradient nearly invariant to x -> a x + b: the
  intensity is fixed by the box the known percentile normalisation implies and by the running-statistic
  deltas, which leak each layer's batch mean and variance (the first layer's pin down a and b).
* **The federation's structure.** Several local steps are unrolled with the observed optimiser; an
  aggregate is replayed client by client (own BatchNorm batch, own weight), as secure aggregation
  really sums them.
* TV priors on MRI and CT, box projection, restarts picked by the objective (never by the truth).
* **Starts from what a server may hold** (``init``, ``prior.py``): noise (``random``), the atlas of the
  attacker's public slices (``atlas``: the pyramid starts from their mean image), or a ``population``: per
  image, greedily, the public slice whose MRI/CT pair best explains the update among a few random
  candidates (each restart draws its own: multi-start). Never the victim's own slices.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import torch
import torch.nn.functional as F

from fedi2i.attacks.inversion.base import (CT_BOX, Progress, Reconstruction, Tracker, cosine_distance,
                                           group_slices, relative_l2, replay_groups, seeded, total_variation)
from fedi2i.attacks.inversion.observation import Observation
from fedi2i.attacks.inversion.prior import Prior
from fedi2i.attacks.inversion.replay import LocalReplay, SimulatedUpdate
from fedi2i.attacks.inversion.settings import I2ISettings
from fedi2i.data.slices import ct_to_unit
from fedi2i.errors import ConfigError


def log_cosh(r: torch.Tensor, tau: float) -> torch.Tensor:
    """tau * log(cosh(r / tau)), computed stably; tends to |r| as tau -> 0."""
    z = (r / tau).abs()
    return tau * (z + torch.log1p(torch.exp(-2 * z)) - math.log(2.0))


class _Problem:
    """The attacker's objective on candidate (MRI x, CT y)."""

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

    def simulate(self, x: torch.Tensor, y: torch.Tensor) -> SimulatedUpdate:
        """Replay every client's local training on its rows of (x, y)."""
        def loss(k: int, pred: torch.Tensor, _t: int) -> torch.Tensor:
            residual = pred - self._part(y, k)
            if self.obs.loss == "mse":
                return (residual ** 2).mean()
            return log_cosh(residual, self.tau).mean()

        return replay_groups(self.replay, self.obs, x, loss)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The global model's train-mode prediction, client by client (differentiable in x only)."""
        return torch.cat([self.replay.predict(self._part(x, k)) for k in range(len(self.rows))])

    def match(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance between the simulated and the observed update (no prior)."""
        self.evaluations += 1
        s = self.settings
        sim = self.simulate(x, y)
        out = cosine_distance(sim.params, self.params)
        if s.bn_weight and self.buffers:
            out = out + s.bn_weight * relative_l2(sim.buffers, self.buffers, self.obs.clipped)
        if s.norm_weight and not self.obs.clipped:
            norm = torch.sqrt(sum((p * p).sum() for p in sim.params))
            out = out + s.norm_weight * torch.log((norm + 1e-20) / (self.params_norm + 1e-20)) ** 2
        return out

    def objective(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        match = self.match(x, y)
        s = self.settings
        return match + s.tv_weight * total_variation(x) + s.ct_tv_weight * total_variation(y), match

    def box(self, z: torch.Tensor) -> torch.Tensor:
        lo, hi = self.mr_box
        return lo + (hi - lo) * torch.sigmoid(z)

    def ct_prior(self) -> float:
        """The CT value (model scale) the label model starts from, as an unbounded tanh argument."""
        unit = float(ct_to_unit(torch.tensor(self.settings.ct_init_hu)))
        return math.atanh(max(min(unit, 0.99), -0.99))

    def project(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.no_grad():
            x.clamp_(*self.mr_box)
            y.clamp_(*CT_BOX)


def _resize(v: torch.Tensor, size: int) -> torch.Tensor:
    return v if v.shape[-1] == size else F.interpolate(v, size=(size, size), mode="bilinear", align_corners=False)


def pyramid(size: int, levels: int) -> list[int]:
    """Coarse level sizes before the full size, e.g. 64, 3 levels -> [16, 32]."""
    sizes = [size // 2 ** k for k in range(levels - 1, 0, -1)]
    return [s for s in sizes if s >= 4]


Start = tuple[torch.Tensor, torch.Tensor]  # MRI and CT [N, 1, H, W] at full size


def prior_start(problem: _Problem, prior: Prior, init: str, gen: torch.Generator) -> Start:
    """The atlas for every image, then (``population``) each image in turn replaced by the candidate slice
    that lowers the match most; returns the images the search starts from."""
    obs, s = problem.obs, problem.settings
    if prior.size != obs.image_size:
        raise ConfigError(f"the attacker's prior has {prior.size} px slices, the model takes {obs.image_size} px")
    n = obs.items
    atlas_mr, atlas_ct = prior.atlas()
    x, y = atlas_mr.expand(n, -1, -1, -1).clone(), atlas_ct.expand(n, -1, -1, -1).clone()
    if init == "atlas":
        return x, y
    per_image = max(1, min(s.population, s.population_evaluations // n, len(prior)))
    problem.tau = s.tau_start
    best = float(problem.match(x, y).detach())
    for j in range(n):
        for c in torch.randperm(len(prior), generator=gen)[:per_image].tolist():
            x2, y2 = x.clone(), y.clone()
            x2[j], y2[j] = prior.mr[c], prior.ct[c]
            value = float(problem.match(x2, y2).detach())
            if value < best:
                best, x, y = value, x2, y2
    return x, y


def _logit_box(x: torch.Tensor, box: tuple[float, float]) -> torch.Tensor:
    """The unbounded variable z with ``box(z) == x`` (x kept 1 % inside the box)."""
    lo, hi = box
    u = ((x - lo) / (hi - lo)).clamp(0.01, 0.99)
    return torch.log(u / (1 - u))


def _run_once(problem: _Problem, gen: torch.Generator, tracker: Tracker, start_iteration: int,
              start: Start | None = None) -> tuple[float, torch.Tensor, torch.Tensor, int]:
    """One restart: coarse-to-fine L-BFGS with the label model, then Adam at full size.

    ``start`` (from a prior) replaces the noise the MRI starts from and, at full size, the label model's CT.
    """
    s, obs = problem.settings, problem.obs
    size, n = obs.image_size, obs.items
    levels = pyramid(size, s.levels)
    total = len(levels) * s.level_iterations + s.iterations
    first = levels[0] if levels else size
    if start is None:
        z = 0.1 * torch.randn(n, 1, first, first, generator=gen)
    else:
        z = _resize(_logit_box(start[0], problem.mr_box), first)
    a = torch.zeros(n, 1, 1, 1)
    b = torch.full((n, 1, 1, 1), problem.ct_prior())
    it, done = start_iteration, 0
    match_value = float("inf")

    def anneal() -> None:
        problem.tau = s.tau_start * (s.tau_end / s.tau_start) ** min(done / max(total - 1, 1), 1.0)

    def label(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(a * problem.predict(x) + b)

    for level in levels:
        z = _resize(z, level).detach().requires_grad_(True)
        a.requires_grad_(True)
        b.requires_grad_(True)
        optimiser = torch.optim.LBFGS([z, a, b], lr=1, max_iter=1, history_size=30, line_search_fn="strong_wolfe")
        last: dict[str, float] = {}

        def closure() -> torch.Tensor:
            optimiser.zero_grad()
            x = problem.box(_resize(z, size))
            loss, match = problem.objective(x, label(x))
            loss.backward()
            last["match"] = float(match.detach())
            return loss

        for _ in range(s.level_iterations):
            anneal()
            optimiser.step(closure)
            done += 1
            it += 1
            match_value = last.get("match", float("nan"))
            tracker.step(it, match_value, lambda: (problem.box(_resize(z, size)),
                                                   label(problem.box(_resize(z, size))).detach()))
            if not math.isfinite(match_value):
                break
    with torch.no_grad():
        x0 = problem.box(_resize(z, size))
        if start is not None:
            y0 = start[1].clamp(*CT_BOX)
        else:
            y0 = label(x0) if levels else torch.tanh(b).expand(n, 1, size, size)
    x = x0.detach().clone().requires_grad_(True)
    y = y0.detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([x, y], lr=s.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(s.iterations, 1), eta_min=s.lr * 0.01)
    for _ in range(s.iterations):
        anneal()
        optimiser.zero_grad()
        loss, match = problem.objective(x, y)
        loss.backward()
        optimiser.step()
        scheduler.step()
        problem.project(x, y)
        done += 1
        it += 1
        match_value = float(match.detach())
        tracker.step(it, match_value, lambda: (x, y))
    return match_value, x.detach(), y.detach(), it - start_iteration


def i2i_attack(obs: Observation, settings: I2ISettings, seed: int = 0, mr_box: tuple[float, float] = (-0.1, 1.5),
               progress: Progress | None = None, snapshot_every: int | None = None, prior: Prior | None = None,
               snapshot_at: Collection[int] = ()) -> Reconstruction:
    """Run the I2I attack; the best of ``settings.restarts`` runs by final match (never by the truth).

    ``settings.init`` other than "random" needs the attacker's ``prior``.
    """
    if settings.init != "random" and prior is None:
        raise ConfigError(f"i2i init {settings.init!r} needs the attacker's prior (public slices); none was given")
    problem = _Problem(obs, settings, mr_box)
    tracker = Tracker(progress, snapshot_every, snapshot_at)
    best: tuple[float, torch.Tensor, torch.Tensor] | None = None
    iterations = 0
    for restart in range(settings.restarts):
        gen = seeded(seed, restart)
        start = prior_start(problem, prior, settings.init, gen) if prior is not None and settings.init != "random" \
            else None
        match, x, y, its = _run_once(problem, gen, tracker, iterations, start)
        iterations += its
        if best is None or not math.isfinite(best[0]) or (math.isfinite(match) and match < best[0]):
            best = (match, x, y)
    assert best is not None
    match, x, y = best
    return Reconstruction("i2i", x.clamp(*mr_box), y.clamp(*CT_BOX), match, iterations, tracker.seconds,
                          tracker.history, tracker.snapshots,
                          {"restarts": settings.restarts, "evaluations": problem.evaluations, "init": settings.init})
