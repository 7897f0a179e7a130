"""The one round loop of both runtimes: rounds, evaluation cadence, checkpoints, history and the record.

A :class:`RoundLoop` drives a :class:`ClientPool`; the pool only carries a round's request to the clients
and brings their answers back. Two pools exist: :class:`fedi2i.fl.engine.InProcessPool` (trainers in this
process) and :class:`fedi2i.fl.flower.rounds.FlowerPool` (messages to SuperNodes). Everything a run decides
(which clients, which learning rate, when to evaluate, what to aggregate and record, what to checkpoint) is
decided here once, so the runtimes cannot drift apart.

Evaluation of round ``r``'s result travels with the training request of round ``r + 1`` (one exchange per
round on a deployment); after the last round of a call, a pending evaluation is its own request. The val
figures land in round ``r``'s entry either way.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

import numpy as np

from fedi2i.config import Config
from fedi2i.errors import RunStateError
from fedi2i.fl.client import ClientUpdate, round_lr
from fedi2i.fl.params import ParamSpec
from fedi2i.fl.secagg import SecAggResult
from fedi2i.fl.server import Aggregator
from fedi2i.io import save_torch, write_json
from fedi2i.runfolder import CHECKPOINT, read_checkpoint
from fedi2i.seeding import hash_seed

log = logging.getLogger(__name__)

Summary = dict[str, float]  # one centre's metric summary (mae, psnr, ssim, ...)


@dataclass(frozen=True)
class RoundPlan:
    """What the loop asks of the pool in one round."""

    round: int
    clients: list[str]
    lr: float
    evaluate: bool = False  # also score the global model sent (the previous round's result) on validation
    min_clients: int = 1


@dataclass
class Collected:
    """What a pool brings back from one round.

    ``updates`` follow the plan's client order; their deltas are empty when the pool carried the SecAgg
    protocol itself (then ``secure`` holds the unmasked sum, and the server never saw an update).
    """

    updates: list[ClientUpdate]
    failed: dict[str, str] = field(default_factory=dict)
    secure: SecAggResult | None = None
    dropouts: dict[str, list[str]] | None = None  # simulated SecAgg dropouts (in-process pool)
    val: dict[str, Summary] | None = None
    fit_seconds: float = 0.0
    transport: dict[str, Any] | None = None  # per-exchange timings of a deployment


class ClientPool(Protocol):
    """How the loop reaches its clients: in this process or over Flower."""

    runtime: str

    def clients(self) -> list[str]: ...

    def fit(self, plan: RoundPlan, global_vector: torch.Tensor) -> Collected: ...

    def evaluate(self, global_vector: torch.Tensor, split: str) -> dict[str, Summary]: ...

    def counters(self) -> dict[str, torch.Tensor]: ...

    def restore(self, counters: dict[str, torch.Tensor]) -> None: ...


@dataclass
class RoundEntry:
    """One round of the history (``history.json``, the checkpoint): plain values, no tensors."""

    round: int
    lr: float
    clients: list[str]
    train_loss: dict[str, float]
    rejected: dict[str, str]
    survivors: list[str]
    upload_bytes: int
    fit_seconds: float
    round_seconds: float
    val: dict[str, Summary] | None = None
    transport: dict[str, Any] | None = None  # written as "flower" (a deployment's exchange timings)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"round": self.round, "lr": self.lr, "clients": list(self.clients),
                               "train_loss": dict(self.train_loss), "rejected": dict(self.rejected),
                               "survivors": list(self.survivors), "upload_bytes": int(self.upload_bytes),
                               "fit_seconds": self.fit_seconds, "round_seconds": self.round_seconds}
        if self.val is not None:
            out["val"] = self.val
        if self.transport is not None:
            out["flower"] = self.transport
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RoundEntry:
        """The entry of a history written by :meth:`to_dict` (a resumed run's last round)."""
        fields = {k: v for k, v in raw.items() if k != "flower"}
        return cls(**fields, transport=raw.get("flower"))


# Called after each round with (rounds done, that round's entry) so a UI can show progress. The entry's
# ``val`` fills in one round later, when the validation of its model comes back with the next round.
RoundCallback = Callable[[int, RoundEntry], None]


@dataclass
class RoundResult:
    """A round's entry and the new global model (kept apart: the history holds no tensors)."""

    entry: RoundEntry
    new_global: torch.Tensor


@dataclass
class FederatedRun:
    """State of a run: the global model vector, the history (JSON form of :class:`RoundEntry`) and the
    client models' integer counters.

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


def load_global(run_dir: Path) -> torch.Tensor:
    """The final global vector a run wrote (either runtime)."""
    return load_checkpoint(Path(run_dir) / CHECKPOINT).global_vector


def sample_clients(cids: list[str], per_round: int | None, seed: int, round_index: int) -> list[str]:
    """Seeded client sampling; None or >= n means every client every round."""
    if per_round is None or per_round >= len(cids):
        return list(cids)
    rng = np.random.default_rng(hash_seed(seed, 31337, round_index))
    return sorted(rng.choice(cids, size=per_round, replace=False).tolist())


def eval_due(config: Config, round_index: int) -> bool:
    """Validation after every ``eval_every``-th round and after the last one (never when 0)."""
    every = config.federation.eval_every
    return bool(every) and ((round_index + 1) % every == 0 or round_index + 1 == config.train.rounds)


def record_extra(config: Config, lr: float, updates: list[ClientUpdate]) -> dict[str, object]:
    """The local training settings an attacker may know, stored with each recorded round."""
    train = config.train
    return {"lr": lr, "local_epochs": train.local_epochs, "batch_size": train.batch_size, "loss": train.loss,
            "steps": {u.cid: u.steps for u in updates}}


class RoundLoop:
    """Trains ``config.train.rounds`` rounds over a pool, checkpointing after each; see module doc."""

    def __init__(self, config: Config, pool: ClientPool, aggregator: Aggregator, spec: ParamSpec,
                 run_dir: Path) -> None:
        self.config = config
        self.pool = pool
        self.aggregator = aggregator
        self.spec = spec
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def run(self, resume: bool = True, stop_after: int | None = None,
            on_round: RoundCallback | None = None) -> FederatedRun:
        """Train until config.train.rounds (or ``stop_after`` rounds in this call, to test resume)."""
        run = load_or_start(self.run_dir, self.config, self.spec, resume)
        self.pool.restore(run.counters)
        pending = self._pending(run)
        done_here = 0
        while run.next_round < self.config.train.rounds and (stop_after is None or done_here < stop_after):
            result = self.run_round(run.next_round, run.global_vector, previous=pending)
            if pending is not None and pending.val is not None:
                run.history[pending.round] = pending.to_dict()
            pending = result.entry if eval_due(self.config, run.next_round) else None
            run.global_vector = result.new_global
            run.history.append(result.entry.to_dict())
            run.next_round += 1
            done_here += 1
            run.counters = self.pool.counters()
            save_checkpoint(self.run_dir, run)
            if on_round is not None:
                on_round(run.next_round, result.entry)
        if pending is not None:  # the last round's result has no next request to travel with
            val = self.pool.evaluate(run.global_vector, "val")
            if val:
                pending.val = val
                run.history[pending.round] = pending.to_dict()
                save_checkpoint(self.run_dir, run)
        write_json(self.run_dir / "history.json", run.history)
        return run

    def _pending(self, run: FederatedRun) -> RoundEntry | None:
        """A resumed run whose last round was due for validation and was stopped before it got it."""
        last = run.next_round - 1
        if last >= 0 and eval_due(self.config, last) and "val" not in run.history[last]:
            return RoundEntry.from_dict(run.history[last])
        return None

    def run_round(self, r: int, global_vector: torch.Tensor, previous: RoundEntry | None = None) -> RoundResult:
        """One round: sample, let the pool train, aggregate and record through the Aggregator.

        ``previous`` is the entry of the round that produced ``global_vector`` when it is due for
        validation: the validation travels with this round's request and lands in it (before aggregation,
        so a round that then fails still leaves it)."""
        start = time.perf_counter()
        cids = sample_clients(self.pool.clients(), self.config.federation.clients_per_round, self.config.seed, r)
        lr = round_lr(self.config.train, r)
        plan = RoundPlan(r, cids, lr, previous is not None, self.aggregator.min_clients)
        got = self.pool.fit(plan, global_vector)
        if previous is not None and got.val:
            previous.val = got.val
        extra = record_extra(self.config, lr, got.updates)
        t = time.perf_counter()
        if got.secure is None:
            outcome = self.aggregator.aggregate_round(r, global_vector, got.updates, got.dropouts, extra)
        else:
            outcome = self.aggregator.aggregate_secure_sum(r, global_vector, got.updates, got.secure, extra)
        if got.transport is not None:
            got.transport["aggregate_s"] = time.perf_counter() - t
        entry = RoundEntry(round=r, lr=lr, clients=cids, train_loss={u.cid: u.mean_loss for u in got.updates},
                           rejected={**outcome.rejected, **got.failed}, survivors=outcome.survivors,
                           upload_bytes=outcome.upload_bytes, fit_seconds=got.fit_seconds,
                           round_seconds=time.perf_counter() - start, transport=got.transport)
        return RoundResult(entry, outcome.new_global)


def run_metrics(config: Config, run: FederatedRun, runtime: str, mode: str, num_parameters: int,
                train_slices: dict[str, int], seconds: float) -> dict[str, Any]:
    """The head of metrics.json, the same for both runtimes (test-set figures are added after it)."""
    return {"runtime": runtime, "rounds_done": run.next_round, "finished": run.next_round >= config.train.rounds,
            "mode": mode, "strategy": config.federation.strategy, "secagg": config.secagg.enabled,
            "dp": config.dp.enabled, "train_seconds_this_call": seconds,
            "reproducible_secrets": config.reproducible_secrets, "num_parameters": num_parameters,
            "train_slices": train_slices}
