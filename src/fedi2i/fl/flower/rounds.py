"""The server's side of a deployed run: a :class:`~fedi2i.fl.round_loop.RoundLoop` over :class:`FlowerPool`.

:class:`FlowerPool` only carries messages: the round's request to the nodes behind a :class:`Transport`
(Flower's Grid in the ServerApp, or :class:`~fedi2i.fl.flower.inprocess.InProcessTransport` in tests and
benchmarks) and their answers back. Sampling, learning rate, evaluation cadence, aggregation, the
curious-server record and the checkpoints are the RoundLoop's, exactly as in the in-process runtime.

When validation is due it travels inside the next training message (the node scores the global model it
receives before training), so a round is one exchange; under secure aggregation a round is fedi2i's own
SecAgg protocol carried over five exchanges (with the consistency round): the pool holds a
:class:`~fedi2i.fl.secagg.SecAggServer`, only ever sees masked uploads, the sum and the sum of the
weights the nodes chose themselves, and hands the sum to the Aggregator, which records the round.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from flwr.app import ConfigRecord, RecordDict

from fedi2i.config import Config, dump_config
from fedi2i.errors import AggregationError, ConfigError
from fedi2i.fl.client import ClientUpdate
from fedi2i.fl.flower import protocol as P
from fedi2i.fl.flower.codec import put, record_secagg, record_vector, secagg_records, vector_record
from fedi2i.fl.params import ParamSpec
from fedi2i.fl.round_loop import (Collected, FederatedRun, RoundCallback, RoundLoop, RoundPlan, Summary,
                                  run_metrics)
from fedi2i.fl.secagg import SecAggServer
from fedi2i.fl.server import build_aggregator
from fedi2i.io import save_torch, write_json
from fedi2i.models import build_unet

log = logging.getLogger(__name__)


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


def summaries(replies: dict[str, RecordDict]) -> dict[str, Summary]:
    """Each node's metric summary (``val.<metric>`` in its fit record), for the nodes that sent one."""
    out = {}
    for cid in sorted(replies):
        summary = {k[4:]: float(v) for k, v in replies[cid][P.REC_FIT].items() if k.startswith("val.")}
        if summary:
            out[cid] = summary
    return out


class FlowerPool:
    """The nodes behind a transport, one per training centre; message transport only."""

    runtime = "flower"

    def __init__(self, config: Config, transport: Transport, *, min_nodes: int = 0, join_timeout: float = 300.0,
                 poll: float = 0.5) -> None:
        self.config = config
        self.transport = transport
        self.min_nodes = min_nodes or len(config.data.train_centres)
        self.join_timeout = join_timeout
        self.poll = poll
        self.nodes: dict[str, int] = {}
        self.numel = 0  # set by the server once it knows the model (SecAgg vector length)
        self.train_slices: dict[str, int] = {}  # each centre's training slices, as its node reports them

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

    # ------------------------------------------------------------------ the pool interface
    def clients(self) -> list[str]:
        return sorted(self.nodes)

    def counters(self) -> dict[str, torch.Tensor]:
        return {}  # the nodes' models live on the nodes

    def restore(self, counters: dict[str, torch.Tensor]) -> None:
        return None

    def fit(self, plan: RoundPlan, global_vector: torch.Tensor) -> Collected:
        timings: dict[str, Any] = {}
        round_record = ConfigRecord({"round": plan.round, "lr": plan.lr, "evaluate": plan.evaluate})
        common = RecordDict({P.REC_GLOBAL: vector_record(global_vector), P.REC_ROUND: round_record})
        secure = self.config.secagg.enabled
        server = SecAggServer(self.config.secagg, plan.clients, vector_length=self.numel + 1) if secure else None
        setup = secagg_records(server.setup_request(), P.REC_SECAGG) if server is not None else {}
        start = time.perf_counter()
        replies, errors = self._exchange(P.SECAGG_FIT if secure else P.FIT,
                                         {c: put(RecordDict(dict(common)), setup) for c in plan.clients},
                                         plan.round, timings)
        fit_time = time.perf_counter() - start
        val = None
        if plan.evaluate:
            val = summaries(replies)
            idle = [c for c in sorted(self.nodes) if c not in plan.clients]
            if idle:  # nodes not sampled this round still score the model, in an evaluation-only message
                val.update(self._evaluate(global_vector, "val", plan.round, timings, idle))
        updates = self._updates(replies, plan.clients, with_delta=not secure)
        if server is None:
            return Collected(updates, errors, val=val, fit_seconds=fit_time, transport=timings)
        if len(updates) < plan.min_clients:
            raise AggregationError(f"only {len(updates)} centre(s) trained in round {plan.round}, fewer than "
                                   f"min_clients={plan.min_clients}; failures: {errors or 'none'}")
        result = self._secagg(server, [record_secagg(replies[u.cid], P.REC_SECAGG) for u in updates], plan.round,
                              timings, errors)
        return Collected(updates, errors, secure=result, val=val, fit_seconds=fit_time, transport=timings)

    def evaluate(self, global_vector: torch.Tensor, split: str) -> dict[str, Summary]:
        """Each node scores ``global_vector`` on its own ``split`` patients (an evaluation-only message)."""
        return self._evaluate(global_vector, split, -1, {}, sorted(self.nodes))

    # ------------------------------------------------------------------ messages
    def _evaluate(self, global_vector: torch.Tensor, split: str, r: int, timings: dict[str, Any],
                  cids: list[str]) -> dict[str, Summary]:
        contents = {c: RecordDict({P.REC_GLOBAL: vector_record(global_vector),
                                   P.REC_ROUND: ConfigRecord({"split": split})}) for c in cids}
        replies, _ = self._exchange(P.EVALUATE, contents, r, timings)
        return summaries(replies)

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

    def _updates(self, replies: dict[str, RecordDict], cids: list[str], with_delta: bool) -> list[ClientUpdate]:
        updates = []
        for cid in cids:  # the sampled clients in sorted order, as the in-process pool returns them
            if cid not in replies:
                continue
            fit = replies[cid][P.REC_FIT]
            delta = (torch.from_numpy(record_vector(replies[cid][P.REC_DELTA], f"update of {cid}")) if with_delta
                     else torch.empty(0))
            updates.append(ClientUpdate(cid, delta, int(fit["num_examples"]), int(fit["steps"]),
                                        float(fit["mean_loss"])))
            self.train_slices[cid] = updates[-1].num_examples
        return updates

    def _secagg(self, server: SecAggServer, advertised: list[Any], r: int, timings: dict[str, Any],
                errors: dict[str, str]) -> Any:
        """Share, masked input, consistency, unmask: the SecAggServer between four Flower exchanges."""
        requests = server.collect_advertise(advertised)
        collect = {P.SECAGG_SHARE: server.collect_shares, P.SECAGG_MASK: server.collect_masked_inputs,
                   P.SECAGG_CHECK: server.collect_consistency, P.SECAGG_UNMASK: server.collect_unmask}
        for stage, step in collect.items():
            contents = {cid: put(RecordDict(), secagg_records(request, P.REC_SECAGG))
                        for cid, request in requests.items()}
            replies, failed = self._exchange(stage, contents, r, timings)
            errors.update(failed)
            t = time.perf_counter()
            requests = step([record_secagg(replies[c], P.REC_SECAGG) for c in sorted(replies)])
            timings[stage]["server_s"] = time.perf_counter() - t
        return requests  # collect_unmask's SecAggResult


class ServerRounds:
    """A deployed run: discover the nodes, wire the RoundLoop as the in-process runtime does, write results."""

    def __init__(self, config: Config, run_dir: Path, transport: Transport, *, min_nodes: int = 0,
                 join_timeout: float = 300.0, poll: float = 0.5) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.spec = ParamSpec.from_module(build_unet(config.model))
        self.pool = FlowerPool(config, transport, min_nodes=min_nodes, join_timeout=join_timeout, poll=poll)
        self.pool.numel = self.spec.numel

    def run(self, resume: bool = True, on_round: RoundCallback | None = None) -> FederatedRun:
        """Discover nodes, then train to ``config.train.rounds``, checkpointing after every round."""
        dump_config(self.config, self.run_dir / "config.yaml")
        if not self.pool.nodes:
            self.pool.discover()
        aggregator = build_aggregator(self.config, self.spec, self.pool.clients(), self.run_dir)
        start = time.perf_counter()
        run = RoundLoop(self.config, self.pool, aggregator, self.spec, self.run_dir).run(resume, on_round=on_round)
        self._finish(run, time.perf_counter() - start)
        return run

    def _finish(self, run: FederatedRun, seconds: float) -> None:
        """The final model and metrics.json (the in-process schema; test figures from the nodes' test
        patients, so centres without a node, the unseen ones, are absent)."""
        model = build_unet(self.config.model)
        self.spec.load_into(model, run.global_vector)
        save_torch(self.run_dir / "model.pt", model.state_dict())
        slices = dict(sorted(self.pool.train_slices.items()))  # centres that trained during this call
        metrics = run_metrics(self.config, run, self.pool.runtime, "federated", self.spec.numel, slices, seconds)
        metrics["nodes"] = self.pool.nodes
        test = self.pool.evaluate(run.global_vector, "test")
        data = self.config.data
        metrics.update({"test": {c: {"summary": s} for c, s in test.items()},
                        "unseen": {c: s for c, s in test.items() if c in data.unseen_centres},
                        "seen": {c: s for c, s in test.items() if c in data.train_centres}})
        write_json(self.run_dir / "metrics.json", metrics)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
