"""Is the defence implemented right? The aggregation server attacks fedi2i's own SecAgg and DP code.

The other audit cells measure what a defence buys (e.g. membership AUC with SecAgg on); they take the
defence's idea for granted. Here an actively malicious server (and, for the last two rows, a malicious
client) plays each known attack against the real protocol objects (:class:`SecAggClient`,
:class:`SecAggServer`, the weighting and DP-noise functions), on small random vectors:

========================  ================================================  ==================================
attack                    what the server does                              what stops it
========================  ================================================  ==================================
server-chosen weights     weight 1 for the victim, 1e-7 for the others      each client weights itself
DP noise replay           regenerates the noise from (seed, round, centre)  noise from the OS CSPRNG
dropped-client lie        t below a majority; "u survived" to some,         clients refuse t below a strict
                          "u dropped" to others                             majority
inconsistent views        victim gets t-1 ciphertexts; different            consistency round: survivors sign
                          survivor lists per client                         U3, mismatch aborts
graph-seed grinding       tries seeds until colluders surround the victim   graph seed from all clients' keys
wrapped upload            a client adds 2^31 to its masked upload           range check of the unmasked sum
corrupted share           one of exactly t shares altered                   self-mask commitment, all shares
                                                                            checked
========================  ================================================  ==================================

Each function takes ``protected``: ``False`` switches the matching protection off (through
:class:`~fedi2i.fl.secagg.Protections`, ``reproducible_secrets``, or, for the weights, the scaling a node
did before: by the weight the server sent), which shows the attack works; ``True`` is the code as it
runs. :func:`run_defence_checks` runs every attack as configured; the audit report renders the rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fedi2i.audit import html as H
from fedi2i.config import Config
from fedi2i.errors import SecAggAbort
from fedi2i.fl.client import clip_and_noise, dp_noise_generator
from fedi2i.fl.secagg import (
    Protections,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    directory_of,
    generate_identities,
    secure_sum,
)
from fedi2i.fl.secagg import shamir
from fedi2i.fl.secagg.client import share_aad, unpack_share_plaintext
from fedi2i.fl.secagg.crypto import INFO_MASK, INFO_SHARE, KEY_BYTES, KeyPair, agree, apply_masks, decrypt
from fedi2i.fl.secagg.graph import neighbours_of
from fedi2i.fl.secagg.messages import ConsistencyRequest, MaskedInputRequest, UnmaskRequest
from fedi2i.fl.secagg.quantize import dequantize_sum
from fedi2i.fl.secagg.server import graph_seed_from
from fedi2i.fl.secagg.weighting import secure_mean, weighted_input

RECOVERED = 0.05
"""A reconstruction whose relative error is below this is the victim's update: the attack worked."""


@dataclass(frozen=True)
class DefenceCheck:
    """One attack against the real defence code.

    Attributes:
        attack: what the adversary tried.
        protection: what is meant to stop it.
        blocked: whether the attacker failed to learn (or to corrupt) what it was after.
        evidence: the error raised, or what the attacker got.
        error: relative error of the attacker's reconstruction of the victim's input (``None`` when it
            got nothing to reconstruct from); below :data:`RECOVERED` the victim was exposed.
    """

    attack: str
    protection: str
    blocked: bool
    evidence: str
    error: float | None = None


def _relative(estimate: np.ndarray, truth: np.ndarray) -> float:
    return float(np.abs(np.asarray(estimate) - truth).max() / max(np.abs(truth).max(), 1e-12))


@dataclass
class _Round:
    """Real clients and a real server for one round; the attacking server drives them by hand."""

    ids: list[str]
    vectors: dict[str, np.ndarray]
    server: SecAggServer
    clients: dict[str, SecAggClient]

    @classmethod
    def make(cls, n: int, cfg: SecAggConfig, protections: Protections, length: int = 64, seed: int = 0,
             server_seed: int | None = None) -> _Round:
        ids = [f"c{i:02d}" for i in range(n)]
        rng = np.random.default_rng(seed)
        vectors = {c: rng.uniform(-0.5, 0.5, length) for c in ids}
        identities = generate_identities(ids)
        directory = directory_of(identities)
        server = SecAggServer(cfg, ids, server_seed, vector_length=length, protections=protections)
        clients = {c: SecAggClient(cfg, c, vectors[c], identity=identities[c], directory=directory,
                                   protections=protections) for c in ids}
        return cls(ids, vectors, server, clients)

    def to_masked(self) -> dict[str, MaskedInputRequest]:
        setup = self.server.setup_request()
        req = self.server.collect_advertise([self.clients[c].advertise_keys(setup) for c in self.ids])
        return self.server.collect_shares([self.clients[c].share_keys(r) for c, r in req.items()])

    def strip(self, victim: str, b_seed: bytes, pair_keys: dict[str, bytes]) -> np.ndarray:
        """The victim's quantised input with its self mask and the given pairwise masks removed."""
        s = self.server
        out = s.masked_uploads[victim].copy()
        signs = [-1] + [-1 if s.slots[victim] < s.slots[v] else 1 for v in pair_keys]
        apply_masks(out, [b_seed, *pair_keys.values()], signs)
        if s.config.modulus_bits < 32:
            np.bitwise_and(out, np.uint32((1 << s.config.modulus_bits) - 1), out=out)
        return dequantize_sum(out, 1, s.config.clip, s.quant_bits)


def _shares(replies: list, owner: str, kind: str, slots: dict[str, int]) -> dict[int, int]:
    found = {}
    for r in replies:
        enc = getattr(r, kind).get(owner)
        if enc is not None:
            x, y = shamir.decode_share(enc)
            found[x] = y
    return found


def _pair_key_from(private: bytes, peer_public: bytes, round_id: bytes) -> bytes:
    return agree(KeyPair.from_private_bytes(private).private, peer_public, salt=round_id, info=INFO_MASK)


# ---------------------------------------------------------------------------- 1. weights
def server_chosen_weights(protected: bool = True, n: int = 5) -> DefenceCheck:
    """The server asks for weight 1 from the victim and 1e-7 from everyone else, then reads the "mean"."""
    cfg = SecAggConfig()
    rng = np.random.default_rng(1)
    ids = [f"c{i:02d}" for i in range(n)]
    deltas = {c: rng.uniform(-0.5, 0.5, 64).astype(np.float32) for c in ids}
    counts = {c: int(rng.integers(50, 500)) for c in ids}
    victim = ids[2]
    chosen = {c: 1.0 if c == victim else 1e-7 for c in ids}
    if protected:  # the nodes ignore any weight from the server and scale by their own count
        inputs = {c: weighted_input(deltas[c], counts[c], cfg) for c in ids}
        estimate = secure_mean(secure_sum(inputs, cfg).total, cfg).numpy()
    else:  # the node multiplied its update by the weight the server sent
        estimate = secure_sum({c: deltas[c] * chosen[c] for c in ids}, cfg).total
    err = _relative(estimate, deltas[victim])
    blocked = err > RECOVERED
    what = "the weighted mean of all clients" if protected else f"{victim}'s update"
    return DefenceCheck("server-chosen weights", "each client scales by its own example count", blocked,
                        f"the unmasked result is {what} (relative error to {victim}'s update {err:.2g})", err)


# ---------------------------------------------------------------------------- 2. DP noise
def dp_noise_replay(protected: bool = True, seed: int = 0, round_index: int = 3, centre: str = "B") -> DefenceCheck:
    """The server knows the run seed, the round and the centre, regenerates the DP noise and subtracts it."""
    update = torch.from_numpy(np.random.default_rng(2).uniform(-0.01, 0.01, 2000).astype(np.float32))
    clip, sigma = 1.0, 1.0
    sent = clip_and_noise(update, clip, sigma, dp_noise_generator(not protected, seed, round_index, centre))
    replayed = clip_and_noise(torch.zeros_like(update), clip, sigma, dp_noise_generator(True, seed, round_index, centre))
    clipped = update * min(1.0, clip / (float(update.norm()) + 1e-12))
    err = _relative((sent - replayed).numpy(), clipped.numpy())
    blocked = err > RECOVERED
    return DefenceCheck("DP noise replay", "DP noise and rounding dither from the OS CSPRNG", blocked,
                        "the noise was " + ("not reproducible from (seed, round, centre)" if blocked else
                                            "replayed and subtracted: the clipped update is exposed")
                        + f" (relative error {err:.2g})", err)


# ---------------------------------------------------------------------------- 3. dropped-client lie
def dropped_client_lie(protected: bool = True, n: int = 6) -> DefenceCheck:
    """With t = 2 of 6, the server tells two clients the victim survived and two that it dropped."""
    low = SecAggConfig().model_copy(update={"threshold": 0.2})  # a policy the config would refuse
    protections = Protections(consistency_round=False, majority_threshold=protected)
    rnd = _Round.make(n, low, protections)
    victim = rnd.ids[0]
    try:
        req = rnd.to_masked()
    except SecAggAbort as exc:
        return DefenceCheck("dropped-client lie", "threshold at least a strict majority", True, str(exc))
    rnd.server.collect_masked_inputs([rnd.clients[c].masked_input(r) for c, r in req.items()])
    alive, liars = rnd.ids[1:3], rnd.ids[3:5]
    replies = []
    for c in rnd.ids:
        if c in liars:
            replies.append(rnd.clients[c].unmask(UnmaskRequest(tuple(x for x in rnd.ids if x != victim), (victim,))))
        else:
            replies.append(rnd.clients[c].unmask(UnmaskRequest(tuple(rnd.ids), ())))
    t = rnd.server.threshold
    b_seed = shamir.combine(_shares(replies, victim, "b_shares", rnd.server.slots).items(), t, KEY_BYTES)
    s_key = shamir.combine(_shares(replies, victim, "s_shares", rnd.server.slots).items(), t, KEY_BYTES)
    rid = rnd.server.round_id
    pairs = {v: _pair_key_from(s_key, rnd.server.s_publics[v], rid) for v in rnd.ids if v != victim}
    err = _relative(rnd.strip(victim, b_seed, pairs), rnd.vectors[victim])
    return DefenceCheck("dropped-client lie", "threshold at least a strict majority", err > RECOVERED,
                        f"t={t}: {alive} revealed {victim}'s self-mask shares, {liars} its key shares; "
                        f"{victim}'s input rebuilt (relative error {err:.2g})", err)


# ---------------------------------------------------------------------------- 4. inconsistent views
def _assign_dropped(ids: list[str], victim: str, hidden: list[str], t: int, room: int) -> dict[str, set[str]]:
    """For each client, which of ``hidden`` the server claims dropped: every hidden peer in ``t`` lists, at
    most ``room`` per list, never a client itself (so each list still passes the client's own checks)."""
    lists: dict[str, set[str]] = {c: set() for c in ids if c != victim}
    for v in hidden:
        chosen = sorted((c for c in lists if c != v and len(lists[c]) < room), key=lambda c: (len(lists[c]), c))[:t]
        if len(chosen) < t:
            raise ValueError("no assignment of dropped lists for this size")
        for c in chosen:
            lists[c].add(v)
    return lists


def inconsistent_views(protected: bool = True, n: int = 10) -> DefenceCheck:
    """Selective forwarding plus different survivor lists (Bonawitz et al. 2017, section 6).

    The victim receives only ``t - 1`` ciphertexts, so it masks with those ``t - 1`` peers alone. The server
    then tells the victim they all survived, while it tells enough other clients that each of them dropped:
    it collects the victim's self-mask seed and those peers' masking keys, i.e. every mask on the victim's
    upload. With the consistency round every survivor signs the survivor set it was shown, so the clients
    see signatures on other sets and abort before revealing any share.
    """
    rnd = _Round.make(n, SecAggConfig(), Protections(consistency_round=protected))
    victim = rnd.ids[0]
    req = rnd.to_masked()
    t = rnd.server.threshold
    hidden = sorted(req[victim].ciphertexts)[: t - 1]
    req[victim] = MaskedInputRequest({v: req[victim].ciphertexts[v] for v in hidden})
    rnd.server.collect_masked_inputs([rnd.clients[c].masked_input(r) for c, r in req.items()])
    dropped_for = _assign_dropped(rnd.ids, victim, hidden, t, room=n - t)
    dropped_for[victim] = set()
    everyone = set(rnd.ids)
    replies = []
    try:
        if protected:  # each client is shown its own survivor set, and gets every signature
            signatures = {c: rnd.clients[c].consistency(ConsistencyRequest(tuple(sorted(everyone - dropped_for[c]))))
                          .signature for c in rnd.ids}
        else:
            signatures = {}
        for c in rnd.ids:
            mine = {victim} | set(hidden) if c == victim else everyone
            replies.append(rnd.clients[c].unmask(UnmaskRequest(tuple(sorted(mine - dropped_for[c])),
                                                               tuple(sorted(dropped_for[c])), signatures)))
    except SecAggAbort as exc:
        return DefenceCheck("inconsistent views", "consistency round (signed survivor set)", True, str(exc))
    b_seed = shamir.combine(_shares(replies, victim, "b_shares", rnd.server.slots).items(), t, KEY_BYTES)
    rid = rnd.server.round_id
    pairs = {}
    for v in hidden:
        s_v = shamir.combine(_shares(replies, v, "s_shares", rnd.server.slots).items(), t, KEY_BYTES)
        pairs[v] = _pair_key_from(s_v, rnd.server.s_publics[victim], rid)
    err = _relative(rnd.strip(victim, b_seed, pairs), rnd.vectors[victim])
    return DefenceCheck("inconsistent views", "consistency round (signed survivor set)", err > RECOVERED,
                        f"n={n}, t={t}: {victim} masked with {len(hidden)} peers only; their keys and its "
                        f"self-mask seed were collected from different views (relative error {err:.2g})", err)


# ---------------------------------------------------------------------------- 5. graph seed
def graph_seed_grinding(protected: bool = True, n: int = 100, degree: int = 14, colluders: int = 15,
                        tries: int = 50_000) -> DefenceCheck:
    """The server tries graph seeds until the victim's SecAgg+ neighbourhood holds ``t`` colluders, who then
    hold ``t`` shares of both the victim's self-mask seed and its masking key."""
    cfg = SecAggConfig(neighbours=degree)
    ids = [f"c{i:02d}" for i in range(n)]
    victim, bad = ids[0], set(ids[n - colluders:])
    t = cfg.round_threshold(n)
    d = cfg.neighbourhood_degree(n)
    ground = next((i for i in range(tries) if len(neighbours_of(ids, d, graph_seed_from(i), victim) & bad) >= t), None)
    if ground is None:
        return DefenceCheck("graph-seed grinding", "graph seed from every client's keys", True,
                            f"no seed among {tries} gives {t} colluders around {victim}")
    rnd = _Round.make(n, cfg, Protections(client_graph_seed=protected), length=8, server_seed=ground)
    setup = rnd.server.setup_request()
    req = rnd.server.collect_advertise([rnd.clients[c].advertise_keys(setup) for c in ids])
    sent = rnd.clients[victim].share_keys(req[victim]).ciphertexts
    rid = rnd.server.round_id
    b_sh: dict[int, int] = {}
    s_sh: dict[int, int] = {}
    for w in sorted(bad & set(sent)):
        key = agree(rnd.clients[w]._c.private, rnd.server.c_publics[victim], salt=rid, info=INFO_SHARE)
        _, _, bsh, ssh = unpack_share_plaintext(decrypt(key, sent[w], share_aad(rid, victim, w)))
        for store, enc in ((b_sh, bsh), (s_sh, ssh)):
            x, y = shamir.decode_share(enc)
            store[x] = y
    held = len(b_sh)
    if held < t:
        return DefenceCheck("graph-seed grinding", "graph seed from every client's keys", True,
                            f"seed {ground} (found by grinding) was ignored: {held} of {victim}'s {degree} "
                            f"neighbours are colluders, fewer than t={t}", None)
    exposed = (shamir.combine(b_sh.items(), t, KEY_BYTES) == rnd.clients[victim]._b_seed
               and shamir.combine(s_sh.items(), t, KEY_BYTES) == rnd.clients[victim]._s.private_bytes)
    return DefenceCheck("graph-seed grinding", "graph seed from every client's keys", not exposed,
                        f"after {ground + 1} tries, {held} of {victim}'s {degree} neighbours are colluders "
                        f"(t={t}): they rebuilt its self-mask seed and masking key", 0.0 if exposed else None)


# ---------------------------------------------------------------------------- 6. wrapped upload
def wrapped_upload(protected: bool = True, n: int = 5) -> DefenceCheck:
    """A malicious client adds 2^31 to every value of its masked upload (invisible under the masks)."""
    rnd = _Round.make(n, SecAggConfig(), Protections(range_check=protected))
    req = rnd.to_masked()
    uploads = [rnd.clients[c].masked_input(r) for c, r in req.items()]
    uploads[1] = dataclasses.replace(uploads[1], masked=uploads[1].masked + np.uint32(1 << 31))
    try:
        req = rnd.server.collect_masked_inputs(uploads)
        req = rnd.server.collect_consistency([rnd.clients[c].consistency(r) for c, r in req.items()])
        result = rnd.server.collect_unmask([rnd.clients[c].unmask(r) for c, r in req.items()])
    except SecAggAbort as exc:
        return DefenceCheck("wrapped upload", "range check of the unmasked sum", True, str(exc))
    err = _relative(result.total, np.sum(list(rnd.vectors.values()), axis=0))
    return DefenceCheck("wrapped upload", "range check of the unmasked sum", False,
                        f"the corrupted sum was accepted (relative error {err:.2g})", err)


# ---------------------------------------------------------------------------- 7. corrupted share
def corrupted_share(protected: bool = True, n: int = 5) -> DefenceCheck:
    """Exactly ``t`` clients answer the unmask request and one of them alters a self-mask share."""
    # off: no share check and no range check either (a garbage sum would otherwise trip the range check)
    rnd = _Round.make(n, SecAggConfig(), Protections(share_check=protected, range_check=protected))
    req = rnd.to_masked()
    req = rnd.server.collect_masked_inputs([rnd.clients[c].masked_input(r) for c, r in req.items()])
    req = rnd.server.collect_consistency([rnd.clients[c].consistency(r) for c, r in req.items()])
    t = rnd.server.threshold
    replies = [rnd.clients[c].unmask(r) for c, r in list(req.items())[:t]]
    owner = rnd.ids[-1]
    x, y = shamir.decode_share(replies[0].b_shares[owner])
    bad = {**replies[0].b_shares, owner: shamir.encode_share((x, (y + 1) % shamir.PRIME))}
    replies[0] = dataclasses.replace(replies[0], b_shares=bad)
    try:
        result = rnd.server.collect_unmask(replies)
    except SecAggAbort as exc:
        return DefenceCheck("corrupted share", "self-mask commitment, every share checked", True, str(exc))
    err = _relative(result.total, np.sum(list(rnd.vectors.values()), axis=0))
    return DefenceCheck("corrupted share", "self-mask commitment, every share checked", False,
                        f"with exactly t={t} shares the corrupted sum was accepted (relative error {err:.2g})", err)


ATTACKS: tuple[Callable[..., DefenceCheck], ...] = (
    server_chosen_weights, dp_noise_replay, dropped_client_lie, inconsistent_views, graph_seed_grinding,
    wrapped_upload, corrupted_share)


def run_defence_checks(config: Config | None = None) -> list[DefenceCheck]:
    """Every attack against the code as it runs. A run marked ``reproducible_secrets`` replays its DP
    noise and dither, so that row reports the run's own setting."""
    reproducible = config is not None and config.reproducible_secrets
    rows = []
    for attack in ATTACKS:
        rows.append(attack(protected=not reproducible) if attack is dp_noise_replay else attack())
    return rows


def defence_section_html(config: Config) -> str:
    """The report section "Is the defence implemented right?" (one row per attack)."""
    rows = run_defence_checks(config)
    body = [(r.attack, r.protection, "blocked" if r.blocked else "NOT blocked", r.evidence) for r in rows]
    note = ""
    if config.reproducible_secrets:
        note = ("<p class='error'>This run used <code>reproducible_secrets</code>: its DP noise and rounding "
                "dither come from the run seed, which the server knows. Use it for tests and benchmarks only.</p>")
    return ("<h2>Is the defence implemented right?</h2><p>The aggregation server (and, for the last two rows, a "
            "client) plays each known attack against fedi2i's own SecAgg and DP code. \"blocked\" means the "
            "attacker learned nothing from it (or could not corrupt the sum unnoticed).</p>" + note
            + H.table(["attack", "protection", "result", "evidence"], body))
