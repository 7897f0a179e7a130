"""Secure aggregation inside the engine: same model as plain FedAvg (within the bound), server sees only sums."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedi2i.config import Config
from fedi2i.errors import RecordError
from fedi2i.fl.observer import ServerRecord
from fedi2i.fl.secagg.weighting import mean_error_bound
from fedi2i.training import RunOptions, train


def _with(cfg: Config, **sections) -> Config:
    return cfg.model_copy(update={k: getattr(cfg, k).model_copy(update=v) for k, v in sections.items()})


def cfg_global(result) -> torch.Tensor:
    """The global model the run started from (round 0's record)."""
    return ServerRecord(result.run_dir).round(0).global_vector


def test_secagg_matches_fedavg_and_hides_updates(tiny_config: Config, tiny_data, tmp_path: Path) -> None:
    cfg = _with(tiny_config, train={"rounds": 1})
    plain = train(cfg, tmp_path / "plain", tiny_data)
    secure_cfg = _with(cfg, secagg={"enabled": True})
    secure = train(secure_cfg, tmp_path / "secure", tiny_data)
    # each client weights itself (r_k = n_k / max_weight); the error of the mean is the documented bound
    exact = plain.run.global_vector - cfg_global(plain)
    counts = {c: len(s) for c, s in tiny_data.train.items()}
    bound = mean_error_bound(secure_cfg.secagg, counts, float(exact.abs().max()))
    diff = (plain.run.global_vector - secure.run.global_vector).abs().max().item()
    assert 0 < diff <= bound + 1e-7, (diff, bound)
    view = ServerRecord(tmp_path / "secure").round(0)
    assert view.secure and view.updates == {}
    assert torch.allclose(view.global_vector + view.aggregate, secure.run.global_vector, atol=1e-6)
    with pytest.raises(RecordError, match="secure aggregation"):
        ServerRecord(tmp_path / "secure").client_update(0, "A")
    assert secure.run.history[0]["upload_bytes"] > 0


def test_secagg_dropout_renormalises(tiny_config: Config, tiny_data, tmp_path: Path) -> None:
    cfg = _with(tiny_config, train={"rounds": 1}, secagg={"enabled": True, "threshold": 0.5})
    result = train(cfg, tmp_path / "drop", tiny_data,
                   RunOptions(dropouts=lambda r: {"masked_input": ["B"]}))
    assert result.run.history[0]["survivors"] == ["A", "C", "D"]
    view = ServerRecord(tmp_path / "drop").round(0)
    assert sorted(view.num_examples) == ["A", "C", "D"]
