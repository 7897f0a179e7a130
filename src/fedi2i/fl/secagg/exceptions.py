"""Errors raised by the secure aggregation protocol.

All derive from :class:`fedi2i.errors.SecAggAbort`, so a caller that only wants to know
"this round could not be securely aggregated" catches that one class.
"""

from __future__ import annotations

from fedi2i.errors import SecAggAbort


class ShareAuthenticationError(SecAggAbort):
    """An encrypted Shamir share failed AES-GCM authentication (tampered, or wrong key)."""


class ProtocolViolation(SecAggAbort):
    """A party sent or requested something the protocol forbids; the receiver refuses it.

    Examples: the server asks a client for both the self-mask share and the key share of one
    peer, a message arrives out of stage order, a reply comes from a client that is not part
    of the round.
    """


class InconsistentView(ProtocolViolation):
    """Clients were shown different survivor sets (or a forged signature): the consistency round failed.

    Raised by a client before it reveals any share, so the round aborts without unmasking anyone.
    """


__all__ = ["InconsistentView", "SecAggAbort", "ShareAuthenticationError", "ProtocolViolation"]
