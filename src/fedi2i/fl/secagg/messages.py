"""Protocol messages: plain dataclasses that flatten to a dict of bytes / ints / arrays.

Every message has ``to_dict()`` (values: ``bytes``, ``int``, ``float``, ``str``,
``list[str]``, ``list[bytes]`` or a numpy array) and ``from_dict()``; a transport such as a
Flower ``ConfigRecord`` / ``ArrayRecord`` can carry that dict unchanged.

Stages (server -> client request, client -> server reply):

=============  ==========================  =============================
stage          request                     reply
=============  ==========================  =============================
advertise      :class:`SetupRequest`        :class:`AdvertiseKeys`
share          :class:`ShareKeysRequest`    :class:`ShareKeysReply`
masked_input   :class:`MaskedInputRequest`  :class:`MaskedInput`
consistency    :class:`ConsistencyRequest`  :class:`ConsistencySignature`
unmask         :class:`UnmaskRequest`       :class:`UnmaskReply`
=============  ==========================  =============================
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np

from .identity import frame

STAGES = ("advertise", "share", "masked_input", "consistency", "unmask")


class _Message:
    stage: ClassVar[str]
    kind: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, dict):
                d[f.name + ".keys"] = list(v.keys())
                d[f.name + ".values"] = list(v.values())
            elif isinstance(v, tuple):
                d[f.name] = list(v)
            else:
                d[f.name] = v
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        if d.get("kind") != cls.kind:
            raise ValueError(f"expected a {cls.kind} message, got {d.get('kind')!r}")
        kwargs: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name + ".keys" in d:
                kwargs[f.name] = dict(zip(d[f.name + ".keys"], d[f.name + ".values"], strict=True))
            else:
                v = d[f.name]
                kwargs[f.name] = tuple(v) if isinstance(v, list) else v
        return cls(**kwargs)

    def nbytes(self) -> int:
        """Payload size: bytes/str lengths, array buffers, 8 bytes per number."""
        return _nbytes(self.to_dict())


def _nbytes(v: Any) -> int:
    if isinstance(v, np.ndarray):
        return int(v.nbytes)
    if isinstance(v, (bytes, bytearray)):
        return len(v)
    if isinstance(v, str):
        return len(v.encode())
    if isinstance(v, (bool, int, float, np.integer, np.floating)):
        return 8
    if isinstance(v, dict):
        return sum(_nbytes(x) for k, x in v.items() if k != "kind")
    if isinstance(v, (list, tuple)):
        return sum(_nbytes(x) for x in v)
    if v is None:
        return 0
    raise TypeError(f"cannot size {type(v).__name__}")


@dataclass(frozen=True)
class SetupRequest(_Message):
    """Broadcast: round parameters and the graph seed; asks for the two public keys."""

    stage: ClassVar[str] = "advertise"
    kind: ClassVar[str] = "secagg.setup"
    round_id: bytes
    client_ids: tuple[str, ...]  # sorted; slot of a client = index + 1 (its Shamir x)
    graph_seed: bytes
    degree: int  # neighbours per client; n - 1 = complete graph
    threshold: int  # Shamir threshold t, relative to a neighbourhood of degree + 1
    clip: float
    modulus_bits: int
    quant_bits: int
    vector_length: int  # -1 if the server does not know it yet

    def digest(self) -> bytes:
        """Hash of every field: clients sign it with their keys, so they all agree on one set-up."""
        parts = [self.round_id, "\x00".join(self.client_ids).encode(), self.graph_seed]
        parts += [repr(v).encode() for v in (self.degree, self.threshold, float(self.clip), self.modulus_bits,
                                             self.quant_bits, self.vector_length)]
        return hashlib.sha256(frame(b"fedi2i/secagg/v1/setup", *parts)).digest()


@dataclass(frozen=True)
class AdvertiseKeys(_Message):
    """Two fresh X25519 keys and the self-mask commitment, signed with the centre's identity key."""

    stage: ClassVar[str] = "advertise"
    kind: ClassVar[str] = "secagg.advertise_keys"
    client_id: str
    c_public: bytes  # X25519, share encryption
    s_public: bytes  # X25519, pairwise masks
    b_commit: bytes  # SHA-256 commitment to the self-mask seed b_u
    signature: bytes  # Ed25519 over (set-up digest, id, keys, commitment)


@dataclass(frozen=True)
class ShareKeysRequest(_Message):
    """To every client: the signed advertisements of all clients that advertised (U1).

    A client verifies each signature, derives the SecAgg+ graph from the keys and keeps its neighbours'.
    """

    stage: ClassVar[str] = "share"
    kind: ClassVar[str] = "secagg.share_keys_request"
    c_publics: dict[str, bytes]
    s_publics: dict[str, bytes]
    b_commits: dict[str, bytes]
    signatures: dict[str, bytes]


@dataclass(frozen=True)
class ShareKeysReply(_Message):
    """Encrypted shares of ``b_u`` and the masking key, one ciphertext per neighbour."""

    stage: ClassVar[str] = "share"
    kind: ClassVar[str] = "secagg.share_keys"
    client_id: str
    ciphertexts: dict[str, bytes] = field(default_factory=dict)  # recipient -> AES-GCM blob


@dataclass(frozen=True)
class MaskedInputRequest(_Message):
    """To one client: the ciphertexts its neighbours addressed to it (sender -> blob)."""

    stage: ClassVar[str] = "masked_input"
    kind: ClassVar[str] = "secagg.masked_input_request"
    ciphertexts: dict[str, bytes]


@dataclass(frozen=True, eq=False)
class MaskedInput(_Message):
    stage: ClassVar[str] = "masked_input"
    kind: ClassVar[str] = "secagg.masked_input"
    client_id: str
    masked: np.ndarray  # uint32, values in Z_2^m


@dataclass(frozen=True)
class ConsistencyRequest(_Message):
    """To every survivor: the survivor set U3 (clients whose masked input the server holds), to sign."""

    stage: ClassVar[str] = "consistency"
    kind: ClassVar[str] = "secagg.consistency_request"
    survivors: tuple[str, ...]


@dataclass(frozen=True)
class ConsistencySignature(_Message):
    """A survivor's Ed25519 signature of (set-up digest, U3)."""

    stage: ClassVar[str] = "consistency"
    kind: ClassVar[str] = "secagg.consistency_signature"
    client_id: str
    signature: bytes


@dataclass(frozen=True)
class UnmaskRequest(_Message):
    """To one survivor: which of its neighbours survived and which dropped after sharing, and the
    survivors' signatures of U3 (the client checks the lists against the U3 it signed)."""

    stage: ClassVar[str] = "unmask"
    kind: ClassVar[str] = "secagg.unmask_request"
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    signatures: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class UnmaskReply(_Message):
    """Self-mask shares of survivors and masking-key shares of dropped clients (never both)."""

    stage: ClassVar[str] = "unmask"
    kind: ClassVar[str] = "secagg.unmask"
    client_id: str
    b_shares: dict[str, bytes]
    s_shares: dict[str, bytes]


REQUESTS = (SetupRequest, ShareKeysRequest, MaskedInputRequest, ConsistencyRequest, UnmaskRequest)
REPLIES = (AdvertiseKeys, ShareKeysReply, MaskedInput, ConsistencySignature, UnmaskReply)
_BY_KIND = {cls.kind: cls for cls in REQUESTS + REPLIES}


def message_from_dict(d: dict[str, Any]) -> Any:
    """Rebuild any protocol message from its ``to_dict()`` form."""
    try:
        cls = _BY_KIND[d["kind"]]
    except KeyError:
        raise ValueError(f"unknown secagg message kind {d.get('kind')!r}") from None
    return cls.from_dict(d)
