"""What the attacker observes: one round of the curious-server record plus public knowledge.

An :class:`Observation` holds tensors and settings only (never a slice, a path to images or a data
config), so an attack that takes an Observation cannot read the victim's images: they are touched only
by the evaluation step (``matching.py``), after the attack has returned.

Public knowledge assumed: the architecture and its normalisation layers, the loss, the optimiser, the
learning rate, the number of local steps and the batch size (all in the record's header/meta; a
federation publishes them to its members), and the MRI/CT intensity normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedi2i.config import ModelConfig
from fedi2i.errors import RecordError
from fedi2i.fl.observer import RoundView, ServerRecord
from fedi2i.fl.params import ParamSpec


@dataclass(frozen=True)
class Group:
    """One client's contribution to the observed update: weight in it, local steps, batch items."""

    client: str
    weight: float
    steps: int
    items: int


@dataclass(frozen=True)
class Observation:
    """An update the server saw (a client's own, or only the aggregate) and what it knows around it."""

    round: int
    target: str  # the client whose update this is, or "aggregate" under secure aggregation
    update: torch.Tensor  # flat vector in ``spec`` order (weights and BatchNorm running statistics)
    global_vector: torch.Tensor  # the model the clients started from
    spec: ParamSpec
    model: ModelConfig
    image_size: int
    loss: str  # "l1" or "mse"
    optimizer: str  # "sgd" or "adam"
    lr: float
    weight_decay: float
    groups: tuple[Group, ...]  # one group for an individual update, one per client for an aggregate
    secure: bool
    dp: dict[str, Any] = field(default_factory=dict)

    @property
    def items(self) -> int:
        """Number of images behind the update (what a reconstruction must produce)."""
        return sum(g.items for g in self.groups)

    @property
    def steps(self) -> int:
        return max(g.steps for g in self.groups)

    @property
    def clipped(self) -> bool:
        """Whether the update may have been rescaled by DP clipping (its norm is then uninformative)."""
        return bool(self.dp.get("enabled"))


def _group(view: RoundView, cid: str, batch_size: int, weight: float) -> Group:
    steps = int(view.meta.get("steps", {}).get(cid, 1))
    items = min(batch_size, int(view.num_examples[cid])) if steps else 0
    return Group(cid, weight, steps, max(items, 1))


def observe_view(view: RoundView, spec: ParamSpec, meta: dict[str, Any], client: str,
                 images: int | None = None) -> Observation:
    """Build the observation of ``client`` in one recorded round.

    Under secure aggregation the server holds only the aggregate: the observation is then the
    aggregate, with one group per surviving client (example-weighted, as FedAvg weighs them).
    ``images`` overrides how many images per client the attacker reconstructs (default: the batch size,
    capped by the client's example count).
    """
    clients = list(meta.get("clients") or sorted(view.num_examples))
    if client not in clients:
        raise RecordError(f"client {client!r} is not in this run; clients: {', '.join(clients)}")
    train = dict(meta.get("train") or {})
    batch = int(images or view.meta.get("batch_size") or train.get("batch_size") or 1)
    if view.secure:
        total = sum(view.num_examples.values())
        groups = tuple(_group(view, c, batch, view.num_examples[c] / total) for c in sorted(view.num_examples))
        update, target = view.aggregate, "aggregate"
    else:
        if client not in view.updates:
            raise RecordError(f"client {client!r} sent no update in round {view.round}; "
                              f"clients with updates: {', '.join(sorted(view.updates))}")
        groups = (_group(view, client, batch, 1.0),)
        update, target = view.updates[client], client
    return Observation(
        round=view.round, target=target, update=update.float(), global_vector=view.global_vector.float(),
        spec=spec, model=ModelConfig.model_validate(meta["model"]), image_size=int(meta["image_size"]),
        loss=str(view.meta.get("loss") or train.get("loss", "l1")),
        optimizer=str(train.get("optimizer", "adam")), lr=float(view.meta["lr"]),
        weight_decay=float(train.get("weight_decay", 0.0)), groups=groups, secure=bool(view.secure),
        dp=dict(meta.get("dp") or {}))


def observe(run_dir: Path, round_index: int, client: str, images: int | None = None) -> Observation:
    """The observation of ``client`` in round ``round_index`` of a run's curious-server record.

    Raises RecordError (with what is there) when the run has no record, the round was not recorded or
    the client is not part of the run.
    """
    record = ServerRecord(run_dir)
    clients = list(record.meta.get("clients") or [])
    if clients and client not in clients:
        raise RecordError(f"client {client!r} is not in run {run_dir}; clients: {', '.join(clients)}")
    return observe_view(record.round(round_index), record.spec, record.meta, client, images)
