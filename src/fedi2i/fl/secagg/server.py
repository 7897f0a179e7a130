"""Server side of SecAgg / SecAgg+ as a state machine.

The server routes messages and computes the output; it never sees an unmasked input. Each
``collect_*`` method takes the replies that arrived for a stage (clients that did not answer
have dropped out) and returns the requests of the next stage, keyed by client id.

Sets, as in Bonawitz et al.: ``U1`` advertised keys, ``U2`` shared keys, ``U3`` uploaded a
masked input (the survivors, whose inputs are in the sum), ``U4`` signed ``U3`` in the
consistency round, ``U5`` answered the unmask request. With a threshold ``t`` (relative to a
neighbourhood of ``degree + 1`` clients) the round aborts with :class:`~fedi2i.errors.SecAggAbort`
as soon as some client's neighbourhood among the current set falls below ``t``, or a secret
cannot be reconstructed from the shares.

The server relays the clients' signed advertisements and survivor-set signatures; the clients check
them (the server is the party they defend against). What the server checks itself defends the sum
against a malicious client: every secret is rebuilt from all shares that arrived and checked against
the others and against its signed commitment, and the unmasked sum must lie in ``[0, n_s (2^k - 1)]``
(a client that wraps its upload, e.g. adds ``2^31``, is caught).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from . import shamir
from .config import Protections, SecAggConfig, majority
from .crypto import INFO_MASK, KEY_BYTES, KeyPair, agree, apply_masks
from .exceptions import ProtocolViolation, SecAggAbort
from .graph import neighbourhood_graph
from .identity import SIGNATURE_BYTES, graph_seed_from_keys, self_mask_commitment
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
from .quantize import dequantize_sum


@dataclass
class SecAggResult:
    """Output of one secure-aggregation round.

    Attributes:
        total: float64 sum over ``survivors`` of their input vectors (dequantised); within
            ``config.error_bound(n)`` of the true sum for inputs inside ``[-clip, clip]``.
        survivors: ids of the clients whose input is in the sum (sorted).
        masked_uploads: exactly what the server received per client (uint32 arrays).
        upload_bytes: bytes each client uploaded over all stages (payload sizes).
        quant_bits: the ``k`` used; ``error_bound`` the per-coordinate bound for this round.
    """

    total: np.ndarray
    survivors: list[str]
    masked_uploads: dict[str, np.ndarray]
    upload_bytes: dict[str, int]
    quant_bits: int = 0
    error_bound: float = 0.0
    dropped: dict[str, list[str]] = field(default_factory=dict)  # stage -> ids that dropped there


def graph_seed_from(seed: int | None) -> bytes:
    """The graph seed a server proposes in its set-up (fresh if ``seed`` is None). Protected clients
    ignore it and derive the graph from the round's keys."""
    if seed is None:
        return os.urandom(32)
    return hashlib.sha256(b"fedi2i/secagg/v1/graph\x00" + int(seed).to_bytes(16, "little", signed=True)).digest()


class SecAggServer:
    """Server state for one round.

    Args:
        config: secure aggregation settings.
        client_ids: the clients selected for the round.
        seed: the graph seed the server proposes (``None``: fresh). With the default protections the
            graph comes from the hash of every advertised key instead, so the seed does not matter.
        vector_length: number of values per input, if known (checked on upload).
        round_id: 16+ random bytes binding keys and ciphertexts to this round (default: fresh).
        protections: the server-side checks (range check, share check) and how the graph seed is made.
    """

    def __init__(
        self,
        config: SecAggConfig,
        client_ids: Iterable[str],
        seed: int | None = None,
        *,
        vector_length: int | None = None,
        round_id: bytes | None = None,
        protections: Protections = Protections(),
    ) -> None:
        ids = sorted(set(client_ids))
        if not ids:
            raise SecAggAbort("secure aggregation needs at least one client")
        self.config = config
        self.client_ids = ids
        self.n = len(ids)
        self.quant_bits = config.quant_bits_for(self.n)
        self.degree = config.neighbourhood_degree(self.n)
        self.threshold = config.threshold_count(self.degree + 1)
        self.protections = protections
        self.graph_seed = graph_seed_from(seed)
        self.graph = neighbourhood_graph(ids, self.degree, self.graph_seed)  # replaced once keys are in
        self.round_id = round_id if round_id is not None else os.urandom(16)
        self.slots = {cid: i + 1 for i, cid in enumerate(ids)}
        self.vector_length = vector_length
        self.stage = "advertise"
        self.u1: set[str] = set()
        self.u2: set[str] = set()
        self.u3: set[str] = set()
        self.u4: set[str] = set()
        self.u5: set[str] = set()
        self.c_publics: dict[str, bytes] = {}
        self.s_publics: dict[str, bytes] = {}
        self.b_commits: dict[str, bytes] = {}
        self.signatures: dict[str, bytes] = {}
        self.survivor_signatures: dict[str, bytes] = {}
        self._ciphertexts: dict[str, dict[str, bytes]] = {}  # sender -> recipient -> blob
        self.masked_uploads: dict[str, np.ndarray] = {}
        self.upload_bytes: dict[str, int] = dict.fromkeys(ids, 0)

    # ------------------------------------------------------------------ helpers
    def _begin(self, stage: str) -> None:
        if self.stage != stage:
            raise ProtocolViolation(f"server: '{stage}' replies arrived while in stage '{self.stage}'")

    def _accept(self, replies: Iterable, cls: type, allowed: set[str], stage: str) -> dict:
        got: dict = {}
        for r in replies:
            if not isinstance(r, cls):
                raise ProtocolViolation(f"server: expected {cls.__name__} in stage '{stage}', got {type(r).__name__}")
            if r.client_id not in allowed:
                raise ProtocolViolation(f"server: unexpected '{stage}' reply from {r.client_id!r}")
            if r.client_id in got:
                raise ProtocolViolation(f"server: duplicate '{stage}' reply from {r.client_id!r}")
            got[r.client_id] = r
            self.upload_bytes[r.client_id] += r.nbytes()
        return got

    def _check_neighbourhoods(self, alive: set[str], who: Iterable[str], stage: str) -> None:
        t = self.threshold
        if len(alive) < t:
            raise SecAggAbort(
                f"secure aggregation aborted at stage '{stage}': {len(alive)} of {self.n} clients "
                f"left, fewer than the threshold t={t}"
            )
        for u in sorted(who):
            live = len((self.graph[u] | {u}) & alive)
            if live < t:
                raise SecAggAbort(
                    f"secure aggregation aborted at stage '{stage}': client {u} has {live} live clients "
                    f"in its neighbourhood of {self.degree + 1}, fewer than the threshold t={t}"
                )

    # ------------------------------------------------------------------ stage 0
    def setup_request(self) -> SetupRequest:
        """The broadcast that opens the round (same for every client)."""
        return SetupRequest(
            round_id=self.round_id,
            client_ids=tuple(self.client_ids),
            graph_seed=self.graph_seed,
            degree=self.degree,
            threshold=self.threshold,
            clip=self.config.clip,
            modulus_bits=self.config.modulus_bits,
            quant_bits=self.quant_bits,
            vector_length=-1 if self.vector_length is None else self.vector_length,
        )

    def collect_advertise(self, replies: Iterable[AdvertiseKeys]) -> dict[str, ShareKeysRequest]:
        self._begin("advertise")
        got = self._accept(replies, AdvertiseKeys, set(self.client_ids), "advertise")
        for cid, r in got.items():
            if len(r.c_public) != KEY_BYTES or len(r.s_public) != KEY_BYTES or len(r.b_commit) != KEY_BYTES:
                raise ProtocolViolation(f"server: {cid} advertised keys that are not 32-byte X25519 keys")
            if r.signature and len(r.signature) != SIGNATURE_BYTES:
                raise ProtocolViolation(f"server: {cid} sent a signature that is not 64 bytes")
        self.u1 = set(got)
        ids = sorted(self.u1)
        self.c_publics = {cid: got[cid].c_public for cid in ids}
        self.s_publics = {cid: got[cid].s_public for cid in ids}
        self.b_commits = {cid: got[cid].b_commit for cid in ids}
        self.signatures = {cid: got[cid].signature for cid in ids}
        if self.protections.client_graph_seed:  # the clients derive the graph from the keys: so must we
            adverts = {v: (self.c_publics[v], self.s_publics[v], self.b_commits[v]) for v in ids}
            self.graph = neighbourhood_graph(self.client_ids, self.degree,
                                             graph_seed_from_keys(self.setup_request().digest(), adverts))
        self._check_neighbourhoods(self.u1, self.u1, "advertise")
        request = ShareKeysRequest(self.c_publics, self.s_publics, self.b_commits, self.signatures)
        self.stage = "share"
        return dict.fromkeys(ids, request)

    # ------------------------------------------------------------------ stage 1
    def collect_shares(self, replies: Iterable[ShareKeysReply]) -> dict[str, MaskedInputRequest]:
        self._begin("share")
        got = self._accept(replies, ShareKeysReply, self.u1, "share")
        for u, r in got.items():
            expected = (self.graph[u] & self.u1) - {u}
            if set(r.ciphertexts) != expected:
                raise ProtocolViolation(
                    f"server: {u} sent shares to {sorted(r.ciphertexts)}, expected its neighbours {sorted(expected)}"
                )
        self.u2 = set(got)
        self._check_neighbourhoods(self.u2, self.u2, "share")
        self._ciphertexts = {u: dict(r.ciphertexts) for u, r in got.items()}
        out = {}
        for u in sorted(self.u2):
            inbox = {v: self._ciphertexts[v][u] for v in sorted(self.graph[u] & self.u2)}
            out[u] = MaskedInputRequest(inbox)
        self.stage = "masked_input"
        return out

    # ------------------------------------------------------------------ stage 2
    def collect_masked_inputs(self, replies: Iterable[MaskedInput]) -> dict[str, ConsistencyRequest]:
        self._begin("masked_input")
        got = self._accept(replies, MaskedInput, self.u2, "masked_input")
        mod_mask = np.uint32((1 << self.config.modulus_bits) - 1) if self.config.modulus_bits < 32 else None
        for u, r in sorted(got.items()):
            y = r.masked
            if not isinstance(y, np.ndarray) or y.dtype != np.uint32 or y.ndim != 1:
                raise ProtocolViolation(f"server: masked input of {u} is not a 1-D uint32 array")
            if self.vector_length is None:
                self.vector_length = int(y.shape[0])
            if y.shape[0] != self.vector_length:
                raise ProtocolViolation(
                    f"server: masked input of {u} has {y.shape[0]} values, expected {self.vector_length}"
                )
            if mod_mask is not None and (y > mod_mask).any():
                raise ProtocolViolation(f"server: masked input of {u} is outside Z_2^{self.config.modulus_bits}")
            self.masked_uploads[u] = y
        self.u3 = set(got)
        dropped = self.u2 - self.u3
        # every survivor's b_u, and the key of every dropped client a survivor masked with,
        # must be recoverable from the survivors' shares
        needs_key = {v for v in dropped if self.graph[v] & self.u3}
        self._check_neighbourhoods(self.u3, self.u3 | needs_key, "masked_input")
        request = ConsistencyRequest(tuple(sorted(self.u3)))
        self.stage = "consistency"
        return dict.fromkeys(sorted(self.u3), request)

    # ------------------------------------------------------------------ stage 3
    def collect_consistency(self, replies: Iterable[ConsistencySignature]) -> dict[str, UnmaskRequest]:
        """Gather the survivors' signatures of U3 and forward them all with each unmask request."""
        self._begin("consistency")
        got = self._accept(replies, ConsistencySignature, self.u3, "consistency")
        self.u4 = set(got)
        self.survivor_signatures = {u: got[u].signature for u in sorted(got)}
        dropped = self.u2 - self.u3
        needs_key = {v for v in dropped if self.graph[v] & self.u3}
        self._check_neighbourhoods(self.u4, self.u3 | needs_key, "consistency")
        if len(self.u4) < majority(self.n):
            raise SecAggAbort(
                f"secure aggregation aborted at stage 'consistency': {len(self.u4)} of {self.n} clients signed the "
                f"survivor set; clients reveal shares only after a strict majority ({majority(self.n)}) did"
            )
        out = {}
        for u in sorted(self.u4):
            peers = self.graph[u] & self.u2
            out[u] = UnmaskRequest(tuple(sorted((peers & self.u3) | {u})), tuple(sorted(peers & dropped)),
                                   self.survivor_signatures)
        self.stage = "unmask"
        return out

    # ------------------------------------------------------------------ stage 4
    def collect_unmask(self, replies: Iterable[UnmaskReply]) -> SecAggResult:
        """Reconstruct the masks, remove them, check the sum's range and return the dequantised sum."""
        self._begin("unmask")
        got = self._accept(replies, UnmaskReply, self.u4, "unmask")
        self.u5 = set(got)
        b_shares: dict[str, dict[int, int]] = {u: {} for u in self.u3}
        s_shares: dict[str, dict[int, int]] = {v: {} for v in self.u2 - self.u3}
        for w, r in got.items():
            overlap = set(r.b_shares) & set(r.s_shares)
            if overlap:
                raise ProtocolViolation(f"server: {w} revealed both shares of {sorted(overlap)}")
            for owner, enc, store in [(o, e, b_shares) for o, e in r.b_shares.items()] + [
                (o, e, s_shares) for o, e in r.s_shares.items()
            ]:
                if owner not in store or (owner != w and owner not in self.graph[w]):
                    raise ProtocolViolation(f"server: {w} revealed an unexpected share of {owner!r}")
                try:
                    x, y = shamir.decode_share(enc)
                except ValueError as exc:
                    raise ProtocolViolation(f"server: share of {owner} from {w}: {exc}") from None
                if x != self.slots[w]:
                    raise ProtocolViolation(f"server: share of {owner} from {w} has x={x}, expected {self.slots[w]}")
                store[owner][x] = y
        keys: list[bytes] = []
        signs: list[int] = []
        for u in sorted(self.u3):
            b_seed = self._reconstruct(b_shares[u], u, "self-mask seed")
            if self.protections.share_check and self_mask_commitment(self.round_id, u, b_seed) != self.b_commits[u]:
                raise SecAggAbort(
                    f"secure aggregation aborted: the self-mask seed of {u} rebuilt from the shares of "
                    f"{sorted(b_shares[u])} (slots) does not match {u}'s signed commitment: a share was corrupted"
                )
            keys.append(b_seed)
            signs.append(-1)
        for v in sorted(s_shares):
            partners = self.graph[v] & self.u3
            if not partners:
                continue
            sk = self._reconstruct(s_shares[v], v, "masking key")
            pair = KeyPair.from_private_bytes(sk)
            if pair.public_bytes != self.s_publics[v]:
                raise SecAggAbort(
                    f"secure aggregation aborted: the masking key of {v} rebuilt from shares does not "
                    "match its advertised public key (corrupted shares)"
                )
            for u in sorted(partners):
                keys.append(agree(pair.private, self.s_publics[u], salt=self.round_id, info=INFO_MASK))
                # u added +PRG if slot(u) < slot(v): remove it
                signs.append(-1 if self.slots[u] < self.slots[v] else 1)
        # sum the uploads and remove the masks chunk by chunk, in one cache-friendly pass
        uploads = [self.masked_uploads[u] for u in sorted(self.u3)]
        total = np.empty(self.vector_length or 0, dtype=np.uint32)

        def add_uploads(start: int, stop: int, chunk: np.ndarray) -> None:
            np.copyto(chunk, uploads[0][start:stop])
            for y in uploads[1:]:
                np.add(chunk, y[start:stop], out=chunk)

        apply_masks(total, keys, signs, fill=add_uploads)
        if self.config.modulus_bits < 32:
            np.bitwise_and(total, np.uint32((1 << self.config.modulus_bits) - 1), out=total)
        survivors = sorted(self.u3)
        if self.protections.range_check and total.size:
            bound = self.config.sum_bound(len(survivors), self.n)
            worst = int(total.argmax())
            if int(total[worst]) > bound:
                raise SecAggAbort(
                    f"secure aggregation aborted: the unmasked sum leaves its range at coordinate {worst} "
                    f"({int(total[worst])} > n_s (2^k - 1) = {bound} for {len(survivors)} survivors): a client "
                    "uploaded values outside [0, 2^k - 1] (e.g. added 2^31 to wrap the ring); the round is discarded"
                )
        value = dequantize_sum(total, len(survivors), self.config.clip, self.quant_bits)
        self.stage = "done"
        return SecAggResult(
            total=value,
            survivors=survivors,
            masked_uploads=dict(self.masked_uploads),
            upload_bytes=dict(self.upload_bytes),
            quant_bits=self.quant_bits,
            error_bound=self.config.error_bound(self.n),
            dropped={
                "advertise": sorted(set(self.client_ids) - self.u1),
                "share": sorted(self.u1 - self.u2),
                "masked_input": sorted(self.u2 - self.u3),
                "consistency": sorted(self.u3 - self.u4),
                "unmask": sorted(self.u4 - self.u5),
            },
        )

    def _reconstruct(self, shares: dict[int, int], owner: str, what: str) -> bytes:
        if len(shares) < self.threshold:
            raise SecAggAbort(
                f"secure aggregation aborted at stage 'unmask': only {len(shares)} shares of the {what} "
                f"of {owner} arrived, fewer than the threshold t={self.threshold}"
            )
        try:
            return shamir.combine(shares.items(), self.threshold, KEY_BYTES, check_all=self.protections.share_check)
        except ValueError as exc:
            raise SecAggAbort(f"secure aggregation aborted: {what} of {owner}: {exc}") from None
