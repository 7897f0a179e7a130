"""SecAgg building blocks: config arithmetic, quantisation, Shamir, crypto, graph, messages."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest

from fedi2i.errors import ConfigError, SecAggAbort, UpdateRejected
from fedi2i.fl.secagg import SecAggConfig, ShareAuthenticationError, message_from_dict, suggested_neighbours
from fedi2i.fl.secagg import crypto, messages, shamir
from fedi2i.fl.secagg.graph import neighbourhood_graph
from fedi2i.fl.secagg.quantize import dequantize_sum, quantize, quantize_and_mask

KEY = bytes(range(32))


# ----------------------------------------------------------------------------- config
def test_quant_bits_is_largest_without_overflow_with_a_bit_of_headroom():
    cfg = SecAggConfig()
    assert cfg.quant_bits_for(1) == 31
    assert cfg.quant_bits_for(16) == 27
    assert cfg.quant_bits_for(17) == 26
    for n in (1, 2, 3, 7, 16, 17, 100, 1000):
        k = cfg.quant_bits_for(n)
        assert n * ((1 << k) - 1) < 1 << 31  # a wrapped upload (+2^31) leaves the range of the sum
        assert n * ((1 << (k + 1)) - 1) >= 1 << 31
        assert cfg.sum_bound(n, n) == n * ((1 << k) - 1)


def test_explicit_quant_bits_that_overflow_are_rejected():
    cfg = SecAggConfig(quant_bits=27)
    assert cfg.quant_bits_for(16) == 27
    with pytest.raises(ConfigError, match="overflows"):
        cfg.quant_bits_for(17)
    with pytest.raises(pydantic.ValidationError):
        SecAggConfig(modulus_bits=16, quant_bits=20)
    with pytest.raises(pydantic.ValidationError):
        SecAggConfig(unknown_key=1)
    with pytest.raises(pydantic.ValidationError):
        SecAggConfig(modulus_bits=40)
    with pytest.raises(pydantic.ValidationError, match="greater than or equal to 0.5"):
        SecAggConfig(threshold=0.3)  # below a strict majority: the dropped-client lie would work
    with pytest.raises(pydantic.ValidationError, match="identity_keys.A"):
        SecAggConfig(identity_keys={"A": "00ff"})
    with pytest.raises(ConfigError):
        SecAggConfig(modulus_bits=4).max_quant_bits(16)


def test_error_bound_and_threshold_and_degree():
    cfg = SecAggConfig(clip=2.0)
    k = cfg.quant_bits_for(8)
    assert cfg.error_bound(8) == pytest.approx(8 * 4.0 / (2**k - 1))
    # strictly more than the fraction: a strict majority for 0.5
    assert [cfg.threshold_count(s) for s in (1, 2, 3, 4, 5, 8, 9)] == [1, 2, 2, 3, 3, 5, 5]
    assert SecAggConfig(threshold=1.0).threshold_count(7) == 7
    assert SecAggConfig().neighbourhood_degree(10) == 9
    assert SecAggConfig(neighbours=0).neighbourhood_degree(10) == 9
    assert SecAggConfig(neighbours=3).neighbourhood_degree(10) == 4
    assert SecAggConfig(neighbours=50).neighbourhood_degree(10) == 9
    assert suggested_neighbours(100) == 14


# ----------------------------------------------------------------------------- quantisation
def test_quantisation_error_below_one_step_and_unbiased():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 50_000)
    k, c = 8, 1.0
    step = 2 * c / (2**k - 1)
    q = quantize(x, c, k, KEY)
    assert q.dtype == np.uint32 and q.max() <= 2**k - 1
    back = dequantize_sum(q, 1, c, k)
    assert np.abs(back - x).max() < step
    # stochastic rounding is unbiased: the mean error is far below a step
    assert abs(np.mean(back - x)) < 0.02 * step
    # repeated rounding of one value averages to it
    v = np.full(20_000, 0.123456)
    assert dequantize_sum(quantize(v, c, k, KEY), 1, c, k).mean() == pytest.approx(0.123456, abs=step / 50)


def test_quantisation_clips_and_rejects_nan():
    x = np.array([-5.0, -1.0, 0.0, 1.0, 7.0, 1.0000001])
    q = quantize(x, 1.0, 10, KEY)
    assert q[0] == 0 and q[1] == 0 and q[3] == 1023 and q[4] == 1023 and q[5] == 1023
    np.testing.assert_allclose(dequantize_sum(q, 1, 1.0, 10)[[0, 4]], [-1.0, 1.0])
    with pytest.raises(UpdateRejected):
        quantize(np.array([0.0, np.nan]), 1.0, 10, KEY)
    with pytest.raises(UpdateRejected):
        quantize(np.array([np.inf]), 1.0, 10, KEY)


def test_quantisation_is_deterministic_per_key_and_float32_ok():
    x = np.random.default_rng(1).normal(size=10_000).astype(np.float32)
    a = quantize(x, 1.0, 20, KEY)
    assert np.array_equal(a, quantize(x, 1.0, 20, KEY))
    assert not np.array_equal(a, quantize(x, 1.0, 20, bytes(32)))


def test_quantize_and_mask_equals_quantize_plus_masks():
    x = np.random.default_rng(2).uniform(-1, 1, 100_003)  # not a multiple of the chunk size
    keys = [bytes([i]) * 32 for i in range(1, 4)]
    signs = [1, -1, 1]
    y = quantize_and_mask(x, 1.0, 16, KEY, keys, signs)
    expect = quantize(x, 1.0, 16, KEY) + crypto.prg(keys[0], x.size) - crypto.prg(keys[1], x.size) + crypto.prg(keys[2], x.size)
    assert np.array_equal(y, expect)
    y16 = quantize_and_mask(x, 1.0, 12, KEY, keys, signs, modulus_bits=16)
    assert y16.max() < 2**16


# ----------------------------------------------------------------------------- shamir
def test_shamir_any_t_shares_reconstruct_fewer_do_not():
    secret = bytes(range(100, 132))
    xs = [3, 5, 9, 10, 11, 40, 41]
    shares = shamir.split(secret, 4, xs)
    rng = np.random.default_rng(0)
    for _ in range(10):
        pick = [shares[i] for i in rng.choice(len(shares), 4, replace=False)]
        assert shamir.combine(pick, 4, 32) == secret
    with pytest.raises(ValueError, match="need 4 shares"):
        shamir.combine(shares[:3], 4, 32)
    # with t - 1 shares the interpolation at 0 is unrelated to the secret
    wrong = shamir._lagrange_at(shares[:3], 0)
    assert wrong != int.from_bytes(secret, "big")


def test_shamir_detects_a_corrupted_share_and_roundtrips_encoding():
    secret = bytes(32)
    shares = shamir.split(secret, 3, [1, 2, 3, 4])
    enc = [shamir.encode_share(s) for s in shares]
    assert all(len(e) == shamir.SHARE_BYTES for e in enc)
    assert [shamir.decode_share(e) for e in enc] == shares
    bad = list(shares)
    bad[1] = (bad[1][0], (bad[1][1] + 1) % shamir.PRIME)
    with pytest.raises(ValueError, match="inconsistent"):
        shamir.combine(bad, 3, 32)
    # every share beyond t is checked, not only the first extra one
    five = shamir.split(secret, 3, [1, 2, 3, 4, 5])
    late = five[:4] + [(5, (five[4][1] + 1) % shamir.PRIME)]
    with pytest.raises(ValueError, match="1 of 5"):
        shamir.combine(late, 3, 32)
    assert shamir.combine(late, 3, 32, check_all=False) == secret  # unchecked: the bad share is not used


# ----------------------------------------------------------------------------- crypto
def test_aes_gcm_roundtrip_and_tamper_detection():
    key = crypto.hkdf(b"material", salt=b"salt", info=b"info")
    blob = crypto.encrypt(key, b"secret share", b"aad")
    assert crypto.decrypt(key, blob, b"aad") == b"secret share"
    tampered = bytearray(blob)
    tampered[20] ^= 1
    with pytest.raises(ShareAuthenticationError, match="failed AES-GCM authentication"):
        crypto.decrypt(key, bytes(tampered), b"aad")
    with pytest.raises(ShareAuthenticationError):
        crypto.decrypt(key, blob, b"other aad")
    with pytest.raises(ShareAuthenticationError):
        crypto.decrypt(bytes(32), blob, b"aad")
    assert issubclass(ShareAuthenticationError, SecAggAbort)


def test_x25519_agreement_is_symmetric():
    a, b = crypto.KeyPair(), crypto.KeyPair()
    k1 = crypto.agree(a.private, b.public_bytes, salt=b"r", info=b"i")
    k2 = crypto.agree(b.private, a.public_bytes, salt=b"r", info=b"i")
    assert k1 == k2 and len(k1) == 32
    assert crypto.public_key_of(a.private_bytes) == a.public_bytes


def test_prg_deterministic_prefix_stable_and_masks_cancel():
    a = crypto.prg(KEY, 100_000)
    assert np.array_equal(a, crypto.prg(KEY, 100_000))
    assert np.array_equal(a[:777], crypto.prg(KEY, 777))
    assert not np.array_equal(a, crypto.prg(bytes(32), 100_000))
    out = np.arange(50_000, dtype=np.uint32)
    crypto.apply_masks(out, [KEY, KEY, bytes(32)], [1, -1, 0])  # sign 0 counts as +
    crypto.apply_masks(out, [bytes(32)], [-1])
    assert np.array_equal(out, np.arange(50_000, dtype=np.uint32))
    with pytest.raises(ValueError):
        crypto.prg(b"short", 10)


# ----------------------------------------------------------------------------- graph
def test_neighbourhood_graph_regular_symmetric_seeded():
    ids = [f"c{i:02d}" for i in range(30)]
    g = neighbourhood_graph(ids, 6, bytes(32))
    assert all(len(p) == 6 and c not in p for c, p in g.items())
    assert all(c in g[v] for c, p in g.items() for v in p)
    assert g == neighbourhood_graph(ids, 6, bytes(32))
    assert g != neighbourhood_graph(ids, 6, bytes([1]) + bytes(31))
    full = neighbourhood_graph(ids[:5], 4, bytes(32))
    assert all(p == set(ids[:5]) - {c} for c, p in full.items())


# ----------------------------------------------------------------------------- messages
def test_messages_roundtrip_through_dicts():
    arr = np.arange(5, dtype=np.uint32)
    msgs = [
        messages.SetupRequest(b"r" * 16, ("a", "b"), bytes(32), 1, 2, 1.0, 32, 28, 5),
        messages.AdvertiseKeys("a", b"x" * 32, b"y" * 32, b"z" * 32, b"s" * 64),
        messages.ShareKeysRequest({"a": b"1"}, {"a": b"2"}, {"a": b"3"}, {"a": b"4"}),
        messages.ShareKeysReply("a", {"b": b"ct"}),
        messages.MaskedInputRequest({"b": b"ct"}),
        messages.MaskedInput("a", arr),
        messages.ConsistencyRequest(("a", "b")),
        messages.ConsistencySignature("a", b"s" * 64),
        messages.UnmaskRequest(("a",), ("b",), {"a": b"s" * 64}),
        messages.UnmaskReply("a", {"a": b"s"}, {"b": b"t"}),
    ]
    for m in msgs:
        d = m.to_dict()
        assert all(isinstance(v, (bytes, str, int, float, list, np.ndarray)) for v in d.values())
        back = message_from_dict(d)
        assert type(back) is type(m)
        if isinstance(m, messages.MaskedInput):
            assert np.array_equal(back.masked, arr) and back.client_id == "a"
        else:
            assert back == m
    assert msgs[5].nbytes() == 20 + 1
    with pytest.raises(ValueError):
        message_from_dict({"kind": "nope"})
