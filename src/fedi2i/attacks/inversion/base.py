"""Pieces every inversion method shares: the reconstruction record, priors, distances, group replay."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch

from fedi2i.attacks.inversion.observation import Observation
from fedi2i.attacks.inversion.replay import LocalReplay, SimulatedUpdate

# Called as (iteration, objective) after each iteration: progress bars, logging.
Progress = Callable[[int, float], None]
# (group index, predictions of that group, step) -> loss; built by each method from its unknowns.
GroupLoss = Callable[[int, torch.Tensor, int], torch.Tensor]

CT_BOX = (-1.0, 1.0)  # the CT is clipped to [-1024, 3000] HU and scaled to [-1, 1]
# Longer local training is replayed in this many steps at a proportionally larger learning rate (a
# first-order approximation that keeps an epoch-long update affordable; exact up to this many steps).
MAX_REPLAY_STEPS = 10


@dataclass
class Snapshot:
    """The reconstruction at one iteration, kept so a benchmark can score progress afterwards."""

    iteration: int
    seconds: float
    objective: float
    mr: torch.Tensor
    ct: torch.Tensor


@dataclass
class Reconstruction:
    """An attack's output: MRI inputs and CT targets (CT in the model's [-1, 1] scale)."""

    method: str
    mr: torch.Tensor  # [R, 1, H, W]
    ct: torch.Tensor  # [R, 1, H, W]
    objective: float
    iterations: int
    seconds: float
    history: list[tuple[int, float]] = field(default_factory=list)
    snapshots: list[Snapshot] = field(default_factory=list)
    extra: dict[str, object] = field(default_factory=dict)


class Tracker:
    """Objective history, progress callback and optional snapshots for one attack run.

    Snapshots are taken every ``snapshot_every`` iterations (and at the first) and at each iteration of
    ``snapshot_at``: the budget curve scores them after the attack, without a second run.
    """

    def __init__(self, progress: Progress | None, snapshot_every: int | None,
                 snapshot_at: Collection[int] = ()) -> None:
        self.progress = progress
        self.snapshot_every = snapshot_every
        self.snapshot_at = frozenset(snapshot_at)
        self.history: list[tuple[int, float]] = []
        self.snapshots: list[Snapshot] = []
        self.start = time.perf_counter()

    def step(self, iteration: int, objective: float, images: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.history.append((iteration, objective))
        if self.progress is not None:
            self.progress(iteration, objective)
        n = self.snapshot_every
        every = bool(n) and (iteration % n == 0 or iteration == 1)  # type: ignore[operator]
        if every or iteration in self.snapshot_at:
            mr, ct = images()
            self.snapshots.append(Snapshot(iteration, self.seconds, objective, mr.detach().clone(),
                                           ct.detach().clone()))

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


def total_variation(img: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (anisotropic TV), the usual natural-image prior."""
    dx = (img[..., :, 1:] - img[..., :, :-1]).abs().mean()
    dy = (img[..., 1:, :] - img[..., :-1, :]).abs().mean()
    return dx + dy


def group_slices(obs: Observation) -> list[slice]:
    """Which rows of the candidate batch belong to which client of the observation."""
    out, start = [], 0
    for g in obs.groups:
        out.append(slice(start, start + g.items))
        start += g.items
    return out


def replay_groups(replay: LocalReplay, obs: Observation, x: torch.Tensor, loss: GroupLoss,
                  steps: int | None = None, as_one_batch: bool = False) -> SimulatedUpdate:
    """Simulated observed update: each client's local training on its rows, weighted as FedAvg weighs.

    ``as_one_batch`` replays the whole candidate batch as one client (what DLG/IG assume when they do not
    model the aggregate); ``steps`` overrides the observed local steps (DLG's single-gradient view).
    """
    if as_one_batch or len(obs.groups) == 1:
        n, lr = _capped(steps or obs.steps, obs.lr)
        return replay.run(x, lambda pred, t: loss(0, pred, t), n, lr)
    total: SimulatedUpdate | None = None
    for k, (group, rows) in enumerate(zip(obs.groups, group_slices(obs))):
        n, lr = _capped(steps or group.steps, obs.lr)
        sim = replay.run(x[rows], lambda pred, t, k=k: loss(k, pred, t), n, lr)
        scaled = SimulatedUpdate([group.weight * p for p in sim.params], [group.weight * b for b in sim.buffers])
        if total is None:
            total = scaled
        else:
            total = SimulatedUpdate([a + b for a, b in zip(total.params, scaled.params)],
                                    [a + b for a, b in zip(total.buffers, scaled.buffers)])
    assert total is not None
    return total


def _capped(steps: int, lr: float) -> tuple[int, float]:
    if steps <= MAX_REPLAY_STEPS:
        return steps, lr
    return MAX_REPLAY_STEPS, lr * steps / MAX_REPLAY_STEPS


def cosine_distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """1 - cosine similarity of two entry lists seen as one vector (Inverting Gradients' distance)."""
    dot = sum((x * y).sum() for x, y in zip(a, b))
    na = torch.sqrt(sum((x * x).sum() for x in a))
    nb = torch.sqrt(sum((y * y).sum() for y in b))
    return 1 - dot / (na * nb + 1e-12)


def l2_distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """Sum of squared differences over entries (DLG's distance)."""
    return sum(((x - y) ** 2).sum() for x, y in zip(a, b))


def relative_l2(sim: list[torch.Tensor], obs: list[torch.Tensor], fit_scale: bool,
                weights: list[float] | None = None) -> torch.Tensor:
    """Per-entry squared error relative to the observed entry's energy, (weighted) mean over entries.

    Unlike a cosine it sees the scale of the update (which carries the residual's size for an MSE
    loss); normalising per entry keeps small layers (the first convolution, BatchNorm) from being
    drowned by large ones. With ``fit_scale`` one global factor is fitted in closed form first, for
    updates whose norm was changed by DP clipping.
    """
    w = weights or [1.0] * len(sim)
    energy = [(o * o).sum() + 1e-20 for o in obs]
    c: torch.Tensor | float = 1.0
    if fit_scale:
        num = sum(wi * (s * o).sum() / e for wi, s, o, e in zip(w, sim, obs, energy))
        den = sum(wi * (s * s).sum() / e for wi, s, e in zip(w, sim, energy))
        c = (num / (den + 1e-20)).detach()
    terms = [wi * ((c * s - o) ** 2).sum() / e for wi, s, o, e in zip(w, sim, obs, energy)]
    return sum(terms) / max(sum(w), 1e-12)


def seeded(seed: int, restart: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1000003 + restart)
