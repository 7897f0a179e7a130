"""The SecAgg protocol's own knobs that are not user settings: the strict-majority rule and the protections.

The user's settings (:class:`~fedi2i.secagg_settings.SecAggConfig`) live in :mod:`fedi2i.secagg_settings`,
below the run configuration; they are re-exported here for the protocol modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedi2i.secagg_settings import SecAggConfig, check_clients

__all__ = ["Protections", "SecAggConfig", "majority", "suggested_neighbours"]


def majority(group_size: int) -> int:
    """Smallest strict majority of ``group_size``: the lowest threshold a client accepts."""
    return group_size // 2 + 1


@dataclass(frozen=True)
class Protections:
    """The defences against an actively malicious server (and a wrapping client); all on by default.

    Not part of the user's config: a deployment always runs with every protection. Turning one off exists
    so that the tests and the audit (:mod:`fedi2i.audit.defence_checks`) can show the attack it blocks.

    Attributes:
        signatures: clients verify the Ed25519 signature of every advertised key set with the sender's
            listed identity key (else the server could substitute keys and read the shares).
        consistency_round: survivors sign the survivor set U3 and a client reveals shares only for the U3
            it signed, after ``t`` valid signatures of its neighbourhood on that same U3 (else the server
            can show different clients different survivor / dropped lists).
        majority_threshold: clients refuse a threshold below a strict majority of their neighbourhood.
        client_graph_seed: the SecAgg+ graph comes from a hash of every advertised key, not from the
            seed the server announces.
        range_check: the server rejects an unmasked sum outside ``[0, n (2^k - 1)]``.
        share_check: the server rebuilds every secret from all shares that arrived, checks them all
            against one polynomial and the self-mask seed against its signed commitment.
    """

    signatures: bool = True
    consistency_round: bool = True
    majority_threshold: bool = True
    client_graph_seed: bool = True
    range_check: bool = True
    share_check: bool = True


def suggested_neighbours(n_clients: int) -> int:
    """A SecAgg+ degree that grows like ``log n``: ``2 * ceil(log2 n)`` (even), at least 2."""
    check_clients(n_clients)
    return max(2, 2 * math.ceil(math.log2(max(n_clients, 2))))
