"""The in-process client pool: every centre's :class:`LocalTrainer` in this process, driven by the RoundLoop.

Every random choice of a round is derived from (seed, round, client), never from a running RNG, so a run
resumed from its last checkpoint ends with exactly the model an uninterrupted run ends with.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from fedi2i.data.slices import SliceSet
from fedi2i.evaluate import evaluate_centres
from fedi2i.fl.client import LocalTrainer
from fedi2i.fl.round_loop import Collected, RoundPlan, Summary

Dropouts = Callable[[int], dict[str, list[str]] | None]


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


class InProcessPool:
    """Local trainers called directly; SecAgg (with simulated ``dropouts``) runs inside the Aggregator."""

    runtime = "in-process"

    def __init__(self, trainers: dict[str, LocalTrainer], eval_sets: dict[str, SliceSet] | None = None,
                 test_sets: dict[str, SliceSet] | None = None, dropouts: Dropouts | None = None) -> None:
        self.trainers = trainers
        self.sets = {"val": eval_sets or {}, "test": test_sets or {}}
        self.dropouts = dropouts
        first = next(iter(trainers.values()))
        self.model = first.model  # evaluation reuses the first client's model object
        self.spec = first.spec
        self._models = {cid: t.model for cid, t in trainers.items()}

    def clients(self) -> list[str]:
        return sorted(self.trainers)

    def fit(self, plan: RoundPlan, global_vector: torch.Tensor) -> Collected:
        start = time.perf_counter()
        val = self.evaluate(global_vector, "val") if plan.evaluate else None
        updates = [self.trainers[c].fit(global_vector, plan.round, lr=plan.lr) for c in plan.clients]
        return Collected(updates, dropouts=self.dropouts(plan.round) if self.dropouts else None, val=val,
                         fit_seconds=time.perf_counter() - start)

    def evaluate(self, global_vector: torch.Tensor, split: str) -> dict[str, Summary]:
        if not self.sets[split]:
            return {}
        self.spec.load_into(self.model, global_vector)
        return {c: res["summary"] for c, res in evaluate_centres(self.model, self.sets[split]).items()}  # type: ignore[misc]

    def counters(self) -> dict[str, torch.Tensor]:
        return model_counters(self._models)

    def restore(self, counters: dict[str, torch.Tensor]) -> None:
        restore_counters(self._models, counters)
