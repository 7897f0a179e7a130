"""What the poisoning study costs: one matrix cell at the quick preset's size, and the detector's share.

Usage: ``.venv/bin/python bench/poisoning_detector.py [rounds] [threads]``.

Runs one attacked cell (FedMedian, one malicious centre with medium data noise) on a phantom federation
of the quick preset's size and prints, side by side: wall time per round, time the server spends
aggregating with the coordinate-wise median, and time the detector spends scoring the same updates.
The detector must stay a small fraction of a round so it can watch every round of a real federation.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import quick_phantom
from fedi2i.attacks.poisoning import UpdateDetector, load_poison_settings, plan_poison, run_poison_cell
from fedi2i.fl.client import ClientUpdate
from fedi2i.fl.strategies import FedMedian


def detector_vs_median(numel: int, n_clients: int = 4, repeats: int = 5) -> tuple[float, float]:
    """Seconds per round: detector scoring vs median aggregation, on random updates of the model's size."""
    gen = torch.Generator().manual_seed(0)
    updates = {c: ClientUpdate(c, torch.randn(numel, generator=gen), 100, 1, 0.0) for c in "ABCDEFGH"[:n_clients]}
    stacked = torch.stack([u.delta for u in updates.values()])
    det, med = [], []
    for r in range(repeats):
        t0 = time.perf_counter()
        UpdateDetector()(r, torch.zeros(numel), updates)
        t1 = time.perf_counter()
        FedMedian().aggregate(stacked, torch.ones(n_clients))
        t2 = time.perf_counter()
        det.append(t1 - t0)
        med.append(t2 - t1)
    return min(det), min(med)


def main(rounds: int = 2, threads: int | None = None) -> None:
    overrides = {"attacks.poison": {"rounds": rounds, "rules": ["fedmedian"], "levels": ["medium"], "n_malicious": [1]}}
    if threads is not None:  # on a shared machine 1 thread can be much faster than oversubscribed 2
        overrides["train.threads"] = threads
    cfg, data = quick_phantom(overrides=overrides)
    if threads is not None:
        torch.set_num_threads(threads)
    settings = load_poison_settings(cfg)
    cell = next(c for c in plan_poison(cfg, settings, data) if c.attack == "data_noise")
    out = Path(tempfile.mkdtemp(prefix="fedi2i-bench-poison-"))
    start = time.perf_counter()
    result = run_poison_cell(cfg, data, cell, out, settings)
    cell_seconds = time.perf_counter() - start
    numel = sum(p.numel() for p in torch.load(Path(result["run_dir"]) / "model.pt").values() if p.is_floating_point())
    det, med = detector_vs_median(numel)
    slices = sum(result["train_slices"].values())
    print(f"cell {cell.key}: {rounds} rounds, {slices} training slices per round, {numel} parameters, "
          f"threads {torch.get_num_threads()}")
    print(f"{'cell wall time':>28s} {cell_seconds:8.1f} s  ({cell_seconds / rounds:.1f} s per round incl. evaluation)")
    print(f"{'median aggregation / round':>28s} {med * 1e3:8.1f} ms")
    print(f"{'detector scoring / round':>28s} {det * 1e3:8.1f} ms  (ratio detector / median {det / med:.2f}, "
          f"share of a round {det / (cell_seconds / rounds):.2%})")
    print(f"unseen MAE {result['unseen_mean']['mae']:.1f} HU, flagged {result['detector']['flagged']}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2, int(sys.argv[2]) if len(sys.argv) > 2 else None)
