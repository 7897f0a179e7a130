"""Shared fixtures: a small phantom federation on disk and a tiny config that trains in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedi2i.config import Config, load_config
from fedi2i.data.phantom import build_phantom_dataset

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantom")
    build_phantom_dataset(root, n_centres=5, patients_per_centre=4, seed=0, shape=(24, 48, 48))
    return root


@pytest.fixture()
def tiny_config(phantom_root: Path) -> Config:
    return load_config("tiny", {"data.root": str(phantom_root)})


@pytest.fixture(scope="session")
def tiny_data(phantom_root: Path):
    from fedi2i.data.federation import load_federation

    cfg = load_config("tiny", {"data.root": str(phantom_root)})
    return load_federation(cfg.data, cfg.seed)
