"""What the server sees: masked uploads look uniform over Z_2^32 and carry no trace of the input."""

from __future__ import annotations

import numpy as np
from scipy import stats

from fedi2i.fl.secagg import SecAggConfig, secure_sum

L = 200_000
P_MIN = 1e-6  # false-alarm rate per check; masks come from fresh OS keys each run


def _uploads():
    rng = np.random.default_rng(0)
    vectors = {
        "ramp": np.linspace(-1, 1, L),  # strongly structured
        "const": np.full(L, 0.25),
        "noise": rng.normal(0, 0.3, L),
        "zeros": np.zeros(L),
    }
    res = secure_sum(vectors, SecAggConfig(), seed=0)
    return vectors, res


def test_masked_upload_is_uniform_over_the_ring():
    vectors, res = _uploads()
    for cid, y in res.masked_uploads.items():
        for bins in (y >> np.uint32(24), y & np.uint32(0xFF)):  # high and low bits
            counts = np.bincount(bins.astype(np.int64), minlength=256)
            p = stats.chisquare(counts).pvalue
            assert p > P_MIN, (cid, p)


def test_masked_upload_uncorrelated_with_input():
    vectors, res = _uploads()
    for cid in ("ramp", "noise"):
        x = vectors[cid]
        y = res.masked_uploads[cid].astype(np.float64)
        r = np.corrcoef(x, y)[0, 1]
        assert abs(r) < 5 / np.sqrt(L), (cid, r)
        rho = stats.spearmanr(x, y).statistic
        assert abs(rho) < 5 / np.sqrt(L), (cid, rho)


def test_uploads_of_different_inputs_are_indistinguishable():
    vectors, res = _uploads()
    ramp = res.masked_uploads["ramp"]
    const = res.masked_uploads["const"]
    p = stats.ks_2samp(ramp[::4], const[::4]).pvalue
    assert p > P_MIN
    # and the aggregate is still right
    true = np.sum([np.clip(v, -1, 1) for v in vectors.values()], axis=0)
    assert np.abs(res.total - true).max() <= SecAggConfig().error_bound(4)
