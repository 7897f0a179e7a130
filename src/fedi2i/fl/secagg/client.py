"""Client side of SecAgg / SecAgg+ as a state machine driven by server requests.

One :class:`SecAggClient` serves one round. Call :meth:`SecAggClient.handle` (or the stage
methods) with each request in order; every method returns the reply to send. A request that
arrives out of order, or that the protocol forbids, raises
:class:`~fedi2i.fl.secagg.exceptions.ProtocolViolation` and the client sends nothing.

Checks a client makes (it trusts the server only to route messages):

* setup: it is in the client list; clip / modulus / quantisation bits match its own config; the
  threshold and the neighbourhood degree are at least what its own config demands.
* share: the peers whose keys it receives are its neighbours in the graph derived from the
  broadcast seed, its own keys are echoed correctly, all keys are distinct, and at least ``t``
  neighbours (itself included) are present.
* masked input: every ciphertext authenticates (AES-GCM) and names the right sender and
  receiver; at least ``t`` neighbours (itself included) shared.
* unmask: answered once; no peer is listed both as survivor and as dropped; it is itself a
  survivor; all listed peers are neighbours whose shares it holds; at least ``t`` survivors. It
  then reveals the self-mask share for survivors and the key share for dropped peers: never
  both for one peer (also tracked across the whole round).
"""

from __future__ import annotations

import functools
import hashlib
import os
import struct
from typing import Any

import numpy as np

from . import shamir
from .config import SecAggConfig
from .crypto import INFO_MASK, INFO_SHARE, KEY_BYTES, KeyPair, agree, decrypt, encrypt
from .exceptions import ProtocolViolation, SecAggAbort
from .graph import neighbourhood_graph
from .messages import (
    AdvertiseKeys,
    MaskedInput,
    MaskedInputRequest,
    SetupRequest,
    ShareKeysReply,
    ShareKeysRequest,
    UnmaskReply,
    UnmaskRequest,
)
from .quantize import quantize_and_mask


def rounding_key(seed: int | bytes, client_id: str) -> bytes:
    """Per-client 256-bit key of the stochastic-rounding dither, derived from a run seed."""
    seed_bytes = seed if isinstance(seed, bytes) else int(seed).to_bytes(16, "little", signed=True)
    return hashlib.sha256(b"fedi2i/secagg/v1/rounding\x00" + seed_bytes + b"\x00" + client_id.encode()).digest()


def share_aad(round_id: bytes, sender: str, receiver: str) -> bytes:
    """Associated data of an encrypted share: binds it to the round, sender and receiver."""
    return b"|".join([b"fedi2i/secagg/v1/share", round_id, sender.encode(), receiver.encode()])


def pack_share_plaintext(sender: str, receiver: str, b_share: bytes, s_share: bytes) -> bytes:
    s, r = sender.encode(), receiver.encode()
    return struct.pack(">HH", len(s), len(r)) + s + r + b_share + s_share


def unpack_share_plaintext(data: bytes) -> tuple[str, str, bytes, bytes]:
    ls, lr = struct.unpack(">HH", data[:4])
    pos = 4
    sender = data[pos : pos + ls].decode()
    pos += ls
    receiver = data[pos : pos + lr].decode()
    pos += lr
    rest = data[pos:]
    if len(rest) != 2 * shamir.SHARE_BYTES:
        raise ValueError("malformed share plaintext")
    return sender, receiver, rest[: shamir.SHARE_BYTES], rest[shamir.SHARE_BYTES :]


def _aborts_on_error(method):  # noqa: ANN001, ANN202
    """Run a stage; a request arriving out of order is refused without changing state, any
    other failure (refusal, failed authentication, too few neighbours) ends the client's round."""

    @functools.wraps(method)
    def wrapper(self: SecAggClient, req: Any, *args: Any, **kwargs: Any) -> Any:
        self._expect(method.__name__)
        try:
            return method(self, req, *args, **kwargs)
        except SecAggAbort:
            if self.stage != "refused":
                self.stage = "aborted"
            raise

    return wrapper


_STAGE_OF = {
    "advertise_keys": "advertise",
    "share_keys": "share",
    "masked_input": "masked_input",
    "unmask": "unmask",
}


class SecAggClient:
    """One client's state for one SecAgg round.

    Args:
        config: the client's own secure-aggregation policy (checked against the server's setup).
        client_id: this client's id as the server knows it.
        vector: the input to aggregate (any shape, float); may instead be given to
            :meth:`masked_input`.
        rounding_seed: seed of the stochastic-rounding dither; the same seed gives the same
            quantised input. ``None`` draws a fresh one from the OS.
    """

    def __init__(
        self,
        config: SecAggConfig,
        client_id: str,
        vector: np.ndarray | None = None,
        *,
        rounding_seed: int | bytes | None = None,
    ) -> None:
        self.config = config
        self.client_id = client_id
        self.vector = vector
        self._rounding_key = rounding_key(os.urandom(16) if rounding_seed is None else rounding_seed, client_id)
        self.stage = "advertise"  # next request expected
        self.setup: SetupRequest | None = None
        self._c: KeyPair | None = None
        self._s: KeyPair | None = None
        self._graph_peers: frozenset[str] = frozenset()
        self._slots: dict[str, int] = {}
        self._s_publics: dict[str, bytes] = {}
        self._c_publics: dict[str, bytes] = {}
        # shares this client holds: owner -> encoded share (its own included)
        self._b_shares: dict[str, bytes] = {}
        self._s_shares: dict[str, bytes] = {}
        self._sharers: frozenset[str] = frozenset()  # U2 as seen here (self included)
        self._b_seed = b""
        self.revealed_b: set[str] = set()
        self.revealed_s: set[str] = set()

    # ------------------------------------------------------------------ dispatch
    def handle(self, request: Any) -> Any:
        """Answer any protocol request (dispatch on its type)."""
        if isinstance(request, SetupRequest):
            return self.advertise_keys(request)
        if isinstance(request, ShareKeysRequest):
            return self.share_keys(request)
        if isinstance(request, MaskedInputRequest):
            return self.masked_input(request)
        if isinstance(request, UnmaskRequest):
            return self.unmask(request)
        raise ProtocolViolation(f"client {self.client_id}: unknown request {type(request).__name__}")

    def _expect(self, method: str) -> None:
        stage = _STAGE_OF[method]
        if self.stage != stage:
            raise ProtocolViolation(
                f"client {self.client_id}: got a '{stage}' request while expecting '{self.stage}'; refused"
            )

    def _refuse(self, why: str) -> ProtocolViolation:
        self.stage = "refused"
        return ProtocolViolation(f"client {self.client_id} refuses the server's request: {why}")

    # ------------------------------------------------------------------ stage 0
    @_aborts_on_error
    def advertise_keys(self, req: SetupRequest) -> AdvertiseKeys:
        cfg = self.config
        ids = list(req.client_ids)
        n = len(ids)
        if self.client_id not in ids:
            raise self._refuse("it is not in the round's client list")
        if ids != sorted(set(ids)):
            raise self._refuse("client list is not sorted and unique")
        if req.clip != cfg.clip or req.modulus_bits != cfg.modulus_bits:
            raise self._refuse(
                f"server uses clip={req.clip}, modulus_bits={req.modulus_bits}; client expects "
                f"clip={cfg.clip}, modulus_bits={cfg.modulus_bits}"
            )
        if req.quant_bits != cfg.quant_bits_for(n):
            raise self._refuse(f"quant_bits {req.quant_bits} != {cfg.quant_bits_for(n)} for {n} clients")
        min_degree = cfg.neighbourhood_degree(n)
        if not min_degree <= req.degree <= n - 1:
            raise self._refuse(f"neighbourhood degree {req.degree} below the required {min_degree}")
        min_t = cfg.threshold_count(req.degree + 1)
        if not min_t <= req.threshold <= req.degree + 1:
            raise self._refuse(f"threshold {req.threshold} below the required {min_t}")
        if len(req.graph_seed) != 32 or len(req.round_id) < 16:
            raise self._refuse("graph seed must be 32 bytes and round id at least 16 bytes")
        self.setup = req
        self._slots = {cid: i + 1 for i, cid in enumerate(ids)}
        self._graph_peers = neighbourhood_graph(ids, req.degree, req.graph_seed)[self.client_id]
        self._c, self._s = KeyPair(), KeyPair()
        self.stage = "share"
        return AdvertiseKeys(self.client_id, self._c.public_bytes, self._s.public_bytes)

    # ------------------------------------------------------------------ stage 1
    @_aborts_on_error
    def share_keys(self, req: ShareKeysRequest) -> ShareKeysReply:
        assert self.setup is not None and self._c is not None and self._s is not None
        me = self.client_id
        group = set(req.c_publics)
        if group != set(req.s_publics):
            raise self._refuse("c and s public key lists name different clients")
        if req.c_publics.get(me) != self._c.public_bytes or req.s_publics.get(me) != self._s.public_bytes:
            raise self._refuse("its own public keys were not echoed correctly")
        strangers = group - self._graph_peers - {me}
        if strangers:
            raise self._refuse(f"{sorted(strangers)} are not its neighbours in the announced graph")
        keys = list(req.c_publics.values()) + list(req.s_publics.values())
        if len(set(keys)) != len(keys) or any(len(k) != KEY_BYTES for k in keys):
            raise self._refuse("public keys are not distinct 32-byte X25519 keys")
        t = self.setup.threshold
        if len(group) < t:
            raise SecAggAbort(
                f"client {me}: only {len(group)} of its neighbourhood (itself included) advertised keys; "
                f"the threshold is {t}"
            )
        self._c_publics = dict(req.c_publics)
        self._s_publics = dict(req.s_publics)
        members = sorted(group)
        xs = [self._slots[v] for v in members]
        self._b_seed = os.urandom(KEY_BYTES)
        b_shares = shamir.split(self._b_seed, t, xs)
        s_shares = shamir.split(self._s.private_bytes, t, xs)
        rid = self.setup.round_id
        out: dict[str, bytes] = {}
        for v, bsh, ssh in zip(members, b_shares, s_shares, strict=True):
            benc, senc = shamir.encode_share(bsh), shamir.encode_share(ssh)
            if v == me:
                self._b_shares[me], self._s_shares[me] = benc, senc
                continue
            key = agree(self._c.private, self._c_publics[v], salt=rid, info=INFO_SHARE)
            out[v] = encrypt(key, pack_share_plaintext(me, v, benc, senc), share_aad(rid, me, v))
        self.stage = "masked_input"
        return ShareKeysReply(me, out)

    # ------------------------------------------------------------------ stage 2
    @_aborts_on_error
    def masked_input(self, req: MaskedInputRequest, vector: np.ndarray | None = None) -> MaskedInput:
        assert self.setup is not None and self._c is not None and self._s is not None
        me = self.client_id
        rid = self.setup.round_id
        for v, blob in req.ciphertexts.items():
            if v == me or v not in self._c_publics:
                raise self._refuse(f"ciphertext from {v!r}, which is not a neighbour that advertised keys")
            key = agree(self._c.private, self._c_publics[v], salt=rid, info=INFO_SHARE)
            plain = decrypt(key, blob, share_aad(rid, v, me), what=f"encrypted share from {v} to {me}")
            sender, receiver, bsh, ssh = unpack_share_plaintext(plain)
            if sender != v or receiver != me:
                raise self._refuse(f"share routed from {v} to {me} names {sender} -> {receiver}")
            self._b_shares[v], self._s_shares[v] = bsh, ssh
        sharers = {me, *req.ciphertexts}
        t = self.setup.threshold
        if len(sharers) < t:
            raise SecAggAbort(
                f"client {me}: only {len(sharers)} of its neighbourhood (itself included) shared keys; "
                f"the threshold is {t}"
            )
        self._sharers = frozenset(sharers)
        x = vector if vector is not None else self.vector
        if x is None:
            raise ProtocolViolation(f"client {me}: no input vector to mask")
        x = np.asarray(x)
        if self.setup.vector_length >= 0 and x.size != self.setup.vector_length:
            raise ProtocolViolation(
                f"client {me}: input has {x.size} values, the round expects {self.setup.vector_length}"
            )
        keys = [self._b_seed]
        signs = [1]
        my_slot = self._slots[me]
        for v in sorted(sharers - {me}):
            keys.append(agree(self._s.private, self._s_publics[v], salt=rid, info=INFO_MASK))
            signs.append(1 if my_slot < self._slots[v] else -1)
        masked = quantize_and_mask(
            x, self.setup.clip, self.setup.quant_bits, self._rounding_key, keys, signs, self.setup.modulus_bits
        )
        self.stage = "unmask"
        return MaskedInput(me, masked)

    # ------------------------------------------------------------------ stage 3
    @_aborts_on_error
    def unmask(self, req: UnmaskRequest) -> UnmaskReply:
        assert self.setup is not None
        me = self.client_id
        survivors, dropped = set(req.survivors), set(req.dropped)
        both = survivors & dropped
        if both:
            raise self._refuse(
                f"it asks for both the self-mask share and the key share of {sorted(both)}; revealing "
                "both would unmask that client's input"
            )
        if me in dropped or me not in survivors:
            raise self._refuse("it lists this (live) client as dropped")
        unknown = (survivors | dropped) - self._sharers
        if unknown:
            raise self._refuse(f"{sorted(unknown)} did not share keys with this client")
        for v in survivors:
            if v in self.revealed_s:
                raise self._refuse(f"key share of {v} was already revealed; its self-mask share cannot be")
        for v in dropped:
            if v in self.revealed_b:
                raise self._refuse(f"self-mask share of {v} was already revealed; its key share cannot be")
        t = self.setup.threshold
        if len(survivors) < t:
            raise SecAggAbort(
                f"client {me}: only {len(survivors)} of its neighbourhood survived; the threshold is {t}"
            )
        self.revealed_b |= survivors
        self.revealed_s |= dropped
        self.stage = "done"
        return UnmaskReply(
            me,
            {v: self._b_shares[v] for v in sorted(survivors)},
            {v: self._s_shares[v] for v in sorted(dropped)},
        )
