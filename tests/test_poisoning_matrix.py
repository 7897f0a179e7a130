"""The poisoning matrix end to end on the tiny phantom: robust aggregation, detector, resume, outputs, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fedi2i.attacks.poisoning import plan_poison, run_poison_matrix, summarise_poison
from fedi2i.config import AttacksConfig, Config

POISON = {"attacks": ["update_noise"], "levels": ["huge"], "update_noise": {"huge": 1000.0},
          "n_malicious": [1], "malicious": ["A"], "rules": ["fedavg", "fedmedian"], "rounds": 3,
          "eval_every": 3, "seeds": 1}


def _config(tiny_config: Config) -> Config:
    # a few larger steps, so that the model learns (unseen MAE ~500 HU, untrained ~1000) in seconds
    train = tiny_config.train.model_copy(update={"local_steps": 6, "lr": 0.02})
    return tiny_config.model_copy(update={"attacks": AttacksConfig(poison=POISON), "train": train})


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory, phantom_root: Path, tiny_data) -> tuple:
    from fedi2i.config import load_config

    cfg = _config(load_config("tiny", {"data.root": str(phantom_root)}))
    out = tmp_path_factory.mktemp("poison")
    results = run_poison_matrix(cfg, tiny_data, out)
    return cfg, out, {r["key"]: r for r in results}


def _mae(result: dict) -> float:
    return float("inf") if result["collapsed"] or result["unseen_mean"]["mae"] is None else result["unseen_mean"]["mae"]


def test_huge_noise_ruins_fedavg_not_the_median(matrix: tuple) -> None:
    _, _, res = matrix
    assert set(res) == {"fedavg__baseline", "fedavg__update_noise__huge__m1",
                        "fedmedian__baseline", "fedmedian__update_noise__huge__m1"}
    clean_avg, bad_avg = _mae(res["fedavg__baseline"]), _mae(res["fedavg__update_noise__huge__m1"])
    clean_med, bad_med = _mae(res["fedmedian__baseline"]), _mae(res["fedmedian__update_noise__huge__m1"])
    assert clean_avg < 800 and clean_med < 800  # both rules learn without an attack
    assert bad_avg > clean_avg + 200  # FedAvg is ruined (or collapses outright)
    assert abs(bad_med - clean_med) < 0.15 * clean_med  # the median shrugs one malicious centre off
    assert bad_med < bad_avg


def test_detector_flags_attacker_but_not_honest_centres(matrix: tuple) -> None:
    _, _, res = matrix
    # the phantom centres differ by scanner (MRI gain, contrast, noise, CT noise/offset): honest heterogeneity
    assert res["fedmedian__update_noise__huge__m1"]["detector"]["flagged"] == ["A"]
    assert res["fedmedian__baseline"]["detector"]["flagged"] == []
    assert res["fedavg__baseline"]["detector"]["flagged"] == []


def test_results_are_json_with_quality_and_history(matrix: tuple) -> None:
    _, out, res = matrix
    r = res["fedmedian__update_noise__huge__m1"]
    on_disk = json.loads((out / "cells" / "fedmedian__update_noise__huge__m1.json").read_text())
    # the cell sums up its training run: its figures are the run's own metrics.json (another writer)
    run_metrics = json.loads((Path(r["run_dir"]) / "metrics.json").read_text())
    assert {m: on_disk["unseen"]["E"][m] for m in ("mae", "psnr", "ssim")} == \
        {m: run_metrics["unseen"]["E"][m] for m in ("mae", "psnr", "ssim")} and set(r["unseen"]) == {"E"}
    assert set(r["honest"]) == {"B", "C", "D"} and set(r["malicious_centres"]) == {"A"}
    assert set(r["unseen_mean"]) == {"mae", "psnr", "ssim"}
    assert Path(r["history_path"]).exists() and r["val_curve"][-1]["round"] == 3
    # a matrix run draws no figures of its own (the matrix plots its summary): the run is done without them
    assert (Path(r["run_dir"]) / "model.safetensors").exists() and not (Path(r["run_dir"]) / "figures").exists()


def test_rerun_skips_finished_cells(matrix: tuple, tiny_data) -> None:
    cfg, out, res = matrix
    seen = []
    again = run_poison_matrix(cfg, tiny_data, out, on_cell=lambda cell, result, reused: seen.append(reused))
    assert seen == [True] * 4
    assert {r["key"]: r["unseen_mean"] for r in again} == {k: v["unseen_mean"] for k, v in res.items()}
    changed = cfg.model_copy(update={"attacks": AttacksConfig(poison={**POISON, "update_noise": {"huge": 999.0}})})
    cells = [c for c in plan_poison(changed, data=tiny_data) if c.attack == "none"]
    reused = []
    run_poison_matrix(changed, tiny_data, out, cells=cells, on_cell=lambda c, r, u: reused.append(u))
    assert reused == [True, True]  # the baselines do not depend on the attack's strength


def test_summary_tables_and_figures(matrix: tuple) -> None:
    _, out, res = matrix
    summary = summarise_poison(list(res.values()), out / "summary")
    for name in ("quality.csv", "quality.json", "detection.csv", "detection.json", "poisoning.md", "summary.json"):
        assert (out / "summary" / name).stat().st_size > 50
    assert len(summary["figures"]) == 4
    for fig in summary["figures"]:
        assert (out / "summary" / fig).stat().st_size > 5000
    assert "| fedmedian | 1 |" in summary["markdown"]
    det = json.loads((out / "summary" / "detection.json").read_text())
    assert det["attacks"]["update_noise"]["by_level"]["huge"]["all"]["auc"] == 1.0


def test_cli_reuses_cells_and_writes_outputs(matrix: tuple, tmp_path: Path) -> None:
    import fedi2i.cli.attack_poison  # noqa: F401  (registers the command)
    from fedi2i.cli.app import app

    cfg, out, _ = matrix
    path = tmp_path / "poison.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    result = CliRunner().invoke(app, ["attack", "poison", "--config", str(path), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")} == stamps  # all reused
    assert len(stamps) == 4 and (out / "poisoning.md").exists()
    assert "| fedmedian | 1 |" in (out / "poisoning.md").read_text()
    bad = CliRunner().invoke(app, ["attack", "poison", "--config", str(path), "--out", str(out), "--quiet",
                                   "--set", "attacks.poison.levels=[nope]"])
    plan = CliRunner().invoke(app, ["attack", "poison", "--config", str(path), "--plan"])
    assert plan.exit_code == 0 and "4 cells" in plan.output
    assert bad.exit_code == 2 and "no value for" in bad.output and "nope" in bad.output


def test_replicates_pair_clean_and_attacked_runs_by_seed(matrix: tuple, tiny_data, tmp_path: Path) -> None:
    """Three seeds: replicate 0 is the matrix already run (reused, same keys and fingerprints); replicates 1
    and 2 train every deciding cell again, clean and attacked with the same seed, and the audit pairs them
    by that seed into an interval."""
    import shutil

    from fedi2i.audit.findings import poison_effects
    from fedi2i.audit.schema import CellEntry

    cfg, out, res = matrix
    replicated = cfg.model_copy(update={"attacks": AttacksConfig(poison={**POISON, "seeds": 3})})
    cells = plan_poison(replicated, data=tiny_data)
    assert [c.key for c in cells if c.replicate == 0] == list(res)
    seeds = {r: {c.seed for c in cells if c.replicate == r} for r in range(3)}
    assert seeds[0] == {cfg.seed} and all(len(s) == 1 for s in seeds.values())  # one seed per replicate
    assert len(set.union(*seeds.values())) == 3  # and a different one for each
    assert sorted(c.key for c in cells if c.replicate == 2) == sorted(f"{k}__r2" for k in res)

    work = tmp_path / "poison"
    shutil.copytree(out, work)
    reused: list[bool] = []
    results = run_poison_matrix(replicated, tiny_data, work, on_cell=lambda c, r, u: reused.append(u))
    assert reused == [True] * 4 + [False] * 8
    by_key = {r["key"]: r for r in results}
    assert by_key["fedavg__baseline__r1"]["seed"] == by_key["fedavg__update_noise__huge__m1__r1"]["seed"]
    assert by_key["fedavg__baseline__r1"]["unseen_mean"]["mae"] != by_key["fedavg__baseline"]["unseen_mean"]["mae"]

    stored = {f"poison/{k}": CellEntry(key=f"poison/{k}", kind="poison", title=k, status="ok", result=r).to_dict()
              for k, r in by_key.items()}
    effects = {(e.rule, e.attack): e for e in poison_effects(stored)}
    median = effects[("fedmedian", "update_noise")]
    assert median.seeds == [c.seed for c in cells if c.key.startswith("fedmedian__baseline")]
    assert median.clean_mae == [by_key[k]["unseen_mean"]["mae"] for k in
                                ("fedmedian__baseline", "fedmedian__baseline__r1", "fedmedian__baseline__r2")]
    assert median.ratio is not None and median.judged  # the median with 1 of 4 malicious: a deciding cell


def test_collapse_is_recorded_not_raised(tiny_config: Config, tiny_data, tmp_path: Path, monkeypatch) -> None:
    """Two centres start sending NaN in round 1: the median is left with 2 of 4 updates and stops."""
    import torch

    from fedi2i.attacks.poisoning import matrix as matrix_module
    from fedi2i.attacks.poisoning import run_poison_cell

    calls = {"n": 0}

    def nan_after_first_round(delta: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        calls["n"] += 1
        return delta if calls["n"] <= 2 else torch.full_like(delta, float("nan"))

    monkeypatch.setattr(matrix_module, "attack_options",
                        lambda *a, **k: ({}, {"A": nan_after_first_round, "B": nan_after_first_round}))
    cfg = _config(tiny_config).model_copy(update={"attacks": AttacksConfig(poison={
        **POISON, "rules": ["fedmedian"], "n_malicious": [2], "malicious": ["A", "B"], "baseline": False})})
    cell = plan_poison(cfg, data=tiny_data)[0]
    result = run_poison_cell(cfg, tiny_data, cell, tmp_path)
    assert result["collapsed"] and result["collapsed_round"] == 1 and result["diverged"]
    assert "needs n >= 3" in result["collapse_reason"] and result["unseen_mean"] == {}
    assert json.loads((tmp_path / "cells" / f"{cell.key}.json").read_text())["collapsed"]
