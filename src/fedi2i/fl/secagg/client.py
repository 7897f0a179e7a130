"""Client side of SecAgg / SecAgg+ as a state machine driven by server requests.

One :class:`SecAggClient` serves one round. Call :meth:`SecAggClient.handle` (or the stage
methods) with each request in order; every method returns the reply to send. A request that
arrives out of order, or that the protocol forbids, raises
:class:`~fedi2i.fl.secagg.exceptions.ProtocolViolation` and the client sends nothing more this round.

The client trusts the server only to route messages; it defends itself against an actively
malicious server (Bonawitz et al. 2017, section 6; see :class:`~fedi2i.fl.secagg.config.Protections`):

* setup: it is in the client list; clip / modulus / quantisation bits match its own config; the
  neighbourhood degree is at least what its own config demands; the threshold is at least its own
  and never below a strict majority of the neighbourhood. It advertises two fresh X25519 keys and a
  commitment to its self-mask seed, signed with its long-term Ed25519 identity key.
* share: every advertisement (all of U1) carries a valid signature under the sender's listed identity
  key, its own is echoed unchanged, all keys are distinct; the SecAgg+ graph is derived from the hash
  of all advertised keys (not from the server's seed); at least ``t`` neighbours (itself included)
  advertised.
* masked input: every ciphertext authenticates (AES-GCM), comes from a neighbour and names the right
  sender and receiver; at least ``t`` neighbours (itself included) shared.
* consistency: it is in the survivor set U3 and at least ``t`` of the neighbours it masked with are;
  it signs (set-up, U3).
* unmask: answered once; it requires valid signatures on the very U3 it signed from ``t`` of its
  neighbourhood and from a strict majority of the round's clients (:class:`~fedi2i.fl.secagg.exceptions.InconsistentView` otherwise, before any share leaves);
  the survivor / dropped lists must be what that U3 implies. It then reveals the self-mask share for
  survivors and the key share for dropped peers: never both for one peer.
"""

from __future__ import annotations

import functools
import hashlib
import os
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import shamir
from .config import Protections, SecAggConfig, majority
from .crypto import INFO_MASK, INFO_SHARE, KEY_BYTES, KeyPair, agree, decrypt, encrypt
from .exceptions import InconsistentView, ProtocolViolation, SecAggAbort
from .graph import neighbourhood_graph
from .identity import (
    IdentityKey,
    advertise_message,
    graph_seed_from_keys,
    self_mask_commitment,
    survivors_message,
    verify,
)
from .messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
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
    "consistency": "consistency",
    "unmask": "unmask",
}


class SecAggClient:
    """One client's state for one SecAgg round.

    Args:
        config: the client's own secure-aggregation policy (checked against the server's setup).
        client_id: this client's id as the server knows it.
        vector: the input to aggregate (any shape, float); may instead be given to
            :meth:`masked_input`.
        identity: the centre's long-term Ed25519 key (signs its keys and the survivor set).
        directory: client id -> Ed25519 public key of every centre, from the federation's set-up
            (never from the server).
        rounding_seed: seed of the stochastic-rounding dither, for tests and benchmarks only (a server
            that knows it can replay the dither). ``None`` (the default) draws a fresh key from the OS.
        protections: the defences in force (all on unless a test or the audit turns one off).
    """

    def __init__(
        self,
        config: SecAggConfig,
        client_id: str,
        vector: np.ndarray | None = None,
        *,
        identity: IdentityKey | None = None,
        directory: Mapping[str, bytes] | None = None,
        rounding_seed: int | bytes | None = None,
        protections: Protections = Protections(),
    ) -> None:
        self.config = config
        self.client_id = client_id
        self.vector = vector
        self.identity = identity
        self.directory: dict[str, bytes] = dict(directory or {})
        self.protections = protections
        self._rounding_key = rounding_key(os.urandom(16) if rounding_seed is None else rounding_seed, client_id)
        self.stage = "advertise"  # next request expected
        self.setup: SetupRequest | None = None
        self._setup_digest = b""
        self._c: KeyPair | None = None
        self._s: KeyPair | None = None
        self._b_seed = b""
        self._b_commit = b""
        self._group: frozenset[str] = frozenset()  # its neighbourhood among U1, itself included
        self._slots: dict[str, int] = {}
        self._s_publics: dict[str, bytes] = {}
        self._c_publics: dict[str, bytes] = {}
        # shares this client holds: owner -> encoded share (its own included)
        self._b_shares: dict[str, bytes] = {}
        self._s_shares: dict[str, bytes] = {}
        self._sharers: frozenset[str] = frozenset()  # U2 as seen here (self included)
        self._u3: frozenset[str] = frozenset()  # the survivor set it signed
        self.revealed_b: set[str] = set()
        self.revealed_s: set[str] = set()

    # ------------------------------------------------------------------ dispatch
    def handle(self, request: Any) -> Any:
        """Answer any protocol request (dispatch on its type)."""
        for cls, method in ((SetupRequest, self.advertise_keys), (ShareKeysRequest, self.share_keys),
                            (MaskedInputRequest, self.masked_input), (ConsistencyRequest, self.consistency),
                            (UnmaskRequest, self.unmask)):
            if isinstance(request, cls):
                return method(request)
        raise ProtocolViolation(f"client {self.client_id}: unknown request {type(request).__name__}")

    def _expect(self, method: str) -> None:
        stage = _STAGE_OF[method]
        skips_check = stage == "unmask" and self.stage == "consistency" and not self.protections.consistency_round
        if self.stage != stage and not skips_check:
            raise ProtocolViolation(
                f"client {self.client_id}: got a '{stage}' request while expecting '{self.stage}'; refused"
            )

    def _refuse(self, why: str) -> ProtocolViolation:
        self.stage = "refused"
        return ProtocolViolation(f"client {self.client_id} refuses the server's request: {why}")

    def _signed(self) -> bool:
        return self.protections.signatures or self.protections.consistency_round

    def _peer_key(self, v: str) -> bytes:
        key = self.directory.get(v)
        if key is None:
            raise self._refuse(f"{v} has no identity key in the federation's key list")
        return key

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
        if self._signed() and self.identity is None:
            raise self._refuse("it has no identity key to sign with; give each centre one (fedi2i flower keys)")
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
        if self.protections.majority_threshold:
            min_t = max(min_t, majority(req.degree + 1))
        if not min_t <= req.threshold <= req.degree + 1:
            raise self._refuse(
                f"threshold {req.threshold} below the required {min_t} (a strict majority of its "
                f"neighbourhood of {req.degree + 1})"
            )
        if len(req.graph_seed) != 32 or len(req.round_id) < 16:
            raise self._refuse("graph seed must be 32 bytes and round id at least 16 bytes")
        self.setup = req
        self._setup_digest = req.digest()
        self._slots = {cid: i + 1 for i, cid in enumerate(ids)}
        self._c, self._s = KeyPair(), KeyPair()
        self._b_seed = os.urandom(KEY_BYTES)
        self._b_commit = self_mask_commitment(req.round_id, self.client_id, self._b_seed)
        c_pub, s_pub = self._c.public_bytes, self._s.public_bytes
        message = advertise_message(self._setup_digest, self.client_id, c_pub, s_pub, self._b_commit)
        signature = self.identity.sign(message) if self.identity is not None else b""
        self.stage = "share"
        return AdvertiseKeys(self.client_id, c_pub, s_pub, self._b_commit, signature)

    # ------------------------------------------------------------------ stage 1
    @_aborts_on_error
    def share_keys(self, req: ShareKeysRequest) -> ShareKeysReply:
        assert self.setup is not None and self._c is not None and self._s is not None
        me = self.client_id
        u1 = set(req.c_publics)
        if not u1 == set(req.s_publics) == set(req.b_commits) == set(req.signatures):
            raise self._refuse("the advertisement lists (c keys, s keys, commitments, signatures) name different clients")
        strangers = u1 - set(self.setup.client_ids)
        if strangers:
            raise self._refuse(f"{sorted(strangers)} are not in the round's client list")
        if (req.c_publics.get(me), req.s_publics.get(me), req.b_commits.get(me)) != (
            self._c.public_bytes, self._s.public_bytes, self._b_commit
        ):
            raise self._refuse("its own public keys were not echoed correctly")
        keys = list(req.c_publics.values()) + list(req.s_publics.values())
        if len(set(keys)) != len(keys) or any(len(k) != KEY_BYTES for k in keys):
            raise self._refuse("public keys are not distinct 32-byte X25519 keys")
        adverts = {v: (req.c_publics[v], req.s_publics[v], req.b_commits[v]) for v in u1}
        if self.protections.signatures:
            for v in sorted(u1 - {me}):
                if not verify(self._peer_key(v), req.signatures[v], advertise_message(self._setup_digest, v, *adverts[v])):
                    raise self._refuse(
                        f"the advertised keys of {v} do not carry {v}'s identity signature on this round's set-up: "
                        "the server substituted or altered them, or showed clients different set-ups"
                    )
        seed = graph_seed_from_keys(self._setup_digest, adverts) if self.protections.client_graph_seed \
            else self.setup.graph_seed
        peers = neighbourhood_graph(self.setup.client_ids, self.setup.degree, seed)[me]
        group = (peers | {me}) & u1
        t = self.setup.threshold
        if len(group) < t:
            raise SecAggAbort(
                f"client {me}: only {len(group)} of its neighbourhood (itself included) advertised keys; "
                f"the threshold is {t}"
            )
        self._group = frozenset(group)
        self._c_publics = {v: req.c_publics[v] for v in group}
        self._s_publics = {v: req.s_publics[v] for v in group}
        members = sorted(group)
        xs = [self._slots[v] for v in members]
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
        self.stage = "consistency"
        return MaskedInput(me, masked)

    # ------------------------------------------------------------------ stage 3
    @_aborts_on_error
    def consistency(self, req: ConsistencyRequest) -> ConsistencySignature:
        """Sign the survivor set U3, after checking that enough of its own peers are in it."""
        assert self.setup is not None
        me = self.client_id
        u3 = set(req.survivors)
        if me not in u3:
            raise self._refuse("it is left out of the survivor set although it uploaded its masked input")
        if not u3 <= set(self.setup.client_ids):
            raise self._refuse(f"survivor set names {sorted(u3 - set(self.setup.client_ids))}, not in the round")
        alive = u3 & self._sharers
        t = self.setup.threshold
        if len(alive) < t:
            raise SecAggAbort(
                f"client {me}: only {len(alive)} of the clients it masked with are survivors; the threshold is {t}"
            )
        self._u3 = frozenset(u3)
        self.stage = "unmask"
        message = survivors_message(self._setup_digest, u3)
        return ConsistencySignature(me, self.identity.sign(message) if self.identity is not None else b"")

    def _consistent_lists(self, req: UnmaskRequest) -> tuple[set[str], set[str]]:
        """Survivors and dropped peers implied by the U3 it signed, once ``t`` of its neighbourhood signed
        the same U3; any signature that fails means the server showed clients different sets."""
        me = self.client_id
        message = survivors_message(self._setup_digest, self._u3)
        valid = set()
        for v, signature in sorted(req.signatures.items()):
            if v not in self._u3:
                raise InconsistentView(
                    f"client {me}: {v} sent a survivor-set signature but is not in the survivor set U3 this client "
                    f"signed ({sorted(self._u3)}): the server showed clients different survivor sets; no share is "
                    "revealed and the round is aborted"
                )
            if not verify(self._peer_key(v), signature, message):
                raise InconsistentView(
                    f"client {me}: the signature of {v} does not verify on the survivor set U3 this client signed "
                    f"({sorted(self._u3)}): the server showed clients different survivor sets (or forged a "
                    "signature); no share is revealed and the round is aborted"
                )
            valid.add(v)
        assert self.setup is not None
        t = self.setup.threshold
        agreeing = valid & self._group
        if len(agreeing) < t:
            raise SecAggAbort(
                f"client {me}: only {len(agreeing)} of its neighbourhood signed the survivor set; it reveals shares "
                f"only after t={t} valid signatures on the same set"
            )
        # a strict majority of the round on one set: two conflicting sets cannot both get one, so a server
        # that withholds the signatures of another view still cannot run two views (SecAgg+ included)
        needed = majority(len(self.setup.client_ids))
        if len(valid) < needed:
            raise SecAggAbort(
                f"client {me}: only {len(valid)} of the round's {len(self.setup.client_ids)} clients signed the "
                f"survivor set; it reveals shares only after a strict majority ({needed}) signed the same set"
            )
        survivors, dropped = set(self._u3 & self._sharers), set(self._sharers - self._u3)
        if set(req.survivors) != survivors or set(req.dropped) != dropped:
            raise InconsistentView(
                f"client {me}: the unmask request lists survivors {sorted(req.survivors)} and dropped "
                f"{sorted(req.dropped)}, but the signed survivor set gives survivors {sorted(survivors)} and "
                f"dropped {sorted(dropped)}; no share is revealed and the round is aborted"
            )
        return survivors, dropped

    # ------------------------------------------------------------------ stage 4
    @_aborts_on_error
    def unmask(self, req: UnmaskRequest) -> UnmaskReply:
        assert self.setup is not None
        me = self.client_id
        if self.protections.consistency_round:
            survivors, dropped = self._consistent_lists(req)
        else:
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
