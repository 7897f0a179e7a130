"""Secure aggregation: Bonawitz et al. 2017 SecAgg with SecAgg+ neighbourhoods (Bell et al. 2020).

Real cryptography (X25519, HKDF-SHA256, AES-GCM, Shamir over GF(2^521 - 1), ChaCha20 PRG,
Ed25519 identity signatures) and pure-numpy uint32 ring arithmetic, hardened against an actively
malicious server (signed keys, a consistency round, a graph seed from the clients' keys). The protocol is a pair of state machines
(:class:`SecAggClient`, :class:`SecAggServer`) exchanging plain message objects; the
in-process driver :func:`secure_sum` runs them together. See ``docs/secagg.md``.
"""

from .client import SecAggClient
from .config import Protections, SecAggConfig, suggested_neighbours
from .driver import secure_sum
from .exceptions import InconsistentView, ProtocolViolation, SecAggAbort, ShareAuthenticationError
from .identity import IdentityKey, directory_of, generate_identities
from .messages import message_from_dict
from .server import SecAggResult, SecAggServer

__all__ = [
    "IdentityKey",
    "InconsistentView",
    "Protections",
    "ProtocolViolation",
    "SecAggAbort",
    "SecAggClient",
    "SecAggConfig",
    "SecAggResult",
    "SecAggServer",
    "ShareAuthenticationError",
    "directory_of",
    "generate_identities",
    "message_from_dict",
    "secure_sum",
    "suggested_neighbours",
]
