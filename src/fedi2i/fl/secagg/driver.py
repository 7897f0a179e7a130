"""In-process driver: runs the whole protocol between one server and its clients.

The federated engine calls :func:`secure_sum`; a Flower runtime would instead carry the same
request/reply objects (``to_dict()``) between :class:`SecAggServer` and :class:`SecAggClient`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np

from fedi2i.errors import ConfigError

from .client import SecAggClient
from .config import Protections, SecAggConfig
from .identity import IdentityKey, directory_of, generate_identities
from .messages import STAGES
from .server import SecAggResult, SecAggServer


def secure_sum(
    vectors: Mapping[str, np.ndarray],
    config: SecAggConfig,
    seed: int | None = None,
    dropouts: Mapping[str, Collection[str]] | None = None,
    *,
    identities: Mapping[str, IdentityKey] | None = None,
    protections: Protections = Protections(),
) -> SecAggResult:
    """Sum the clients' vectors with SecAgg / SecAgg+ run in-process.

    Args:
        vectors: client id -> input (same shape for all; float). The engine passes updates
            already multiplied by the example weights.
        config: secure aggregation settings.
        seed: ``None`` (the default) draws every client's rounding dither from the OS. An int makes
            the dither reproducible, for tests and benchmarks only: the same seed gives the same
            ``total`` (keys, masks and the SecAgg+ graph are fresh every call).
        dropouts: stage name (``'advertise'``, ``'share'``, ``'masked_input'``, ``'consistency'``,
            ``'unmask'``) -> clients that drop just before sending their reply in that stage. A client
            that drops before ``masked_input`` is not in the sum; one that drops later is (it uploaded).
        identities: each client's long-term identity key (default: fresh ones for this call).
        protections: the defences in force (all on by default).

    Returns:
        :class:`SecAggResult` with ``total`` (same shape as the inputs, float64) over
        ``survivors``, and what the server saw.

    Raises:
        SecAggAbort: fewer than the threshold of clients (per neighbourhood) remain at some stage.
        ConfigError: inconsistent shapes, unknown stages or clients.
    """
    ids = sorted(vectors)
    if not ids:
        raise ConfigError("secure_sum needs at least one client vector")
    shapes = {np.shape(vectors[c]) for c in ids}
    if len(shapes) != 1:
        raise ConfigError(f"all client vectors must have the same shape, got {sorted(map(str, shapes))}")
    shape = shapes.pop()
    drops: dict[str, set[str]] = {s: set() for s in STAGES}
    for stage, who in (dropouts or {}).items():
        if stage not in drops:
            raise ConfigError(f"unknown SecAgg stage {stage!r}; stages are {list(STAGES)}")
        unknown = set(who) - set(ids)
        if unknown:
            raise ConfigError(f"dropouts name unknown clients {sorted(unknown)}")
        drops[stage] |= set(who)

    length = int(np.prod(shape, dtype=np.int64))
    identities = identities if identities is not None else generate_identities(ids)
    directory = directory_of(identities)
    server = SecAggServer(config, ids, seed, vector_length=length, protections=protections)
    clients = {c: SecAggClient(config, c, vectors[c], identity=identities[c], directory=directory,
                               rounding_seed=seed, protections=protections) for c in ids}

    setup = server.setup_request()
    replies = [clients[c].advertise_keys(setup) for c in ids if c not in drops["advertise"]]
    requests = server.collect_advertise(replies)
    replies = [clients[c].share_keys(req) for c, req in requests.items() if c not in drops["share"]]
    requests = server.collect_shares(replies)
    replies = [clients[c].masked_input(req) for c, req in requests.items() if c not in drops["masked_input"]]
    requests = server.collect_masked_inputs(replies)
    replies = [clients[c].consistency(req) for c, req in requests.items() if c not in drops["consistency"]]
    requests = server.collect_consistency(replies)
    replies = [clients[c].unmask(req) for c, req in requests.items() if c not in drops["unmask"]]
    result = server.collect_unmask(replies)
    result.total = result.total.reshape(shape)
    return result
