"""SecAgg / SecAgg+ protocol: correctness, dropouts, threshold, refusal, tampering, SecAgg+."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedi2i.errors import ConfigError, SecAggAbort, UpdateRejected
from fedi2i.fl.secagg import (
    InconsistentView,
    Protections,
    ProtocolViolation,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    ShareAuthenticationError,
    directory_of,
    generate_identities,
    secure_sum,
)
from fedi2i.fl.secagg.messages import MaskedInputRequest, UnmaskRequest

L = 1000


def make_vectors(n: int, length: int = L, seed: int = 0, scale: float = 0.3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"c{i:02d}": rng.uniform(-scale, scale, length) for i in range(n)}


def plain_sum(vectors, ids):
    return np.sum([vectors[c] for c in ids], axis=0)


def assert_close_sum(result, vectors, cfg, n):
    err = np.abs(result.total - plain_sum(vectors, result.survivors)).max()
    assert err <= cfg.error_bound(n), (err, cfg.error_bound(n))


class Round:
    """Drives one round by hand so tests can intercept messages."""

    def __init__(self, vectors, cfg, seed=0, protections=Protections()):
        self.ids = sorted(vectors)
        self.server = SecAggServer(cfg, self.ids, seed, vector_length=L, protections=protections)
        self.identities = generate_identities(self.ids)
        directory = directory_of(self.identities)
        self.clients = {c: SecAggClient(cfg, c, vectors[c], identity=self.identities[c], directory=directory,
                                        rounding_seed=seed, protections=protections) for c in self.ids}

    def to_share(self):
        setup = self.server.setup_request()
        req = self.server.collect_advertise([self.clients[c].advertise_keys(setup) for c in self.ids])
        return req

    def to_masked(self):
        req = self.to_share()
        return self.server.collect_shares([self.clients[c].share_keys(r) for c, r in req.items()])

    def to_check(self):
        req = self.to_masked()
        return self.server.collect_masked_inputs([self.clients[c].masked_input(r) for c, r in req.items()])

    def to_unmask(self):
        req = self.to_check()
        return self.server.collect_consistency([self.clients[c].consistency(r) for c, r in req.items()])


# ----------------------------------------------------------------------------- correctness
def test_sum_within_documented_bound_and_shape_kept():
    vectors = {k: v.reshape(10, 100) for k, v in make_vectors(6).items()}
    cfg = SecAggConfig()
    res = secure_sum(vectors, cfg, seed=1)
    assert res.total.shape == (10, 100) and res.total.dtype == np.float64
    assert res.survivors == sorted(vectors)
    err = np.abs(res.total - plain_sum(vectors, res.survivors)).max()
    assert err <= cfg.error_bound(6)
    assert res.error_bound == cfg.error_bound(6) and res.quant_bits == 28
    assert set(res.masked_uploads) == set(vectors)
    assert all(m.dtype == np.uint32 and m.shape == (L,) for m in res.masked_uploads.values())


def test_upload_is_four_bytes_per_parameter():
    vectors = make_vectors(5, length=20_000)
    res = secure_sum(vectors, SecAggConfig(), seed=0)
    for cid, nbytes in res.upload_bytes.items():
        assert 4 * 20_000 < nbytes < 4 * 20_000 + 2_000, (cid, nbytes)


def test_coarse_quantisation_and_small_ring():
    vectors = make_vectors(5, seed=3)
    cfg = SecAggConfig(modulus_bits=16, clip=0.5)
    res = secure_sum(vectors, cfg, seed=0)
    assert all(m.max() < 2**16 for m in res.masked_uploads.values())
    assert_close_sum(res, vectors, cfg, 5)


def test_same_seed_same_result_fresh_masks():
    vectors = make_vectors(5)
    cfg = SecAggConfig(quant_bits=10)  # coarse, so rounding differences would show
    drops = {"masked_input": ["c01"]}
    a = secure_sum(vectors, cfg, seed=7, dropouts=drops)
    b = secure_sum(vectors, cfg, seed=7, dropouts=drops)
    c = secure_sum(vectors, cfg, seed=8, dropouts=drops)
    assert np.array_equal(a.total, b.total) and a.survivors == b.survivors
    assert not np.array_equal(a.total, c.total)  # other rounding draws
    assert_close_sum(c, vectors, cfg, 5)
    # keys are fresh: the server sees different masked uploads each time
    assert not np.array_equal(a.masked_uploads["c00"], b.masked_uploads["c00"])


# ----------------------------------------------------------------------------- dropouts
@pytest.mark.parametrize("stage", ["advertise", "share", "masked_input", "consistency", "unmask"])
def test_dropouts_at_each_stage_up_to_n_minus_t(stage):
    n = 8
    cfg = SecAggConfig()
    t = cfg.round_threshold(n)
    assert t == 5
    vectors = make_vectors(n, seed=4)
    drop = ["c01", "c04", "c06"][: n - t]
    res = secure_sum(vectors, cfg, seed=2, dropouts={stage: drop})
    in_sum = set(vectors) if stage in ("consistency", "unmask") else set(vectors) - set(drop)
    assert set(res.survivors) == in_sum
    assert_close_sum(res, vectors, cfg, n)
    assert res.dropped[stage] == sorted(drop)


def test_dropouts_spread_over_all_stages():
    n = 12
    cfg = SecAggConfig()  # t = 7, so 5 may drop
    vectors = make_vectors(n, seed=5)
    drops = {"advertise": ["c00"], "share": ["c03"], "masked_input": ["c05", "c07"], "unmask": ["c02"]}
    res = secure_sum(vectors, cfg, seed=3, dropouts=drops)
    assert res.survivors == ["c01", "c02", "c04", "c06", "c08", "c09", "c10", "c11"]
    assert_close_sum(res, vectors, cfg, n)
    # the dropped masked_input clients' keys were rebuilt; the unmask dropper's input is in the sum
    assert "c02" in res.survivors and "c05" not in res.masked_uploads


@pytest.mark.parametrize("stage", ["advertise", "share", "masked_input", "consistency", "unmask"])
def test_fewer_than_threshold_aborts(stage):
    n = 8
    vectors = make_vectors(n)
    drop = ["c00", "c02", "c04", "c06"]  # 4 left < t = 5
    with pytest.raises(SecAggAbort, match="threshold"):
        secure_sum(vectors, SecAggConfig(), seed=0, dropouts={stage: drop})


def test_abort_when_all_drop_and_bad_driver_arguments():
    vectors = make_vectors(3)
    with pytest.raises(SecAggAbort):
        secure_sum(vectors, SecAggConfig(), seed=0, dropouts={"advertise": list(vectors)})
    with pytest.raises(ConfigError, match="unknown SecAgg stage"):
        secure_sum(vectors, SecAggConfig(), seed=0, dropouts={"train": ["c00"]})
    with pytest.raises(ConfigError, match="unknown clients"):
        secure_sum(vectors, SecAggConfig(), seed=0, dropouts={"share": ["zz"]})
    with pytest.raises(ConfigError, match="same shape"):
        secure_sum({"a": np.zeros(3), "b": np.zeros(4)}, SecAggConfig(), seed=0)


# ----------------------------------------------------------------------------- clip / ring limit
def test_clip_limit_and_ring_limit_no_wraparound():
    # m = 9, k = 4: the largest n with n (2^k - 1) < 2^(m-1) is 17
    cfg = SecAggConfig(modulus_bits=9, quant_bits=4, clip=1.0)
    assert cfg.max_quant_bits(17) == 4 and cfg.max_quant_bits(18) == 3
    n = 17
    top = {f"c{i:02d}": np.full(L, 1.0) for i in range(n)}
    res = secure_sum(top, cfg, seed=0)  # every level at 2^k - 1: sum 255 < 256
    np.testing.assert_allclose(res.total, n * 1.0, atol=1e-9)
    beyond = {f"c{i:02d}": np.full(L, 5.0 if i % 2 else -7.0) for i in range(n)}
    res = secure_sum(beyond, cfg, seed=0)  # clipped to +-c, exact at the clip points
    np.testing.assert_allclose(res.total, 8 * 1.0 - 9 * 1.0, atol=1e-9)
    with pytest.raises(ConfigError, match="overflows"):
        secure_sum({f"c{i:02d}": np.zeros(L) for i in range(18)}, cfg, seed=0)


def test_default_ring_at_maximum_clients_for_k():
    cfg = SecAggConfig(quant_bits=27)  # 16 (2^27 - 1) < 2^31
    vectors = {f"c{i:02d}": np.full(200, 1.0) for i in range(16)}
    res = secure_sum(vectors, cfg, seed=0)
    np.testing.assert_allclose(res.total, 16.0, atol=1e-9)
    vectors = {f"c{i:02d}": np.full(200, -1.0) for i in range(16)}
    np.testing.assert_allclose(secure_sum(vectors, cfg, seed=0).total, -16.0, atol=1e-9)


# ----------------------------------------------------------------------------- tampering / refusal
def test_tampered_encrypted_share_fails_authentication():
    rnd = Round(make_vectors(5), SecAggConfig())
    req = rnd.to_masked()
    victim = "c02"
    sender, blob = next(iter(req[victim].ciphertexts.items()))
    bad = bytearray(blob)
    bad[-1] ^= 0x01
    forged = MaskedInputRequest({**req[victim].ciphertexts, sender: bytes(bad)})
    with pytest.raises(ShareAuthenticationError, match=f"share from {sender} to {victim}"):
        rnd.clients[victim].masked_input(forged)
    assert rnd.clients[victim].stage == "aborted"  # it uploads nothing in this round
    with pytest.raises(ProtocolViolation):
        rnd.clients[victim].masked_input(req[victim])
    # a ciphertext moved to another recipient fails too (associated data binds the receiver)
    other = next(c for c in req if c not in (victim, sender))
    moved = MaskedInputRequest({**req[other].ciphertexts, sender: blob})
    with pytest.raises(ShareAuthenticationError):
        rnd.clients[other].masked_input(moved)


# Without the consistency round the client still checks each unmask request on its own:
UNCHECKED = Protections(consistency_round=False)


def _unmask_requests_without_consistency(rnd):
    """The unmask requests an honest server would send, taken straight after the masked inputs."""
    rnd.to_check()
    return {u: UnmaskRequest(tuple(sorted((rnd.server.graph[u] & rnd.server.u3) | {u})), ()) for u in rnd.server.u3}


def test_client_refuses_to_reveal_both_shares_of_a_peer():
    rnd = Round(make_vectors(6), SecAggConfig(), protections=UNCHECKED)
    req = _unmask_requests_without_consistency(rnd)
    client = rnd.clients["c00"]
    honest = req["c00"]
    greedy = UnmaskRequest(honest.survivors, ("c03",))  # c03 also listed as survivor
    assert "c03" in honest.survivors
    with pytest.raises(ProtocolViolation, match="both"):
        client.unmask(greedy)
    assert client.revealed_b == set() and client.revealed_s == set()
    # after a refusal the client answers nothing more in this round
    with pytest.raises(ProtocolViolation):
        client.unmask(honest)


def test_client_refuses_second_unmask_and_being_called_dropped():
    rnd = Round(make_vectors(6), SecAggConfig(), protections=UNCHECKED)
    req = _unmask_requests_without_consistency(rnd)
    c1 = rnd.clients["c01"]
    reply = c1.unmask(req["c01"])
    assert set(reply.b_shares) == set(req["c01"].survivors) and not reply.s_shares
    assert not (c1.revealed_b & c1.revealed_s)
    # a second request that would now ask for the key share of a survivor is refused
    survivors = tuple(s for s in req["c01"].survivors if s != "c02")
    with pytest.raises(ProtocolViolation, match="expecting 'done'"):
        c1.unmask(UnmaskRequest(survivors, ("c02",)))
    c3 = rnd.clients["c03"]
    with pytest.raises(ProtocolViolation, match="dropped"):
        c3.unmask(UnmaskRequest(tuple(s for s in req["c03"].survivors if s != "c03"), ("c03",)))


def test_honest_run_never_reveals_both_and_server_rejects_both():
    vectors = make_vectors(8)
    rnd = Round(vectors, SecAggConfig())
    setup = rnd.server.setup_request()
    r = rnd.server.collect_advertise([rnd.clients[c].advertise_keys(setup) for c in rnd.ids])
    r = rnd.server.collect_shares([rnd.clients[c].share_keys(x) for c, x in r.items()])
    r = rnd.server.collect_masked_inputs([rnd.clients[c].masked_input(x) for c, x in r.items() if c != "c05"])
    r = rnd.server.collect_consistency([rnd.clients[c].consistency(x) for c, x in r.items()])
    replies = [rnd.clients[c].unmask(x) for c, x in r.items()]
    for c in r:
        cl = rnd.clients[c]
        assert not (cl.revealed_b & cl.revealed_s)
        assert "c05" in cl.revealed_s
    # a reply that carries both shares of one peer is rejected by the server
    first = replies[0]
    both = dataclasses.replace(first, s_shares={**first.s_shares, "c03": first.b_shares["c03"]})
    with pytest.raises(ProtocolViolation, match="both"):
        rnd.server.collect_unmask([both] + replies[1:])


def test_out_of_order_and_foreign_requests_are_refused():
    rnd = Round(make_vectors(4), SecAggConfig())
    req = rnd.to_share()
    client = rnd.clients["c00"]
    with pytest.raises(ProtocolViolation, match="expecting 'share'"):
        client.advertise_keys(rnd.server.setup_request())
    rnd2 = Round(make_vectors(4), SecAggConfig())
    with pytest.raises(ProtocolViolation):
        rnd2.clients["c00"].masked_input(MaskedInputRequest({}))
    with pytest.raises(ProtocolViolation, match="unexpected"):
        rnd.server.collect_shares([rnd.clients["c00"].share_keys(req["c00"]), _fake_reply("zz")])


def _fake_reply(cid):
    from fedi2i.fl.secagg.messages import ShareKeysReply

    return ShareKeysReply(cid, {})


def test_client_refuses_weaker_setup_than_its_policy():
    vectors = make_vectors(6)
    key = generate_identities(["c00"])["c00"]

    def client(cfg=SecAggConfig()):
        return SecAggClient(cfg, "c00", vectors["c00"], identity=key)

    setup = SecAggServer(SecAggConfig(), sorted(vectors), 0).setup_request()
    with pytest.raises(ProtocolViolation, match="threshold 3 below the required 4"):
        client().advertise_keys(dataclasses.replace(setup, threshold=3))  # 3 of 6 is no strict majority
    setup = SecAggServer(SecAggConfig(neighbours=2), sorted(vectors), 0).setup_request()
    with pytest.raises(ProtocolViolation, match="degree"):
        client(SecAggConfig(neighbours=4)).advertise_keys(setup)
    setup = SecAggServer(SecAggConfig(clip=2.0), sorted(vectors), 0).setup_request()
    with pytest.raises(ProtocolViolation, match="clip"):
        client().advertise_keys(setup)
    with pytest.raises(ProtocolViolation, match="no identity key"):
        SecAggClient(SecAggConfig(), "c00").advertise_keys(SecAggServer(SecAggConfig(), ["c00"]).setup_request())


# ----------------------------------------------------------------------------- SecAgg+
def test_secagg_plus_neighbourhoods_correct_sum_with_dropouts():
    n = 20
    cfg = SecAggConfig(neighbours=6)
    vectors = make_vectors(n, seed=9)
    server = SecAggServer(cfg, sorted(vectors), seed=11)
    assert server.degree == 6 and server.threshold == 4
    graph = server.graph
    # drop clients whose neighbourhoods do not overlap too much: each keeps >= t alive
    drops = {"share": ["c03"], "masked_input": ["c10"], "unmask": ["c17"]}
    res = secure_sum(vectors, cfg, seed=11, dropouts=drops)
    assert set(res.survivors) == set(vectors) - {"c03", "c10"}
    assert_close_sum(res, vectors, cfg, n)
    assert all(len(p) == 6 for p in graph.values())
    # each client shares with 6 peers only: key/share traffic independent of n
    full = secure_sum(vectors, SecAggConfig(), seed=11)
    plus = secure_sum(vectors, cfg, seed=11)
    assert max(plus.upload_bytes.values()) < max(full.upload_bytes.values())
    assert_close_sum(plus, vectors, cfg, n)


def test_secagg_plus_client_rejects_a_non_neighbour():
    vectors = make_vectors(12)
    rnd = Round(vectors, SecAggConfig(neighbours=4))
    req = rnd.to_masked()
    u = "c00"
    # client and server derived the same graph from the round's keys
    assert rnd.clients[u]._group == rnd.server.graph[u] | {u}
    stranger = next(c for c in rnd.ids if c != u and c not in rnd.server.graph[u])
    blob = next(iter(req[stranger].ciphertexts.values()))
    with pytest.raises(ProtocolViolation, match="not a neighbour"):
        rnd.clients[u].masked_input(MaskedInputRequest({**req[u].ciphertexts, stranger: blob}))


def test_secagg_plus_local_threshold_aborts():
    rnd = Round(make_vectors(12), SecAggConfig(neighbours=4))  # neighbourhood of 5, t = 3
    req = rnd.to_masked()
    u = "c00"
    peers = sorted(rnd.server.graph[u])[:3]  # u keeps 1 of 4 peers: 2 < t alive around it
    replies = [rnd.clients[c].masked_input(r) for c, r in req.items() if c not in peers]
    with pytest.raises(SecAggAbort, match="neighbourhood"):
        rnd.server.collect_masked_inputs(replies)


def test_nan_input_is_rejected_before_upload():
    vectors = make_vectors(4)
    vectors["c01"] = vectors["c01"].copy()
    vectors["c01"][500] = np.nan
    with pytest.raises(UpdateRejected, match="NaN"):
        secure_sum(vectors, SecAggConfig(), seed=0)
