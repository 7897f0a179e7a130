"""From the curious-server record to signal arrays: every candidate slice scored on every model the
server can rebuild, for every recorded round used.

What the server can rebuild depends on what it saw. Without secure aggregation it holds the global
model of each round and every client's update, so centre k's model is ``global + delta_k``. Under
secure aggregation it holds only the global model and the aggregate, so the one model it can attribute
to the round is ``global + aggregate``: the "target's model" of every centre is that same model, and
no per-centre reference exists.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fedi2i.attacks.membership.candidates import Candidates
from fedi2i.attacks.membership.signals import ModelProbe, cosine_to
from fedi2i.config import ModelConfig
from fedi2i.errors import RecordError, RunStateError
from fedi2i.fl.observer import RoundView, ServerRecord
from fedi2i.io import save_npz
from fedi2i.models import build_unet

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class Signals:
    """Signal arrays, NaN where a centre did not take part in a round.

    ``loss_target`` [R, K, N]: per-slice loss on the target centre's model after the round (under SecAgg
    the aggregate model). ``loss_global`` [R, N]: on the global model the round started from.
    ``loss_final`` [N]: on the final global model. ``loss_aggregate`` [R, N]: on the global model each round
    produces (``global + aggregate``; under SecAgg the same as ``loss_target``). ``cos_target`` [R, K, N]: cosine of the descent
    direction at the global model with the target's update (SecAgg: the aggregate). ``gradnorm_target``
    [K, N]: per-sample gradient norm on the target's model at its last recorded round.
    """

    rounds: list[int]
    clients: list[str]
    secure: bool
    loss_target: np.ndarray | None = None
    loss_global: np.ndarray | None = None
    loss_final: np.ndarray | None = None
    loss_aggregate: np.ndarray | None = None
    cos_target: np.ndarray | None = None
    gradnorm_target: np.ndarray | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    ARRAYS = ("loss_target", "loss_global", "loss_final", "loss_aggregate", "cos_target", "gradnorm_target")

    def save(self, path: Path) -> None:
        """Write the arrays (npz) so other settings can be scored without recomputing the signals."""
        arrays = {k: getattr(self, k) for k in self.ARRAYS if getattr(self, k) is not None}
        meta = json.dumps({"rounds": self.rounds, "clients": self.clients, "secure": self.secure,
                           "seconds": self.seconds})
        save_npz(path, compressed=True, meta=np.array(meta), **arrays)

    @classmethod
    def load(cls, path: Path) -> "Signals":
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                arrays = {k: z[k] for k in cls.ARRAYS if k in z.files}
        except Exception as exc:  # truncated, foreign or pickled: never read further
            raise RunStateError(f"{path} is unreadable ({type(exc).__name__}); delete it and the signals are "
                                "computed again") from None
        return cls(rounds=meta["rounds"], clients=meta["clients"], secure=meta["secure"],
                   seconds=meta["seconds"], **arrays)

    @property
    def target_source(self) -> str:
        return "aggregate model (global + aggregate)" if self.secure else "client model (global + update)"


def probe_for(record: ServerRecord) -> ModelProbe:
    model_cfg = record.meta.get("model")
    if model_cfg is None:
        raise RecordError("the record does not say which model was trained (meta.model missing)")
    train = record.meta.get("train", {})
    return ModelProbe(build_unet(ModelConfig(**model_cfg)), record.spec, train.get("loss", "l1"))


def target_directions(view: RoundView, clients: list[str]) -> dict[str, torch.Tensor]:
    """Per target centre, the update the server attributes to it this round (SecAgg: the aggregate)."""
    if view.secure:
        present = set(view.num_examples)
        return {c: view.aggregate for c in clients if c in present}
    return {c: view.updates[c] for c in clients if c in view.updates}


def collect_signals(record: ServerRecord, rounds: list[int], clients: list[str], cands: Candidates,
                    families: set[str], batch_size: int = 64, grad_chunk: int = 32,
                    progress: Progress | None = None) -> Signals:
    """Compute the signal families asked for.

    Families: "loss_target" (and "loss_global", "loss_aggregate") per round, "loss_final", "grad" (cosines per round),
    "gradnorm" (last round). Every array is indexed by the candidates' fixed order.
    """
    probe = probe_for(record)
    views = [record.round(r) for r in rounds]
    sig = Signals(rounds=list(rounds), clients=list(clients), secure=any(v.secure for v in views))
    tick = progress or (lambda stage, done, total: None)
    mr, ct = cands.slices.mr, cands.slices.ct

    def timed(name: str, compute: Callable[[], None]) -> None:
        start = time.perf_counter()
        compute()
        sig.seconds[name] = time.perf_counter() - start

    if families & {"loss_target", "loss_global", "loss_aggregate"}:
        timed("loss", lambda: _loss_signals(sig, probe, views, mr, ct, "loss_global" in families,
                                            "loss_aggregate" in families, batch_size, tick))
    if "loss_final" in families:
        last = views[-1]
        probe.load(last.global_vector + last.aggregate)
        timed("loss_final", lambda: setattr(sig, "loss_final", probe.losses(mr, ct, batch_size)))
    if "grad" in families:
        timed("grad", lambda: _cosine_signals(sig, probe, views, mr, ct, grad_chunk, tick))
    if "gradnorm" in families:
        timed("gradnorm", lambda: _gradnorm_signals(sig, probe, views, mr, ct, grad_chunk, tick))
    return sig


def _loss_signals(sig: Signals, probe: ModelProbe, views: list[RoundView], mr: torch.Tensor, ct: torch.Tensor,
                  with_global: bool, with_aggregate: bool, batch_size: int, tick: Progress) -> None:
    n = len(mr)
    col = {c: i for i, c in enumerate(sig.clients)}
    sig.loss_target = np.full((len(views), len(sig.clients), n), np.nan)
    if with_global:
        sig.loss_global = np.full((len(views), n), np.nan)
    if with_aggregate:
        sig.loss_aggregate = np.full((len(views), n), np.nan)
    for ri, view in enumerate(views):
        if sig.loss_global is not None:
            probe.load(view.global_vector)
            sig.loss_global[ri] = probe.losses(mr, ct, batch_size)
        directions = target_directions(view, sig.clients)
        if view.secure and directions:  # one model for every centre that took part
            probe.load(view.global_vector + view.aggregate)
            row = probe.losses(mr, ct, batch_size)
            for c in directions:
                sig.loss_target[ri, col[c]] = row
            if sig.loss_aggregate is not None:
                sig.loss_aggregate[ri] = row
        else:
            for c, delta in directions.items():
                probe.load(view.global_vector + delta)
                sig.loss_target[ri, col[c]] = probe.losses(mr, ct, batch_size)
        if sig.loss_aggregate is not None and not (view.secure and directions):
            probe.load(view.global_vector + view.aggregate)
            sig.loss_aggregate[ri] = probe.losses(mr, ct, batch_size)
        tick("loss", ri + 1, len(views))


def _cosine_signals(sig: Signals, probe: ModelProbe, views: list[RoundView], mr: torch.Tensor, ct: torch.Tensor,
                    chunk: int, tick: Progress) -> None:
    """One per-sample gradient pass per round at the global model, cosines with every target's update."""
    col = {c: i for i, c in enumerate(sig.clients)}
    sig.cos_target = np.full((len(views), len(sig.clients), len(mr)), np.nan)
    for ri, view in enumerate(views):
        directions = target_directions(view, sig.clients)
        if not directions:
            continue
        names = list(directions)
        stacked = torch.stack([probe.param_part(directions[c]) for c in names])
        probe.load(view.global_vector)
        for start, grads in probe.gradients(mr, ct, chunk):
            cos = cosine_to(grads, stacked).double().numpy()  # [B, centres present]
            for j, c in enumerate(names):
                sig.cos_target[ri, col[c], start:start + len(grads)] = cos[:, j]
        tick("gradient", ri + 1, len(views))


def _gradnorm_signals(sig: Signals, probe: ModelProbe, views: list[RoundView], mr: torch.Tensor,
                      ct: torch.Tensor, chunk: int, tick: Progress) -> None:
    """Per-sample gradient norms on each target's model at the last round it took part in."""
    sig.gradnorm_target = np.full((len(sig.clients), len(mr)), np.nan)
    done: dict[tuple[int, str], np.ndarray] = {}  # (round, model) -> norms; SecAgg: one model for all
    for k, c in enumerate(sig.clients):
        last = next((v for v in reversed(views) if c in target_directions(v, [c])), None)
        if last is None:
            continue
        key = (last.round, "aggregate" if last.secure else c)
        if key not in done:
            probe.load(last.global_vector + target_directions(last, [c])[c])
            norms = np.empty(len(mr))
            for start, grads in probe.gradients(mr, ct, chunk):
                norms[start:start + len(grads)] = grads.norm(dim=1).double().numpy()
            done[key] = norms
        sig.gradnorm_target[k] = done[key]
        tick("gradient norm", k + 1, len(sig.clients))
