"""Secure aggregation: Bonawitz et al. 2017 SecAgg with SecAgg+ neighbourhoods (Bell et al. 2020).

Real cryptography (X25519, HKDF-SHA256, AES-GCM, Shamir over GF(2^521 - 1), ChaCha20 PRG)
and pure-numpy uint32 ring arithmetic. The protocol is a pair of state machines
(:class:`SecAggClient`, :class:`SecAggServer`) exchanging plain message objects; the
in-process driver :func:`secure_sum` runs them together. See ``docs/secagg.md``.
"""

from .client import SecAggClient
from .config import SecAggConfig, suggested_neighbours
from .driver import secure_sum
from .exceptions import ProtocolViolation, SecAggAbort, ShareAuthenticationError
from .messages import message_from_dict
from .server import SecAggResult, SecAggServer

__all__ = [
    "ProtocolViolation",
    "SecAggAbort",
    "SecAggClient",
    "SecAggConfig",
    "SecAggResult",
    "SecAggServer",
    "ShareAuthenticationError",
    "message_from_dict",
    "secure_sum",
    "suggested_neighbours",
]
