"""SecAgg+ neighbourhood graph (Bell et al. 2020).

The server broadcasts a 32-byte graph seed; every party derives the same graph from it, so a
client can check that the peers the server routes to it are really its neighbours. The graph
is a Harary graph (ring lattice: each node joined to the ``d/2`` nodes on either side) on a
seeded random permutation of the clients, i.e. a random ``d``-regular graph. ``d >= n - 1``
gives the complete graph of the original SecAgg.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def neighbourhood_graph(
    client_ids: Sequence[str], degree: int, graph_seed: bytes
) -> dict[str, frozenset[str]]:
    """Map each client to its neighbours (itself excluded).

    ``client_ids`` must be sorted and unique; ``degree`` even or ``>= n - 1``.
    """
    ids = list(client_ids)
    n = len(ids)
    if degree >= n - 1:
        everyone = frozenset(ids)
        return {cid: everyone - {cid} for cid in ids}
    if degree % 2:
        raise ValueError(f"a Harary neighbourhood graph needs an even degree, got {degree}")
    order = _ring_order(ids, graph_seed)
    half = degree // 2
    graph: dict[str, frozenset[str]] = {}
    for pos, cid in enumerate(order):
        peers = {order[(pos + off) % n] for off in range(-half, half + 1) if off}
        graph[cid] = frozenset(peers)
    return graph


def _ring_order(ids: list[str], graph_seed: bytes) -> list[str]:
    rng = np.random.default_rng(np.frombuffer(graph_seed, dtype=np.uint32).tolist())
    return [ids[i] for i in rng.permutation(len(ids))]


def neighbours_of(client_ids: Sequence[str], degree: int, graph_seed: bytes, cid: str) -> frozenset[str]:
    """One client's neighbours in :func:`neighbourhood_graph` (cheaper when only one is needed)."""
    ids = list(client_ids)
    n = len(ids)
    if degree >= n - 1:
        return frozenset(ids) - {cid}
    order = _ring_order(ids, graph_seed)
    pos, half = order.index(cid), degree // 2
    return frozenset(order[(pos + off) % n] for off in range(-half, half + 1) if off)
