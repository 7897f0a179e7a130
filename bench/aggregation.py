"""Aggregation rules, fedi2i against Flower's reference functions, on the same 2M-parameter updates.

Run: .venv/bin/python bench/aggregation.py [--clients 4 16 64] [--reps 2] [--full]

For each client count the same float32 updates are aggregated by fedi2i's rules (one [n, d] tensor) and
by flwr.server.strategy.aggregate (per client a list of layer arrays viewing the same memory). Times are
the best of --reps runs; the ratio flower/ours > 1 means fedi2i is faster. The last column checks
that both sides agree. Flower's Bulyan re-runs its pairwise-distance loop n - 2f times, which takes
minutes at 64 clients: it is skipped there (with an estimate from Flower's Krum time) unless --full.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from _common import print_header
from flwr.server.strategy import aggregate as flower

from fedi2i.errors import ConfigError
from fedi2i.fl.strategies import AggregationRule, build_rule

N_PARAMS = 2_000_000
# U-Net-like layer shapes; the last layer takes the remainder up to N_PARAMS.
LAYER_SHAPES: list[tuple[int, ...]] = [(64, 1, 3, 3), (64,), (128, 64, 3, 3), (128,), (256, 128, 3, 3),
                                       (256,), (256, 256, 3, 3), (256,), (128, 256, 3, 3), (128,)]
LAYER_SHAPES.append((N_PARAMS - sum(int(np.prod(s)) for s in LAYER_SHAPES),))
SLOW_FLOWER_S = 5.0  # a Flower call slower than this is not repeated

FlowerResults = list[tuple[list[np.ndarray], int]]


def make_round(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, FlowerResults]:
    """n client updates (client 0 is a high-noise outlier), as a tensor and as Flower's layer lists."""
    g = torch.Generator().manual_seed(seed)
    updates = 0.01 * torch.randn(n, N_PARAMS, generator=g)
    updates[0] *= 100.0
    counts = torch.randint(20, 200, (n,), generator=g)
    flat = updates.numpy()
    results = []
    for i in range(n):
        layers, offset = [], 0
        for shape in LAYER_SHAPES:
            size = int(np.prod(shape))
            layers.append(flat[i, offset:offset + size].reshape(shape))
            offset += size
        results.append((layers, int(counts[i])))
    return updates, counts, results


def best_time(fn: Callable[[], object], reps: int, slow_s: float = float("inf")) -> tuple[float, object]:
    """Best wall time in seconds over reps runs (one run when the first exceeds slow_s), and the result."""
    best, result = float("inf"), None
    for _ in range(reps):
        start = time.perf_counter()
        result = fn()
        elapsed = time.perf_counter() - start
        best = min(best, elapsed)
        if elapsed > slow_s:
            break
    return best, result


def flatten(layers: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(layer, dtype=np.float64).ravel() for layer in layers])


def cases(n: int) -> list[tuple[str, str, Callable[[], AggregationRule], Callable[[FlowerResults], object]]]:
    """(label, parameters, rule factory, Flower call) for each rule; f is the largest each rule tolerates."""
    krum_f = max(1, (n - 3) // 2)
    bulyan_f = max(1, (n - 3) // 4)
    return [
        ("fedavg/fedprox", "", lambda: build_rule("fedavg"), flower.aggregate),
        ("fedmedian", "", lambda: build_rule("fedmedian"), flower.aggregate_median),
        ("trimmed", "beta=0.2", lambda: build_rule("trimmed", trimmed_beta=0.2),
         lambda r: flower.aggregate_trimmed_avg(r, 0.2)),
        ("krum", f"f={krum_f}", lambda: build_rule("krum", krum_f=krum_f),
         lambda r: flower.aggregate_krum(r, krum_f, 0)),
        ("multikrum", f"f={krum_f} m={n - krum_f}", lambda: build_rule("multikrum", krum_f=krum_f),
         lambda r: flower.aggregate_krum(r, krum_f, n - krum_f)),
        ("bulyan", f"f={bulyan_f}", lambda: build_rule("bulyan", bulyan_f=bulyan_f),
         lambda r: flower.aggregate_bulyan(list(r), bulyan_f, flower.aggregate_krum, to_keep=0)),
    ]


def bulyan_estimate_s(krum_s: float, n: int, f: int) -> float:
    """Flower's Bulyan cost from its Krum cost: one O(m^2 d) distance loop per pick, pool m shrinking."""
    return krum_s * sum((m / n) ** 2 for m in range(n, 2 * f, -1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="also time Flower's Bulyan for n > 16 (minutes)")
    args = parser.parse_args()
    torch.set_num_threads(2)

    print(f"{N_PARAMS:,} float32 parameters in {len(LAYER_SHAPES)} layers, torch threads "
          f"{torch.get_num_threads()}, best of {args.reps}")
    header = (f"{'n':>3}  {'rule':<15} {'params':<12} {'ours ms':>9} {'Flower ms':>10} {'flower/ours':>12} "
              f"{'max |diff|':>11}")
    print_header(header)
    started = time.perf_counter()
    for n in args.clients:
        updates, counts, results = make_round(n)
        krum_flower_s = None
        for label, params, factory, flower_fn in cases(n):
            rule = factory()
            try:
                rule.check(n)
            except ConfigError as exc:
                print(f"{n:>3}  {label:<15} {params:<12} skipped: {exc}")
                continue
            ours_s, ours = best_time(lambda: rule.aggregate(updates, counts), args.reps)
            if label == "bulyan" and n > 16 and not args.full:
                estimate = "" if krum_flower_s is None else \
                    f", est. ~{bulyan_estimate_s(krum_flower_s, n, int(params[2:])):.0f} s"
                print(f"{n:>3}  {label:<15} {params:<12} {ours_s * 1e3:>9.1f} {'-':>10} {'-':>12} {'-':>11}"
                      f"  (Flower skipped{estimate}; --full runs it)")
                continue
            flower_s, reference = best_time(lambda: flower_fn(results), args.reps, SLOW_FLOWER_S)
            if label == "krum":
                krum_flower_s = flower_s
            diff = float(np.max(np.abs(np.asarray(ours, dtype=np.float64) - flatten(reference))))
            print(f"{n:>3}  {label:<15} {params:<12} {ours_s * 1e3:>9.1f} {flower_s * 1e3:>10.1f} "
                  f"{flower_s / ours_s:>12.2f} {diff:>11.2e}", flush=True)
        del updates, counts, results
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
