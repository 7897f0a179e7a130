"""Shared set-up for benchmarks: a phantom federation at the quick preset's size, built in a temp folder."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from fedi2i.config import Config, DataConfig, load_config
from fedi2i.data.federation import FederatedData, load_federation
from fedi2i.data.phantom import build_phantom_dataset


def print_header(header: str) -> None:
    """A results table's header line and its underline."""
    print(header)
    print("-" * len(header))


def quick_phantom(patients_per_centre: int = 6, depth: int = 40, overrides: dict | None = None
                  ) -> tuple[Config, FederatedData]:
    """The quick preset (64x64 slices, its U-Net) on a phantom federation, so no download is needed."""
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="fedi2i-bench-"))
    build_phantom_dataset(root, n_centres=5, patients_per_centre=patients_per_centre, shape=(depth, 64, 64))
    base = {"data.root": str(root), "data.source": "phantom"}
    if "holdout_patients" in DataConfig.model_fields:  # the benchmarks time training: no membership hold-out
        base["data.holdout_patients"] = 0
    cfg = load_config("quick", {**base, **(overrides or {})})
    return cfg, load_federation(cfg.data, cfg.seed)
