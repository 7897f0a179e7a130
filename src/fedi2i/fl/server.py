"""The server's side of a round: check client updates, aggregate them (plainly or securely), record.

Plain object with no transport: the in-process engine and the Flower ServerApp both call it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fedi2i.config import Config
from fedi2i.errors import AggregationError, ConfigError, UpdateRejected
from fedi2i.fl.client import ClientUpdate
from fedi2i.fl.observer import CuriousServerRecorder
from fedi2i.fl.params import ParamSpec
from fedi2i.fl.secagg import IdentityKey, SecAggConfig, SecAggResult, generate_identities, secure_sum
from fedi2i.fl.secagg.weighting import round_seed, secure_mean, weighted_input
from fedi2i.fl.strategies import AggregationRule, build_rule

log = logging.getLogger(__name__)

# A server-side monitor sees each round's individual updates (e.g. the poisoning detector).
RoundMonitor = Callable[[int, torch.Tensor, dict[str, ClientUpdate]], None]


@dataclass
class RoundOutcome:
    """What one round produced: the new global vector and the bookkeeping around it."""

    new_global: torch.Tensor
    accepted: list[str]
    rejected: dict[str, str]
    survivors: list[str]
    upload_bytes: int = 0
    extra: dict[str, object] = field(default_factory=dict)


def check_update(update: ClientUpdate, expected_numel: int) -> None:
    """Reject updates that cannot be aggregated: wrong shape, NaN/Inf, non-positive example count."""
    if update.delta.ndim != 1 or update.delta.numel() != expected_numel:
        raise UpdateRejected(f"client {update.cid}: update has shape {tuple(update.delta.shape)}, "
                             f"expected ({expected_numel},)")
    if not torch.isfinite(update.delta).all():
        bad = int((~torch.isfinite(update.delta)).sum())
        raise UpdateRejected(f"client {update.cid}: update has {bad} non-finite values (NaN/Inf)")
    if update.num_examples <= 0:
        raise UpdateRejected(f"client {update.cid}: reported {update.num_examples} examples")


def build_aggregator(config: Config, spec: ParamSpec, clients: list[str], run_dir: Path, record: bool = True,
                     monitors: list[RoundMonitor] | None = None) -> "Aggregator":
    """Rule, curious-server recorder and aggregator of a run, wired the same way for both runtimes.

    The rule is checked against the clients of a round up front, so an impossible setting (e.g. Krum with
    too few centres) fails before any training.
    """
    fed = config.federation
    rule = build_rule(fed.strategy, fedprox_mu=fed.fedprox_mu, trimmed_beta=fed.trimmed_beta,
                      krum_f=fed.krum_f, multikrum_m=fed.multikrum_m, bulyan_f=fed.bulyan_f)
    if not config.secagg.enabled:
        rule.check(min(fed.clients_per_round or len(clients), len(clients)))
    recorder = None
    if record and fed.record_rounds != "none":
        recorder = CuriousServerRecorder(run_dir, spec, fed.record_rounds, fed.record_fp16, meta={
            "model": config.model.model_dump(), "train": config.train.model_dump(),
            "image_size": config.data.image_size, "secure": config.secagg.enabled,
            "dp": config.dp.model_dump(), "clients": sorted(clients),
            "reproducible_secrets": config.reproducible_secrets})
    return Aggregator(rule, spec.numel, fed.min_clients, config.secagg, recorder, monitors, config.seed,
                      reproducible=config.reproducible_secrets)


class Aggregator:
    """Aggregates one round's updates into a new global model."""

    def __init__(self, rule: AggregationRule, numel: int, min_clients: int = 1,
                 secagg: SecAggConfig | None = None, recorder: CuriousServerRecorder | None = None,
                 monitors: list[RoundMonitor] | None = None, seed: int = 0, reproducible: bool = False) -> None:
        self.rule = rule
        self.numel = numel
        self.min_clients = max(1, min_clients)
        self.secagg = secagg if secagg is not None and secagg.enabled else None
        self.recorder = recorder
        self.monitors = monitors or []
        self.seed = seed
        self.reproducible = reproducible  # SecAgg rounding dither from the seed (tests/benchmarks) or the OS
        self.identities: dict[str, IdentityKey] = {}  # the simulated centres' long-term keys, made once per run

    def screen(self, updates: list[ClientUpdate]) -> tuple[list[ClientUpdate], dict[str, str]]:
        accepted, rejected = [], {}
        for update in updates:
            try:
                check_update(update, self.numel)
                accepted.append(update)
            except UpdateRejected as exc:
                log.warning("round update rejected: %s", exc)
                rejected[update.cid] = str(exc)
        if len(accepted) < self.min_clients:
            raise AggregationError(f"only {len(accepted)} usable update(s), fewer than min_clients="
                                   f"{self.min_clients}; rejected: {rejected or 'none'}")
        return accepted, rejected

    def aggregate_round(self, round_index: int, global_vector: torch.Tensor, updates: list[ClientUpdate],
                        dropouts: dict[str, list[str]] | None = None,
                        record_extra: dict[str, object] | None = None) -> RoundOutcome:
        """Screen, aggregate, record; under secure aggregation individual updates never reach here."""
        accepted, rejected = self.screen(updates)
        counts = {u.cid: u.num_examples for u in accepted}
        if self.secagg is None:
            try:
                self.rule.check(len(accepted))
            except ConfigError as exc:  # the setting was valid; this round lost clients to rejections
                raise AggregationError(f"round {round_index}: {len(accepted)} usable update(s) left after "
                                       f"rejections ({rejected or 'none'}), too few for this rule: {exc}") from None
            stacked = torch.stack([u.delta for u in accepted])
            aggregate = self.rule.aggregate(stacked, torch.tensor([u.num_examples for u in accepted],
                                                                   dtype=torch.float32))
            for monitor in self.monitors:
                monitor(round_index, global_vector, {u.cid: u for u in accepted})
            survivors, upload = [u.cid for u in accepted], 4 * self.numel * len(accepted)
            individual: dict[str, torch.Tensor] | None = {u.cid: u.delta for u in accepted}
        else:
            aggregate, survivors, upload = self._secure_mean(round_index, accepted, dropouts)
            individual = None
        if self.recorder is not None:
            self.recorder.record(round_index, global_vector, aggregate,
                                 {c: counts[c] for c in survivors}, individual, record_extra)
        return RoundOutcome(global_vector + aggregate, [u.cid for u in accepted], rejected, survivors, upload)

    def aggregate_secure_sum(self, round_index: int, global_vector: torch.Tensor, trained: list[ClientUpdate],
                             result: SecAggResult, record_extra: dict[str, object] | None = None) -> RoundOutcome:
        """A round whose SecAgg protocol was carried elsewhere (a deployment): the nodes weighted and masked
        their updates themselves, ``result`` is the unmasked sum; recorded as :meth:`aggregate_round` does."""
        if len(trained) < self.min_clients:
            raise AggregationError(f"only {len(trained)} centre(s) trained in round {round_index}, fewer than "
                                   f"min_clients={self.min_clients}")
        aggregate = secure_mean(result.total, self.secagg or SecAggConfig(enabled=True))
        counts = {u.cid: u.num_examples for u in trained}
        survivors = list(result.survivors)
        if self.recorder is not None:
            self.recorder.record(round_index, global_vector, aggregate, {c: counts[c] for c in survivors}, None,
                                 record_extra)
        return RoundOutcome(global_vector + aggregate, [u.cid for u in trained], {}, survivors,
                            int(sum(result.upload_bytes.values())))

    def _secure_mean(self, round_index: int, accepted: list[ClientUpdate],
                     dropouts: dict[str, list[str]] | None) -> tuple[torch.Tensor, list[str], int]:
        """Example-weighted mean through SecAgg: each client scales by its own count and appends it, the
        server divides the two sums, so it never chooses a weight and a dropped client removes only itself."""
        assert self.secagg is not None
        for cid, key in generate_identities(u.cid for u in accepted if u.cid not in self.identities).items():
            self.identities[cid] = key
        vectors = {u.cid: weighted_input(u.delta.numpy(), u.num_examples, self.secagg) for u in accepted}
        seed = round_seed(self.seed, round_index) if self.reproducible else None
        result = secure_sum(vectors, self.secagg, seed=seed, dropouts=dropouts,
                            identities={u.cid: self.identities[u.cid] for u in accepted})
        aggregate = secure_mean(result.total, self.secagg)
        return aggregate, list(result.survivors), int(sum(result.upload_bytes.values()))
