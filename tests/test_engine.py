"""The in-process federated engine: determinism, resume, bad updates, the curious-server record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedi2i.config import Config
from fedi2i.errors import AggregationError, DataError, RecordError
from fedi2i.fl.client import ClientUpdate
from fedi2i.fl.observer import ServerRecord
from fedi2i.fl.round_loop import RoundEntry
from fedi2i.fl.server import Aggregator
from fedi2i.fl.strategies import build_rule
from fedi2i.training import RunOptions, train


def test_same_seed_same_first_round_loss(tiny_config: Config, tiny_data, tmp_path: Path) -> None:
    cfg = tiny_config.model_copy(update={"train": tiny_config.train.model_copy(update={"rounds": 1})})
    a = train(cfg, tmp_path / "a", tiny_data)
    b = train(cfg, tmp_path / "b", tiny_data)
    assert a.run.history[0]["train_loss"] == b.run.history[0]["train_loss"]
    assert torch.equal(a.run.global_vector, b.run.global_vector)
    other = cfg.model_copy(update={"seed": 1})
    c = train(other, tmp_path / "c", tiny_data)
    assert c.run.history[0]["train_loss"] != a.run.history[0]["train_loss"]


def test_resume_equals_uninterrupted(tiny_config: Config, tiny_data, tmp_path: Path) -> None:
    cfg = tiny_config.model_copy(update={"train": tiny_config.train.model_copy(update={"rounds": 3})})
    seen: list[tuple[int, RoundEntry]] = []
    full = train(cfg, tmp_path / "full", tiny_data, RunOptions(on_round=lambda done, e: seen.append((done, e))))
    # the callback gets each round's typed entry; its val fills in when the next round brings it back
    assert [done for done, _ in seen] == [1, 2, 3]
    assert [e.to_dict() for _, e in seen] == full.run.history and all(e.val for _, e in seen)
    partial = train(cfg, tmp_path / "resumed", tiny_data, RunOptions(stop_after=1))
    assert partial.run.next_round == 1 and not partial.metrics["finished"]
    resumed = train(cfg, tmp_path / "resumed", tiny_data)
    assert resumed.run.next_round == 3
    assert torch.equal(full.run.global_vector, resumed.run.global_vector)
    # validation travels with the next round's request; a call that stops first still validates its last round
    assert partial.run.history[0]["val"] == full.run.history[0]["val"]
    assert [h["val"] for h in resumed.run.history] == [h["val"] for h in full.run.history]
    metrics = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert metrics["finished"] and "E" in metrics["unseen"]
    for name in ("loss.png", "val_mae.png", "sct_E.png"):
        assert (tmp_path / "resumed" / "figures" / name).stat().st_size > 1000


def test_recorder_round_trip(tiny_config: Config, tiny_data, tmp_path: Path) -> None:
    cfg = tiny_config.model_copy(update={"federation": tiny_config.federation.model_copy(
        update={"record_rounds": [1]})})
    result = train(cfg, tmp_path / "run", tiny_data)
    record = ServerRecord(tmp_path / "run")
    assert record.rounds() == [1]
    view = record.round(1)
    assert sorted(view.updates) == ["A", "B", "C", "D"] and not view.secure
    assert view.num_examples == {c: len(tiny_data.train[c]) for c in "ABCD"}
    # the recorded global + the FedAvg of the recorded updates is the model the run ended with
    weights = torch.tensor([view.num_examples[c] for c in "ABCD"], dtype=torch.float32)
    mean = (torch.stack([view.updates[c] for c in "ABCD"]) * (weights / weights.sum())[:, None]).sum(0)
    assert torch.allclose(view.global_vector + mean, result.run.global_vector, atol=1e-5)
    assert view.meta["lr"] > 0 and view.meta["batch_size"] == cfg.train.batch_size
    assert record.spec.numel == view.global_vector.numel()
    with pytest.raises(RecordError, match="round 0 was not recorded"):
        record.round(0)
    with pytest.raises(RecordError, match="client Z is not in round 1"):
        record.client_update(1, "Z")


def _update(cid: str, delta: torch.Tensor, n: int = 10) -> ClientUpdate:
    return ClientUpdate(cid, delta, n, 1, 0.0)


def test_bad_updates_rejected_round_continues() -> None:
    agg = Aggregator(build_rule("fedavg"), numel=4, min_clients=2)
    updates = [_update("A", torch.ones(4)), _update("B", torch.ones(4) * 3),
               _update("C", torch.tensor([1.0, float("nan"), 0, 0])), _update("D", torch.ones(5)),
               _update("E", torch.tensor([float("inf"), 0, 0, 0]))]
    out = agg.aggregate_round(0, torch.zeros(4), updates)
    assert out.accepted == ["A", "B"] and set(out.rejected) == {"C", "D", "E"}
    assert "non-finite" in out.rejected["C"] and "shape" in out.rejected["D"]
    assert torch.allclose(out.new_global, torch.full((4,), 2.0))
    with pytest.raises(AggregationError, match="fewer than min_clients"):
        agg.aggregate_round(1, torch.zeros(4), updates[2:])


def test_rejections_leaving_too_few_for_robust_rule_abort_the_round() -> None:
    agg = Aggregator(build_rule("krum", krum_f=1), numel=4, min_clients=1)
    good = [_update(c, torch.randn(4)) for c in "ABCDE"]
    assert torch.isfinite(agg.aggregate_round(0, torch.zeros(4), good).new_global).all()
    bad = good[:4] + [_update("E", torch.full((4,), float("nan")))]
    with pytest.raises(AggregationError, match=r"round 1: 4 usable update\(s\) left.*E"):
        agg.aggregate_round(1, torch.zeros(4), bad)


def test_centre_without_data_is_clear(tiny_config: Config, tiny_data, tmp_path: Path) -> None:
    from fedi2i.data.slices import SliceSet

    empty = tiny_data.train["A"].select([])
    assert isinstance(empty, SliceSet) and len(empty) == 0
    options = RunOptions(data_transforms={"A": lambda s: s.select([])})
    with pytest.raises(DataError, match="centre A has no usable training slices"):
        train(tiny_config, tmp_path / "x", tiny_data, options)


@pytest.mark.parametrize("mode,norm", [("update", "batch"), ("dpsgd", "group")])
def test_dp_runs_and_reports_epsilon(tiny_config: Config, tiny_data, tmp_path: Path, mode: str, norm: str) -> None:
    cfg = tiny_config.model_copy(update={
        "dp": tiny_config.dp.model_copy(update={"enabled": True, "mode": mode, "noise_multiplier": 1.0}),
        "model": tiny_config.model.model_copy(update={"norm": norm})})
    result = train(cfg, tmp_path / mode, tiny_data)
    eps = result.metrics["dp"]["epsilon"]
    assert 0 < eps < float("inf")
    view = ServerRecord(tmp_path / mode).round(0)
    if mode == "update":  # each update is clipped to norm 1 before noise of std 1 per coordinate
        noise_std = float(torch.stack(list(view.updates.values())).std())
        assert 0.8 < noise_std < 1.2


def test_dpsgd_refuses_batchnorm(tiny_config: Config, tiny_data, tmp_path: Path) -> None:
    from fedi2i.errors import ConfigError

    cfg = tiny_config.model_copy(update={"dp": tiny_config.dp.model_copy(update={"enabled": True, "mode": "dpsgd"})})
    with pytest.raises(ConfigError, match="BatchNorm"):
        train(cfg, tmp_path / "x", tiny_data)
