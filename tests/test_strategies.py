"""Aggregation rules: hand-made cases, naive references, Flower's reference functions, invalid settings."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest
import torch

from fedi2i.errors import AggregationError, ConfigError
from fedi2i.fl import strategies
from fedi2i.fl.strategies import (
    STRATEGY_NAMES,
    AggregationRule,
    Bulyan,
    FedAvg,
    FedMedian,
    FedProx,
    Krum,
    MultiKrum,
    TrimmedMean,
    build_rule,
)

LAYER_SHAPES = [(3, 4), (5,), (2, 2, 2), (1,)]


# --------------------------------------------------------------------------------------------------
# Helpers: naive references written from the papers' definitions, and Flower's data layout


def naive_krum_scores(points: np.ndarray, f: int) -> np.ndarray:
    """Sum of squared distances to the max(1, n-f-2) nearest other points, with explicit loops."""
    n = len(points)
    k = max(1, n - f - 2)
    scores = []
    for i in range(n):
        dists = sorted(float(np.sum((points[i] - points[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(dists[:k]))
    return np.array(scores)


def naive_bulyan(points: np.ndarray, f: int) -> np.ndarray:
    """Bulyan by definition: repeated Krum picks, then per coordinate the beta values nearest the median."""
    pool = list(range(len(points)))
    picked = []
    for _ in range(len(points) - 2 * f):
        scores = naive_krum_scores(points[pool], f) if len(pool) > 1 else np.zeros(1)
        picked.append(pool.pop(int(np.argmin(scores))))
    chosen = points[picked]
    beta = len(picked) - 2 * f
    out = np.empty(points.shape[1])
    for c in range(points.shape[1]):
        column = chosen[:, c]
        med = np.median(column)
        nearest = np.argsort(np.abs(column - med), kind="stable")[:beta]
        out[c] = column[nearest].mean()
    return out


def random_layers(n: int, seed: int, dtype: type = np.float64, n_outliers: int = 1
                  ) -> list[tuple[list[np.ndarray], int]]:
    """Flower-style results: per client a list of layer arrays and an example count; a few outliers."""
    rng = np.random.default_rng(seed)
    results = []
    for i in range(n):
        scale = 25.0 if i < n_outliers else 1.0
        layers = [(rng.normal(size=s) * scale + 0.5).astype(dtype) for s in LAYER_SHAPES]
        results.append((layers, int(rng.integers(1, 50))))
    rng.shuffle(results)  # outliers anywhere in the list
    return results


def to_tensors(results: list[tuple[list[np.ndarray], int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten each client's layers in order: the same layout the rules aggregate."""
    updates = np.stack([np.concatenate([layer.ravel() for layer in layers]) for layers, _ in results])
    counts = torch.tensor([c for _, c in results], dtype=torch.float64)
    return torch.from_numpy(updates), counts


def flatten(layers: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(layer).ravel() for layer in layers])


@pytest.fixture(params=["introselect", "torch-sort"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with numpy's introselect (CPU default) and with the torch path used off-CPU."""
    monkeypatch.setattr(strategies, "_CPU_INTROSELECT", request.param == "introselect")
    return str(request.param)


@pytest.fixture
def with_outlier() -> tuple[torch.Tensor, torch.Tensor]:
    """Seven honest updates around 1.0 and one huge outlier (a noise-poisoned client)."""
    g = torch.Generator().manual_seed(0)
    honest = 1.0 + 0.1 * torch.randn(7, 6, generator=g)
    outlier = torch.full((1, 6), 1e6)
    updates = torch.cat([honest[:3], outlier, honest[3:]])
    return updates, torch.tensor([10.0, 20, 30, 40, 50, 60, 70, 80])


# --------------------------------------------------------------------------------------------------
# Hand-made cases


def test_fedavg_weights_by_example_counts() -> None:
    updates = torch.tensor([[0.0, 10.0], [4.0, 2.0]])
    out = FedAvg().aggregate(updates, torch.tensor([1, 3]))
    torch.testing.assert_close(out, torch.tensor([3.0, 4.0]))
    # Equal counts give the plain mean; a zero count removes the client.
    torch.testing.assert_close(FedAvg().aggregate(updates, torch.tensor([5, 5])), torch.tensor([2.0, 6.0]))
    torch.testing.assert_close(FedAvg().aggregate(updates, [0, 7]), torch.tensor([4.0, 2.0]))


def test_fedprox_aggregates_like_fedavg_and_records_mu() -> None:
    g = torch.Generator().manual_seed(1)
    updates, counts = torch.randn(4, 9, generator=g), torch.tensor([3.0, 1, 4, 1])
    rule = build_rule("fedprox", fedprox_mu=0.3)
    assert isinstance(rule, FedProx) and rule.mu == 0.3
    torch.testing.assert_close(rule.aggregate(updates, counts), FedAvg().aggregate(updates, counts))


def test_outlier_moves_fedavg_but_not_robust_rules(with_outlier: tuple[torch.Tensor, torch.Tensor],
                                                   backend: str) -> None:
    updates, counts = with_outlier
    honest = torch.cat([updates[:3], updates[4:]])
    assert FedAvg().aggregate(updates, counts).min() > 1e4
    for rule in (FedMedian(), TrimmedMean(0.2), Krum(1), MultiKrum(1), MultiKrum(2, m=3), Bulyan(1)):
        out = rule.aggregate(updates, counts)
        assert bool(((out >= honest.min(0).values - 1e-6) & (out <= honest.max(0).values + 1e-6)).all()), rule


def test_median_hand_values(backend: str) -> None:
    odd = torch.tensor([[1.0, -3.0], [100.0, 0.0], [3.0, 7.0], [2.0, 1.0], [4.0, 5.0]])
    torch.testing.assert_close(FedMedian().aggregate(odd, torch.ones(5)), torch.tensor([3.0, 1.0]))
    even = torch.tensor([[1.0, 2.0], [100.0, 2.0], [3.0, 2.0], [2.0, 9.0]])
    torch.testing.assert_close(FedMedian().aggregate(even, torch.ones(4)), torch.tensor([2.5, 2.0]))


@pytest.mark.parametrize("n", [3, 4, 5, 6, 10, 11])
def test_median_matches_numpy_with_many_ties(n: int, backend: str) -> None:
    rng = np.random.default_rng(n)
    values = rng.integers(-2, 3, size=(n, 400)).astype(np.float64)  # heavy ties around the middle
    out = FedMedian().aggregate(torch.from_numpy(values), torch.ones(n))
    np.testing.assert_array_equal(out.numpy(), np.median(values, axis=0))


def test_trimmed_mean_hand_values(backend: str) -> None:
    column = torch.tensor([[1.0], [2.0], [3.0], [4.0], [100.0]])
    # beta=0.2, n=5: int(1.0) = 1 value dropped at each end.
    torch.testing.assert_close(TrimmedMean(0.2).aggregate(column, torch.ones(5)), torch.tensor([3.0]))
    # beta=0.4, n=5: 2 dropped at each end, the median remains.
    torch.testing.assert_close(TrimmedMean(0.4).aggregate(column, torch.ones(5)), torch.tensor([3.0]))
    # beta=0: unweighted mean, counts ignored.
    torch.testing.assert_close(TrimmedMean(0.0).aggregate(column, torch.arange(1, 6)), torch.tensor([22.0]))


def test_krum_and_multikrum_hand_values() -> None:
    points = torch.tensor([[0.0], [1.0], [2.0], [4.0], [100.0]])
    # f=1, n=5: 2 nearest; scores 0:1+4, 1:1+1, 2:1+4, 4:4+9, 100:huge -> client 1.
    # float32 Gram expansion: scores carry rounding relative to the centred norms (the outlier's).
    expected_scores = naive_krum_scores(points.numpy(), 1)
    np.testing.assert_allclose(Krum(1).scores(points).numpy(), expected_scores, rtol=1e-4)
    np.testing.assert_allclose(Krum(1).scores(points.double()).numpy(), expected_scores, rtol=1e-12)
    torch.testing.assert_close(Krum(1).aggregate(points, torch.ones(5)), torch.tensor([1.0]))
    # Multi-Krum m=3 keeps clients 1, 0, 2 and weights them by their counts.
    counts = torch.tensor([1.0, 2.0, 5.0, 7.0, 9.0])
    expected = (0.0 * 1 + 1.0 * 2 + 2.0 * 5) / 8
    torch.testing.assert_close(MultiKrum(1, m=3).aggregate(points, counts), torch.tensor([expected]))


def test_krum_returns_one_of_the_inputs(with_outlier: tuple[torch.Tensor, torch.Tensor]) -> None:
    updates, counts = with_outlier
    out = Krum(2).aggregate(updates, counts)
    assert any(torch.equal(out, row) for row in updates)


@pytest.mark.parametrize(("n", "f"), [(3, 0), (7, 1), (8, 1), (11, 2), (12, 2)])
def test_bulyan_matches_naive_definition(n: int, f: int, backend: str) -> None:
    rng = np.random.default_rng(100 + n)
    points = rng.normal(size=(n, 7))
    points[rng.integers(n)] += 30.0
    out = Bulyan(f).aggregate(torch.from_numpy(points), torch.ones(n))
    np.testing.assert_allclose(out.numpy(), naive_bulyan(points, f), rtol=1e-12, atol=1e-12)


def test_nearest_values_stage_with_ties(backend: str) -> None:
    """Bulyan's second stage: exact ties on one side are filled in; a two-sided tie takes their mean."""
    columns = torch.tensor([[0.0, 0.0, 1.0], [1.0, 2.0, 3.0], [1.0, 1.0, 3.0], [1.0, 9.0, 3.0],
                            [5.0, 9.0, 9.0]])
    reference = torch.tensor([1.0, 1.0, 1.0])
    out = strategies._mean_nearest(columns, reference, 4)
    # Column 0: three 1s and the 0 (5 is farther). Column 1: 1, then 0 and 2 tie at distance 1 and
    # both fit, then one of the two 9s. Column 2: 1, then three slots filled by the tied 3s.
    torch.testing.assert_close(out, torch.tensor([0.75, 3.0, 2.5]))
    out = strategies._mean_nearest(columns[:4, 1:2], reference[1:2], 2)  # 1 then one of {0, 2}
    torch.testing.assert_close(out, torch.tensor([1.0]))


@pytest.mark.parametrize("n", [9, 30])
def test_krum_is_exact_with_a_large_common_offset(n: int) -> None:
    """float32 updates far from 0 and close together: distances from a Gram matrix must not cancel."""
    rng = np.random.default_rng(5)
    points = (1000.0 + 1e-2 * rng.normal(size=(n, 5000))).astype(np.float32)
    expected = naive_krum_scores(points.astype(np.float64), 3)
    np.testing.assert_allclose(Krum(3).scores(torch.from_numpy(points)).numpy(), expected, rtol=1e-3)
    out = Krum(3).aggregate(torch.from_numpy(points), torch.ones(n))
    np.testing.assert_array_equal(out.numpy(), points[int(np.argmin(expected))])


def test_pairwise_distances_over_uneven_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(strategies, "_GRAM_BLOCK", 7)  # 50 columns: 8 blocks, the last one padded
    rng = np.random.default_rng(8)
    points = rng.normal(size=(6, 50)) + 3.0
    expected = ((points[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(strategies._pairwise_sq_dists(torch.from_numpy(points)).numpy(), expected,
                               rtol=1e-12, atol=1e-12)


def test_float32_krum_scores_are_accurate_on_wide_updates() -> None:
    """Wide float32 updates with a 100x outlier: honest scores differ by ~1e-4 relative, so errors
    of that size (one long float32 Gram product) would change Krum's and Bulyan's picks."""
    g = torch.Generator().manual_seed(11)
    updates = 0.01 * torch.randn(16, 400_000, generator=g)
    updates[0] *= 100.0
    exact = Krum(3).scores(updates.double())
    approx = Krum(3).scores(updates)
    assert float(((approx - exact).abs() / exact).max()) < 1e-5
    assert Bulyan(3).select(updates) == Bulyan(3).select(updates.double())


# --------------------------------------------------------------------------------------------------
# Flower's reference implementations


@pytest.fixture(scope="module")
def flwr_aggregate() -> ModuleType:
    pytest.importorskip("flwr")
    from flwr.server.strategy import aggregate as module

    return module


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("rule_name", ["fedavg", "fedprox"])
def test_weighted_rules_match_flower(flwr_aggregate: ModuleType, rule_name: str, seed: int) -> None:
    results = random_layers(6, seed)
    updates, counts = to_tensors(results)
    ours = build_rule(rule_name).aggregate(updates, counts)
    np.testing.assert_allclose(ours.numpy(), flatten(flwr_aggregate.aggregate(results)), rtol=1e-12)


@pytest.mark.parametrize("n", [3, 4, 7, 8])
def test_median_matches_flower(flwr_aggregate: ModuleType, n: int, backend: str) -> None:
    results = random_layers(n, seed=n)
    updates, counts = to_tensors(results)
    np.testing.assert_allclose(FedMedian().aggregate(updates, counts).numpy(),
                               flatten(flwr_aggregate.aggregate_median(results)), rtol=1e-12)


@pytest.mark.parametrize(("n", "beta"), [(5, 0.2), (8, 0.2), (10, 0.1), (10, 0.3), (9, 0.45), (6, 0.0)])
def test_trimmed_mean_matches_flower(flwr_aggregate: ModuleType, n: int, beta: float, backend: str) -> None:
    results = random_layers(n, seed=10 * n, n_outliers=2)
    updates, counts = to_tensors(results)
    np.testing.assert_allclose(TrimmedMean(beta).aggregate(updates, counts).numpy(),
                               flatten(flwr_aggregate.aggregate_trimmed_avg(results, beta)), rtol=1e-12)


@pytest.mark.parametrize(("n", "f"), [(5, 1), (8, 2), (9, 3), (27, 4)])
def test_krum_matches_flower(flwr_aggregate: ModuleType, n: int, f: int) -> None:
    results = random_layers(n, seed=20 + n, n_outliers=f)
    updates, counts = to_tensors(results)
    np.testing.assert_allclose(Krum(f).aggregate(updates, counts).numpy(),
                               flatten(flwr_aggregate.aggregate_krum(results, f, 0)), rtol=1e-12)


@pytest.mark.parametrize(("n", "f", "m"), [(5, 1, 2), (8, 2, 4), (9, 1, None), (27, 4, 10)])
def test_multikrum_matches_flower(flwr_aggregate: ModuleType, n: int, f: int, m: int | None) -> None:
    results = random_layers(n, seed=30 + n, n_outliers=f)
    updates, counts = to_tensors(results)
    to_keep = n - f if m is None else m
    np.testing.assert_allclose(MultiKrum(f, m=m).aggregate(updates, counts).numpy(),
                               flatten(flwr_aggregate.aggregate_krum(results, f, to_keep)), rtol=1e-12)


@pytest.mark.parametrize(("n", "f"), [(7, 1), (8, 1), (11, 2), (12, 2), (15, 3)])
def test_bulyan_matches_flower(flwr_aggregate: ModuleType, n: int, f: int, backend: str) -> None:
    results = random_layers(n, seed=40 + n, n_outliers=f)
    updates, counts = to_tensors(results)
    reference = flwr_aggregate.aggregate_bulyan(list(results), f, flwr_aggregate.aggregate_krum, to_keep=0)
    np.testing.assert_allclose(Bulyan(f).aggregate(updates, counts).numpy(), flatten(reference), rtol=1e-12)


@pytest.mark.parametrize("rule_name", STRATEGY_NAMES)
def test_float32_matches_flower(flwr_aggregate: ModuleType, rule_name: str, backend: str) -> None:
    results = random_layers(11, seed=7, dtype=np.float32, n_outliers=2)
    updates, counts = to_tensors(results)
    reference = {
        "fedavg": lambda r: flwr_aggregate.aggregate(r),
        "fedprox": lambda r: flwr_aggregate.aggregate(r),
        "fedmedian": lambda r: flwr_aggregate.aggregate_median(r),
        "trimmed": lambda r: flwr_aggregate.aggregate_trimmed_avg(r, 0.2),
        "krum": lambda r: flwr_aggregate.aggregate_krum(r, 2, 0),
        "multikrum": lambda r: flwr_aggregate.aggregate_krum(r, 2, 11 - 2),
        "bulyan": lambda r: flwr_aggregate.aggregate_bulyan(list(r), 2, flwr_aggregate.aggregate_krum,
                                                            to_keep=0),
    }[rule_name](results)
    rule = build_rule(rule_name, krum_f=2, bulyan_f=2)
    out = rule.aggregate(updates, counts)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), flatten(reference), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# dtypes, flags, inputs


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("rule_name", STRATEGY_NAMES)
def test_output_keeps_input_dtype(rule_name: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(3)
    updates64 = torch.randn(7, 5, generator=g, dtype=torch.float64)
    counts = torch.tensor([1, 2, 3, 4, 5, 6, 7])
    rule = build_rule(rule_name)
    out = rule.aggregate(updates64.to(dtype), counts)
    assert out.dtype == dtype and out.shape == (5,)
    tol = {torch.float16: 1e-2, torch.bfloat16: 3e-2}.get(dtype, 1e-5)
    reference = rule.aggregate(updates64.to(dtype).double(), counts)
    torch.testing.assert_close(out.double(), reference, rtol=tol, atol=tol)


def test_inputs_are_not_modified(with_outlier: tuple[torch.Tensor, torch.Tensor]) -> None:
    updates, counts = with_outlier
    before = updates.clone()
    for name in STRATEGY_NAMES:
        build_rule(name).aggregate(updates, counts)
    assert torch.equal(updates, before)


def test_names_and_secure_aggregation_flags() -> None:
    rules = {name: build_rule(name) for name in STRATEGY_NAMES}
    assert all(isinstance(r, AggregationRule) and r.name == name for name, r in rules.items())
    assert {n for n, r in rules.items() if not r.needs_individual_updates} == {"fedavg", "fedprox"}
    assert build_rule(" Krum ").name == "krum"


def test_bad_inputs_raise_aggregation_error() -> None:
    with pytest.raises(AggregationError, match="2-D"):
        FedAvg().aggregate(torch.ones(5), torch.ones(5))
    with pytest.raises(AggregationError, match="floating"):
        FedAvg().aggregate(torch.ones(3, 2, dtype=torch.int64), torch.ones(3))
    with pytest.raises(AggregationError, match="shape"):
        FedAvg().aggregate(torch.ones(3, 2), torch.ones(4))
    with pytest.raises(AggregationError, match="non-negative"):
        FedAvg().aggregate(torch.ones(3, 2), torch.tensor([1.0, -1.0, 2.0]))
    with pytest.raises(AggregationError, match="0 examples"):
        FedAvg().aggregate(torch.ones(3, 2), torch.zeros(3))
    # Too few clients at aggregation time (e.g. after dropouts) is a round failure.
    with pytest.raises(AggregationError, match="2f\\+3 = 5 clients, got 4"):
        Krum(1).aggregate(torch.randn(4, 3), torch.ones(4))


# --------------------------------------------------------------------------------------------------
# Invalid settings


def test_unknown_strategy() -> None:
    with pytest.raises(ConfigError, match="unknown aggregation strategy 'fedsgd'.*fedavg"):
        build_rule("fedsgd")


@pytest.mark.parametrize("beta", [-0.1, 0.5, 0.7, float("nan"), True])
def test_trimmed_beta_out_of_range(beta: float) -> None:
    with pytest.raises(ConfigError, match="beta must be in \\[0, 0.5\\)"):
        build_rule("trimmed", trimmed_beta=beta)


@pytest.mark.parametrize("kwargs", [{"krum_f": -1}, {"krum_f": 1.5}, {"krum_f": True}])
@pytest.mark.parametrize("name", ["krum", "multikrum"])
def test_krum_f_invalid(name: str, kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="f .*must be an integer >= 0"):
        build_rule(name, **kwargs)  # type: ignore[arg-type]


def test_other_invalid_parameters() -> None:
    with pytest.raises(ConfigError, match="Bulyan f"):
        build_rule("bulyan", bulyan_f=-2)
    with pytest.raises(ConfigError, match="mu must be"):
        build_rule("fedprox", fedprox_mu=-0.1)
    with pytest.raises(ConfigError, match="m .*>= 1"):
        build_rule("multikrum", multikrum_m=0)


def test_parameters_of_other_strategies_are_ignored() -> None:
    assert build_rule("fedavg", trimmed_beta=0.9, krum_f=-1).name == "fedavg"


def test_check_reports_required_client_counts() -> None:
    with pytest.raises(ConfigError, match=r"^Krum with f=2 needs n >= 2f\+3 = 7 clients, got 5$"):
        build_rule("krum", krum_f=2).check(5)
    build_rule("krum", krum_f=2).check(7)
    with pytest.raises(ConfigError, match=r"Bulyan with f=1 needs n >= 4f\+3 = 7 clients, got 6"):
        build_rule("bulyan", bulyan_f=1).check(6)
    build_rule("bulyan", bulyan_f=1).check(7)
    with pytest.raises(ConfigError, match="median needs n >= 3 clients.*got 2"):
        build_rule("fedmedian").check(2)
    build_rule("fedmedian").check(3)
    with pytest.raises(ConfigError, match="beta=0.2 needs n >= 5 clients.*got 4"):
        build_rule("trimmed", trimmed_beta=0.2).check(4)
    build_rule("trimmed", trimmed_beta=0.2).check(5)
    assert build_rule("trimmed", trimmed_beta=0.3).min_clients == 4  # int(0.3 * 4) = 1
    assert build_rule("trimmed", trimmed_beta=0.1).min_clients == 10
    with pytest.raises(ConfigError, match=r"f=1 keeping m=7 needs n >= m\+f = 8 clients.*got 7"):
        build_rule("multikrum", krum_f=1, multikrum_m=7).check(7)
    build_rule("multikrum", krum_f=1, multikrum_m=6).check(7)
    with pytest.raises(ConfigError, match=r"Multi-Krum with f=2 needs n >= 2f\+3 = 7 clients, got 6"):
        build_rule("multikrum", krum_f=2, multikrum_m=2).check(6)
    with pytest.raises(ConfigError, match="at least 1 client"):
        build_rule("fedavg").check(0)
    build_rule("fedavg").check(1)
    with pytest.raises(ConfigError):
        build_rule("fedprox").check(0)


@pytest.mark.parametrize("beta", [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 1 / 3, 0.49])
def test_trimmed_min_clients_is_the_smallest_n_that_trims(beta: float) -> None:
    rule = TrimmedMean(beta)
    n = rule.min_clients
    assert int(beta * n) >= 1 and int(beta * (n - 1)) == 0
