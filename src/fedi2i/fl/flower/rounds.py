"""The server's side of a deployed run: the in-process engine's rounds, with messages instead of calls.

:class:`ServerRounds` builds its aggregator with :func:`fedi2i.fl.server.build_aggregator` as the
in-process engine does, samples clients, sets the learning rate and checkpoints with the engine's own
functions, and so writes the engine's checkpoint format (so a deployed run can be resumed, and read like any run). What differs is only where local
training happens: on the nodes, reached through a :class:`Transport` (Flower's Grid in the ServerApp, or
:class:`~fedi2i.fl.flower.inprocess.InProcessTransport` in tests and benchmarks).

Under secure aggregation a round is fedi2i's own SecAgg protocol carried over five exchanges (with the
consistency round); the server holds a :class:`~fedi2i.fl.secagg.SecAggServer` and only ever sees masked
uploads, the sum and the sum of the weights the nodes chose themselves.
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
from flwr.app import ConfigRecord, RecordDict

from fedi2i.config import Config, dump_config
from fedi2i.errors import AggregationError, ConfigError
from fedi2i.fl.client import ClientUpdate, round_lr
from fedi2i.fl.engine import (CHECKPOINT, FederatedRun, load_checkpoint, load_or_start, sample_clients,
                             save_checkpoint)
from fedi2i.io import save_torch, write_json
from fedi2i.fl.flower import protocol as P
from fedi2i.fl.flower.codec import put, record_secagg, record_vector, secagg_records, vector_record
from fedi2i.fl.params import ParamSpec
from fedi2i.fl.secagg import SecAggServer
from fedi2i.fl.secagg.weighting import secure_mean
from fedi2i.fl.server import Aggregator, build_aggregator
from fedi2i.models import build_unet

log = logging.getLogger(__name__)
RoundCallback = Callable[[int, dict[str, Any]], None]


@dataclass
class Exchange:
    """Replies of one request/reply exchange with a set of nodes; a missing node failed or timed out."""

    replies: dict[int, RecordDict]
    errors: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0


class Transport(Protocol):
    """How the server reaches the nodes."""

    def node_ids(self) -> list[int]: ...

    def exchange(self, message_type: str, contents: dict[int, RecordDict], round_index: int) -> Exchange: ...


def client_times(reply: RecordDict) -> dict[str, float]:
    info = reply.get(P.REC_INFO)
    return {k[5:]: float(v) for k, v in info.items() if k.startswith("time.")} if info is not None else {}


class ServerRounds:
    """Runs ``config.train.rounds`` rounds over the nodes behind ``transport``; writes into ``run_dir``."""

    def __init__(self, config: Config, run_dir: Path, transport: Transport, *, min_nodes: int = 0,
                 join_timeout: float = 300.0, poll: float = 0.5) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.transport = transport
        self.min_nodes = min_nodes or len(config.data.train_centres)
        self.join_timeout = join_timeout
        self.poll = poll
        self.spec = ParamSpec.from_module(build_unet(config.model))
        self.nodes: dict[str, int] = {}
        self.aggregator: Aggregator | None = None

    # ------------------------------------------------------------------ set-up
    def discover(self) -> dict[str, int]:
        """Wait for the nodes, ask each which centre it serves, map every training centre to one node."""
        deadline = time.monotonic() + self.join_timeout
        wanted = set(self.config.data.train_centres)
        described: dict[int, str] = {}
        while True:
            new = [n for n in self.transport.node_ids() if n not in described]
            if len(described) + len(new) >= self.min_nodes and new:
                ex = self.transport.exchange(P.DESCRIBE, {n: RecordDict() for n in new}, -1)
                for node, err in ex.errors.items():
                    raise ConfigError(f"node {node} refused to join: {err}")
                for node, reply in ex.replies.items():
                    described[node] = str(reply[P.REC_INFO]["centre"])
            centres = sorted(described.values())
            dupes = sorted({c for c in centres if centres.count(c) > 1})
            if dupes:
                raise ConfigError(f"centre(s) {dupes} are served by more than one node; give each SuperNode its "
                                  f"own {P.NODE_CENTRE}")
            if wanted <= set(centres):
                break
            if time.monotonic() > deadline:
                raise AggregationError(f"training centre(s) {sorted(wanted - set(centres))} have no node after "
                                       f"{self.join_timeout:.0f} s (nodes so far serve {centres})")
            time.sleep(self.poll)
        self.nodes = {c: n for n, c in described.items() if c in wanted}
        return self.nodes

    def build(self) -> Aggregator:
        """Rule, recorder and aggregator as :func:`fedi2i.training.build_engine` wires them."""
        self.aggregator = build_aggregator(self.config, self.spec, sorted(self.nodes), self.run_dir)
        return self.aggregator

    # ------------------------------------------------------------------ rounds
    def run(self, resume: bool = True, on_round: RoundCallback | None = None) -> FederatedRun:
        """Discover nodes, then train to ``config.train.rounds``, checkpointing after every round."""
        dump_config(self.config, self.run_dir / "config.yaml")
        if not self.nodes:
            self.discover()
        self.build()
        run = load_or_start(self.run_dir, self.config, self.spec, resume)
        while run.next_round < self.config.train.rounds:
            entry = self.run_round(run.next_round, run.global_vector)
            run.global_vector = entry.pop("_new_global")
            run.history.append(entry)
            run.next_round += 1
            save_checkpoint(self.run_dir, run)
            if on_round is not None:
                on_round(run.next_round, entry)
        self._finish(run)
        return run

    def run_round(self, r: int, global_vector: torch.Tensor) -> dict[str, Any]:
        start = time.perf_counter()
        cids = sample_clients(sorted(self.nodes), self.config.federation.clients_per_round, self.config.seed, r)
        lr = round_lr(self.config.train, r)
        if self.config.secagg.enabled:
            entry = self._secure_round(r, global_vector, cids, lr)
        else:
            entry = self._plain_round(r, global_vector, cids, lr)
        entry["round_seconds"] = time.perf_counter() - start
        every = self.config.federation.eval_every
        if every and ((r + 1) % every == 0 or r + 1 == self.config.train.rounds):
            entry["val"] = self.evaluate(r, entry["_new_global"], entry["flower"])
        return entry

    def _extra(self, lr: float, steps: dict[str, int]) -> dict[str, object]:
        train = self.config.train
        return {"lr": lr, "local_epochs": train.local_epochs, "batch_size": train.batch_size, "loss": train.loss,
                "steps": steps}

    def _round_record(self, r: int, lr: float, **more: float) -> ConfigRecord:
        return ConfigRecord({"round": r, "lr": lr, **more})

    def _exchange(self, stage: str, contents: dict[str, RecordDict], r: int,
                  timings: dict[str, Any]) -> tuple[dict[str, RecordDict], dict[str, str]]:
        """One exchange keyed by centre; failed nodes come back in the second dict with the reason."""
        by_node = {self.nodes[c]: content for c, content in contents.items()}
        centre_of = {n: c for c, n in self.nodes.items()}
        ex = self.transport.exchange(stage, by_node, r)
        replies = {centre_of[n]: rec for n, rec in ex.replies.items()}
        errors = {centre_of[n]: msg for n, msg in ex.errors.items()}
        for cid, msg in errors.items():
            log.warning("round %d, %s: centre %s failed: %s", r, stage, cid, msg)
        timings[stage] = {"seconds": ex.seconds, "clients": {c: client_times(rec) for c, rec in replies.items()}}
        return replies, errors

    def _fit_updates(self, replies: dict[str, RecordDict], cids: list[str], with_delta: bool) -> list[ClientUpdate]:
        updates = []
        for cid in cids:  # the engine's order: sampled clients in sorted order
            if cid not in replies:
                continue
            fit = replies[cid][P.REC_FIT]
            delta = (torch.from_numpy(record_vector(replies[cid][P.REC_DELTA], f"update of {cid}")) if with_delta
                     else torch.empty(0))
            updates.append(ClientUpdate(cid, delta, int(fit["num_examples"]), int(fit["steps"]),
                                        float(fit["mean_loss"])))
        return updates

    def _plain_round(self, r: int, global_vector: torch.Tensor, cids: list[str], lr: float) -> dict[str, Any]:
        assert self.aggregator is not None
        timings: dict[str, Any] = {}
        contents = {c: RecordDict({P.REC_GLOBAL: vector_record(global_vector), P.REC_ROUND: self._round_record(r, lr)})
                    for c in cids}
        fit_start = time.perf_counter()
        replies, errors = self._exchange(P.FIT, contents, r, timings)
        fit_time = time.perf_counter() - fit_start
        updates = self._fit_updates(replies, cids, with_delta=True)
        if not updates:
            raise AggregationError(f"round {r}: no centre returned an update; failures: {errors}")
        t = time.perf_counter()
        outcome = self.aggregator.aggregate_round(r, global_vector, updates, None,
                                                  self._extra(lr, {u.cid: u.steps for u in updates}))
        timings["aggregate_s"] = time.perf_counter() - t
        return {"round": r, "lr": lr, "clients": cids, "train_loss": {u.cid: u.mean_loss for u in updates},
                "rejected": {**outcome.rejected, **errors}, "survivors": outcome.survivors,
                "upload_bytes": outcome.upload_bytes, "fit_seconds": fit_time, "flower": timings,
                "_new_global": outcome.new_global}

    def _secure_round(self, r: int, global_vector: torch.Tensor, cids: list[str], lr: float) -> dict[str, Any]:
        """Train + advertise, share, masked input, consistency, unmask: SecAggServer between Flower exchanges.
        The nodes weight themselves (their own example count travels inside the masked vector)."""
        assert self.aggregator is not None
        cfg = self.config
        timings: dict[str, Any] = {}
        server = SecAggServer(cfg.secagg, cids, vector_length=self.spec.numel + 1)
        setup = secagg_records(server.setup_request(), P.REC_SECAGG)
        contents = {c: put(RecordDict({P.REC_GLOBAL: vector_record(global_vector),
                                       P.REC_ROUND: self._round_record(r, lr)}), setup) for c in cids}
        fit_start = time.perf_counter()
        replies, errors = self._exchange(P.SECAGG_FIT, contents, r, timings)
        fit_time = time.perf_counter() - fit_start
        updates = self._fit_updates(replies, cids, with_delta=False)
        if len(updates) < self.aggregator.min_clients:
            raise AggregationError(f"only {len(updates)} centre(s) trained in round {r}, fewer than min_clients="
                                   f"{self.aggregator.min_clients}; failures: {errors or 'none'}")
        requests = server.collect_advertise([record_secagg(replies[u.cid], P.REC_SECAGG) for u in updates])
        for stage in (P.SECAGG_SHARE, P.SECAGG_MASK, P.SECAGG_CHECK, P.SECAGG_UNMASK):
            contents = {cid: put(RecordDict(), secagg_records(request, P.REC_SECAGG))
                        for cid, request in requests.items()}
            replies, failed = self._exchange(stage, contents, r, timings)
            errors.update(failed)
            messages = [record_secagg(replies[c], P.REC_SECAGG) for c in sorted(replies)]
            t = time.perf_counter()
            if stage == P.SECAGG_SHARE:
                requests = server.collect_shares(messages)
            elif stage == P.SECAGG_MASK:
                requests = server.collect_masked_inputs(messages)
            elif stage == P.SECAGG_CHECK:
                requests = server.collect_consistency(messages)
            else:
                result = server.collect_unmask(messages)
            timings[stage]["server_s"] = time.perf_counter() - t
        t = time.perf_counter()
        aggregate = secure_mean(result.total, cfg.secagg)
        counts = {u.cid: u.num_examples for u in updates}
        if self.aggregator.recorder is not None:  # what Aggregator.aggregate_round records under SecAgg
            self.aggregator.recorder.record(r, global_vector, aggregate, {c: counts[c] for c in result.survivors},
                                            None, self._extra(lr, {u.cid: u.steps for u in updates}))
        timings["aggregate_s"] = time.perf_counter() - t
        return {"round": r, "lr": lr, "clients": cids, "train_loss": {u.cid: u.mean_loss for u in updates},
                "rejected": errors, "survivors": list(result.survivors),
                "upload_bytes": int(sum(result.upload_bytes.values())), "fit_seconds": fit_time,
                "flower": timings, "_new_global": global_vector + aggregate}

    def evaluate(self, r: int, global_vector: torch.Tensor, timings: dict[str, Any]) -> dict[str, Any]:
        """Federated evaluation: each node scores the new global model on its validation patients."""
        contents = {c: RecordDict({P.REC_GLOBAL: vector_record(global_vector)}) for c in sorted(self.nodes)}
        replies, _ = self._exchange(P.EVALUATE, contents, r, timings)
        out = {}
        for cid in sorted(replies):
            summary = {k[4:]: float(v) for k, v in replies[cid][P.REC_FIT].items() if k.startswith("val.")}
            if summary:
                out[cid] = summary
        return out

    def _finish(self, run: FederatedRun) -> None:
        model = build_unet(self.config.model)
        self.spec.load_into(model, run.global_vector)
        save_torch(self.run_dir / "model.pt", model.state_dict())
        write_json(self.run_dir / "history.json", run.history)
        write_json(self.run_dir / "metrics.json", {
            "runtime": "flower", "rounds_done": run.next_round, "finished": True,
            "strategy": self.config.federation.strategy, "secagg": self.config.secagg.enabled,
            "dp": self.config.dp.enabled, "num_parameters": self.spec.numel, "nodes": self.nodes,
            "reproducible_secrets": self.config.reproducible_secrets})


def load_global(run_dir: Path) -> torch.Tensor:
    """The final global vector a run wrote (either runtime)."""
    return load_checkpoint(Path(run_dir) / CHECKPOINT).global_vector


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
