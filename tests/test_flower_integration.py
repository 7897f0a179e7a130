"""Real Flower deployment on loopback: a SuperLink and 3 SuperNodes on 127.0.0.1 (ports picked at run time),
2 rounds of the tiny preset with FedAvg and with SecAgg, compared with the in-process engine.

Every Flower process (SuperLink, SuperNodes, and the SuperExec / ServerApp / ClientApp processes below them)
is stopped by PID when the federation's ``with`` block ends, also when a check fails.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr")

from fedi2i.config import Config  # noqa: E402
from fedi2i.fl.flower.deploy import LocalFederation, _alive, write_app  # noqa: E402
from fedi2i.fl.flower.rounds import read_json  # noqa: E402
from fedi2i.fl.round_loop import load_global  # noqa: E402
from fedi2i.fl.observer import ServerRecord  # noqa: E402
from fedi2i.fl.secagg.weighting import mean_error_bound  # noqa: E402
from fedi2i.training import train  # noqa: E402

pytestmark = [pytest.mark.flower, pytest.mark.slow]
CENTRES = ["A", "B", "C"]


def _config(tiny_config: Config, secure: bool) -> Config:
    sections = {"data": {"train_centres": CENTRES}, "train": {"rounds": 2, "threads": 1},
                "federation": {"eval_every": 0}, "secagg": {"enabled": secure}}
    update = {k: getattr(tiny_config, k).model_copy(update=v) for k, v in sections.items()}
    # compared bit for bit with the engine: the rounding dither comes from the seed in this test
    return tiny_config.model_copy(update={**update, "reproducible_secrets": True})


@pytest.mark.timeout(1500)  # ~1.5 min of CPU; much longer in wall time on a shared, loaded machine
def test_flower_deployment_matches_the_engine(tiny_config: Config, tiny_data, phantom_root: Path,
                                              tmp_path: Path) -> None:
    data = dataclasses.replace(tiny_data, train={c: tiny_data.train[c] for c in CENTRES},
                               val={c: tiny_data.val[c] for c in CENTRES})
    plain_cfg, secure_cfg = _config(tiny_config, False), _config(tiny_config, True)
    apps = {name: write_app(tmp_path / f"app-{name}", cfg, tmp_path / f"run-{name}", poll_interval=0.1,
                            stage_timeout=300.0)
            for name, cfg in (("plain", plain_cfg), ("secure", secure_cfg))}
    federation = LocalFederation({c: phantom_root for c in CENTRES}, tmp_path / "flower")
    started: list[int] = []
    with federation:
        started = federation.pids()
        assert len(started) >= 4  # SuperLink + 3 SuperNodes (+ their SuperExec processes)
        for name, app_dir in apps.items():
            result = federation.run(app_dir, timeout=600)
            assert "completed" in result.status
            started += [p for p in federation.pids() if p not in started]
    assert not [p for p in started if _alive(p)], "a Flower process outlived the federation"
    # every ClientApp task was forked from the pre-started interpreter, none started and imported afresh
    forked = (tmp_path / "flower" / "logs" / "prestart.log").read_text().count("forked ClientApp task")
    assert forked >= 2 * 2 * len(CENTRES), forked  # 2 runs x 2 rounds x 3 nodes, at least one task each

    plain_ref = train(plain_cfg, tmp_path / "engine-plain", data)
    secure_ref = train(secure_cfg, tmp_path / "engine-secure", data)
    plain, secure = load_global(tmp_path / "run-plain"), load_global(tmp_path / "run-secure")
    # FedAvg: the same model, bit for bit, although every client trained in its own fresh process
    assert torch.equal(plain, plain_ref.run.global_vector)
    # SecAgg: identical to the engine's SecAgg (same dither, the masks cancel exactly) ...
    assert torch.equal(secure, secure_ref.run.global_vector)
    # ... and round 0's securely aggregated model is within the quantisation bound of the plain one
    after_round0 = {name: ServerRecord(tmp_path / f"run-{name}").round(1).global_vector for name in apps}
    start = ServerRecord(tmp_path / "run-plain").round(0).global_vector
    bound = mean_error_bound(secure_cfg.secagg, {c: len(data.train[c]) for c in CENTRES},
                             float((after_round0["plain"] - start).abs().max()))
    gap = (after_round0["secure"] - after_round0["plain"]).abs().max().item()
    assert 0 < gap <= bound + 1e-7, (gap, bound)
    # the curious server's record: every update in the plain run, only the aggregate under SecAgg
    assert sorted(ServerRecord(tmp_path / "run-plain").round(1).updates) == CENTRES
    view = ServerRecord(tmp_path / "run-secure").round(1)
    assert view.secure and view.updates == {}
    history = read_json(tmp_path / "run-secure" / "history.json")
    assert [h["survivors"] for h in history] == [CENTRES, CENTRES]
    assert all(set(h["flower"]) >= {"train.secagg_fit", "train.secagg_share", "train.secagg_mask",
                                    "train.secagg_check", "train.secagg_unmask"} for h in history)
