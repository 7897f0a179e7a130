"""In-process federated runtime: rounds over local trainers and an aggregator, with checkpoints.

Every random choice of a round is derived from (seed, round, client), never from a running RNG, so a run
resumed from its last checkpoint ends with exactly the model an uninterrupted run ends with.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedi2i.config import Config
from fedi2i.seeding import hash_seed
from fedi2i.data.slices import SliceSet
from fedi2i.errors import RunStateError
from fedi2i.evaluate import evaluate_centres
from fedi2i.fl.client import ClientUpdate, LocalTrainer, round_lr
from fedi2i.fl.params import ParamSpec
from fedi2i.fl.server import Aggregator
from fedi2i.io import save_torch
from fedi2i.runfolder import CHECKPOINT, read_checkpoint

log = logging.getLogger(__name__)

# Called after each round with (round_index, history entry) so a UI can show progress.
RoundCallback = Callable[[int, dict[str, Any]], None]


@dataclass
class FederatedRun:
    """State of a run: the global model vector, the per-round history and the trainers' integer counters.

    ``counters`` holds each client model's non-float state entries (BatchNorm's ``num_batches_tracked``),
    which are not aggregated but do end up in the saved model, so a resumed run restores them too.
    """

    global_vector: torch.Tensor
    next_round: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    counters: dict[str, torch.Tensor] = field(default_factory=dict)


def initial_vector(config: Config, spec: ParamSpec) -> torch.Tensor:
    """The round-0 global model: the U-Net initialised from the config's seed (both runtimes start here)."""
    from fedi2i.models import build_unet

    torch.manual_seed(config.seed)
    return spec.flatten(build_unet(config.model).state_dict())


def load_checkpoint(path: Path) -> FederatedRun:
    """A checkpoint as plain data (``weights_only``): a planted or corrupt file is refused, never run."""
    state = read_checkpoint(path)
    counters = state.get("counters") or {}
    return FederatedRun(state["global_vector"], state["next_round"], state["history"], dict(counters))


def load_or_start(run_dir: Path, config: Config, spec: ParamSpec, resume: bool = True) -> FederatedRun:
    """The run's last checkpoint (when resuming and one exists), else a fresh run at round 0."""
    path = Path(run_dir) / CHECKPOINT
    if resume and path.exists():
        run = load_checkpoint(path)
        if run.global_vector.numel() != spec.numel:
            raise RunStateError(f"{path} holds a model of {run.global_vector.numel()} values, the config's model "
                                f"has {spec.numel}: use the run's own config, another --out, or --fresh")
        log.info("resuming %s at round %d", run_dir, run.next_round)
        return run
    return FederatedRun(initial_vector(config, spec))


def save_checkpoint(run_dir: Path, run: FederatedRun) -> None:
    """Atomic checkpoint after a round: a run killed mid-write resumes from the previous one.

    The history goes through JSON first so the file holds only what ``weights_only`` loading accepts.
    """
    history = json.loads(json.dumps(run.history, default=float))
    save_torch(Path(run_dir) / CHECKPOINT, {"global_vector": run.global_vector, "next_round": int(run.next_round),
                                            "history": history, "counters": dict(run.counters)})


def model_counters(models: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """``"<cid>/<name>" -> tensor`` for every non-float state entry of each client model."""
    return {f"{cid}/{name}": value.detach().clone() for cid, model in models.items()
            for name, value in model.state_dict().items() if not value.is_floating_point()}


def restore_counters(models: dict[str, torch.nn.Module], counters: dict[str, torch.Tensor]) -> None:
    for cid, model in models.items():
        state = model.state_dict()
        for name, value in state.items():
            saved = counters.get(f"{cid}/{name}")
            if saved is not None and not value.is_floating_point():
                value.copy_(saved)


def sample_clients(cids: list[str], per_round: int | None, seed: int, round_index: int) -> list[str]:
    """Seeded client sampling; None or >= n means every client every round."""
    if per_round is None or per_round >= len(cids):
        return list(cids)
    rng = np.random.default_rng(hash_seed(seed, 31337, round_index))
    return sorted(rng.choice(cids, size=per_round, replace=False).tolist())


class FederatedEngine:
    """Runs rounds: broadcast global -> local fit on each sampled client -> aggregate -> evaluate."""

    def __init__(self, config: Config, trainers: dict[str, LocalTrainer], aggregator: Aggregator,
                 run_dir: Path, eval_sets: dict[str, SliceSet] | None = None,
                 dropouts: Callable[[int], dict[str, list[str]] | None] | None = None) -> None:
        self.config = config
        self.trainers = trainers
        self.aggregator = aggregator
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.eval_sets = eval_sets or {}
        self.dropouts = dropouts
        first = next(iter(trainers.values()))
        self.model = first.model
        self.spec = first.spec

    def run(self, resume: bool = True, stop_after: int | None = None,
            on_round: RoundCallback | None = None) -> FederatedRun:
        """Train until config.train.rounds (or ``stop_after`` rounds in this call, to test resume)."""
        run = load_or_start(self.run_dir, self.config, self.spec, resume)
        models = {cid: t.model for cid, t in self.trainers.items()}
        restore_counters(models, run.counters)
        rounds = self.config.train.rounds
        done_here = 0
        while run.next_round < rounds:
            if stop_after is not None and done_here >= stop_after:
                break
            entry = self.run_round(run.next_round, run.global_vector)
            run.global_vector = entry.pop("_new_global")
            run.history.append(entry)
            run.next_round += 1
            done_here += 1
            run.counters = model_counters(models)
            save_checkpoint(self.run_dir, run)
            if on_round is not None:
                on_round(run.next_round, entry)
        return run

    def run_round(self, r: int, global_vector: torch.Tensor) -> dict[str, Any]:
        start = time.perf_counter()
        cids = sample_clients(sorted(self.trainers), self.config.federation.clients_per_round,
                              self.config.seed, r)
        lr = round_lr(self.config.train, r)
        updates: list[ClientUpdate] = [self.trainers[c].fit(global_vector, r, lr=lr) for c in cids]
        fit_time = time.perf_counter() - start
        extra = {"lr": lr, "local_epochs": self.config.train.local_epochs,
                 "batch_size": self.config.train.batch_size, "loss": self.config.train.loss,
                 "steps": {u.cid: u.steps for u in updates}}
        outcome = self.aggregator.aggregate_round(r, global_vector, updates,
                                                  self.dropouts(r) if self.dropouts else None, extra)
        entry: dict[str, Any] = {
            "round": r, "lr": lr, "clients": cids,
            "train_loss": {u.cid: u.mean_loss for u in updates},
            "rejected": outcome.rejected, "survivors": outcome.survivors,
            "upload_bytes": outcome.upload_bytes,
            "fit_seconds": fit_time, "round_seconds": time.perf_counter() - start,
            "_new_global": outcome.new_global,
        }
        every = self.config.federation.eval_every
        if self.eval_sets and every and ((r + 1) % every == 0 or r + 1 == self.config.train.rounds):
            self.spec.load_into(self.model, outcome.new_global)
            entry["val"] = {c: res["summary"] for c, res in evaluate_centres(self.model, self.eval_sets).items()}
        return entry

    def final_model(self, run: FederatedRun) -> torch.nn.Module:
        self.spec.load_into(self.model, run.global_vector)
        return self.model

