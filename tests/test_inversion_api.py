"""Gradient inversion: plan, settings, errors, matching, tables, DP accounting and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fedi2i.attacks.inversion import (InversionCell, InversionSettings, observe, plan_inversion, run_inversion_cell,
                                      score, verdict, write_inversion_table)
from fedi2i.attacks.inversion.victim import VictimSetting, dp_epsilon, start_model, victim_round
from fedi2i.config import load_config
from fedi2i.data.federation import load_federation
from fedi2i.errors import ConfigError, RecordError


@pytest.fixture(scope="module")
def small(phantom_root: Path):
    config = load_config("tiny", {"data.root": str(phantom_root), "data.image_size": 16})
    return config, load_federation(config.data, config.seed)


@pytest.fixture(scope="module")
def victim_run(small, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config, data = small
    work = tmp_path_factory.mktemp("inversion")
    setting = VictimSetting(2, 1, "early", "none", None, "sgd", 0.003, 1.0, 0)
    return victim_round(config, data, setting, work, start_model(config, data, "early", work, 1))


def test_plan_covers_the_table_and_one_axis_at_a_time() -> None:
    settings = InversionSettings(clients=["A", "B"])
    cells = plan_inversion(settings)
    main = [c for c in cells if c.local_steps == 1 and c.stage == "early" and c.client == "A"]
    assert len(main) == 3 * 3 * 3  # methods x batch sizes x defences
    axes = [c for c in cells if c not in main]
    assert {c.method for c in axes} == {"i2i"} and all(c.defence == "none" for c in axes)
    assert {(c.local_steps, c.stage, c.client) for c in axes} == {(5, "early", "A"), (1, "trained", "A"),
                                                                 (1, "early", "B")}
    assert len({c.key for c in cells}) == len(cells) == plan_inversion(settings).__len__()
    dp = [c for c in cells if c.defence == "dp"]
    assert all(c.noise_multiplier is None for c in dp)  # filled from the config at run time


def test_settings_from_config_and_bad_settings(tiny_config) -> None:
    cfg = tiny_config.model_copy(update={"attacks": {"inversion": {"batch_sizes": [2], "i2i": {"iterations": 7}}}})
    settings = InversionSettings.from_config(cfg)
    assert settings.batch_sizes == [2] and settings.i2i.iterations == 7 and settings.ig.iterations == 300
    merged = InversionSettings.from_config(cfg, {"i2i": {"lr": 0.5}})
    assert merged.i2i.lr == 0.5 and merged.i2i.iterations == 7  # overrides merge into the config's values
    with pytest.raises(ConfigError, match="unknown key"):
        InversionSettings.from_config(cfg, {"i2i": {"iterationz": 3}})
    with pytest.raises(ConfigError, match="not training centres"):
        InversionSettings.from_config(cfg, {"clients": ["E"]})
    with pytest.raises(ConfigError, match="batch sizes"):
        InversionSettings.from_config(cfg, {"batch_sizes": [0]})


def test_bad_round_and_client_give_clear_errors(small, victim_run: Path, tmp_path: Path) -> None:
    with pytest.raises(RecordError, match=r"round 3 was not recorded; recorded rounds: \[0\]"):
        observe(victim_run, 3, "A")
    with pytest.raises(RecordError, match="client 'Z' is not in run"):
        observe(victim_run, 0, "Z")
    with pytest.raises(RecordError, match="no curious-server record"):
        observe(tmp_path, 0, "A")
    config, data = small
    with pytest.raises(ConfigError, match="not a training centre"):
        run_inversion_cell(config, data, InversionCell("i2i", 1, 1, "early", "none", "E"), tmp_path)
    from fedi2i.attacks.inversion import run_attack

    with pytest.raises(ConfigError, match="unknown inversion method"):
        run_attack(observe(victim_run, 0, "A"), "gan", InversionSettings())


@pytest.mark.filterwarnings("ignore:divide by zero")  # a perfect match has infinite PSNR
def test_hungarian_matching_undoes_a_permutation() -> None:
    gen = torch.Generator().manual_seed(0)
    mr = torch.rand(4, 1, 16, 16, generator=gen)
    ct = torch.rand(4, 1, 16, 16, generator=gen) * 2 - 1
    perm = torch.tensor([2, 0, 3, 1])
    got = score(mr, ct, mr[perm], ct[perm])
    assert got["mri_ssim"] == pytest.approx(1.0) and got["ct_ssim"] == pytest.approx(1.0)
    assert [int(perm[j]) for j in got["assignment"]] == [0, 1, 2, 3]
    noisy = score(mr, ct, torch.rand(6, 1, 16, 16, generator=gen), ct[perm[[0, 1, 2, 3, 0, 1]]])
    assert noisy["mri_ssim"] < 0.5 and len(noisy["assignment"]) == 4  # best 4 of 6 reconstructions


def test_table_reads_the_anatomy_margin_and_the_gap(tmp_path: Path) -> None:
    def row(method: str, ssim: float, margin: float, ci: tuple[float, float], ratio: float,
            defence: str = "none") -> dict:
        return {"key": f"{method}-{defence}", "method": method, "batch": 1, "steps": 1, "stage": "early",
                "client": "A", "defence": defence, "noise_multiplier": 0.3 if defence == "dp" else None,
                "dp_epsilon_round": 12.0, "mri_ssim": ssim, "mri_psnr": 12.0, "ct_ssim": 0.05, "ct_psnr": 9.0,
                "iterations": 10, "seconds": 1.0,
                "anatomy": {"deciding": {"modality": "mri", "metric": "ssim", "margin": margin, "ci95": list(ci)},
                            "mri": {"reid": {"top1": 1.0, "chance": 0.125}}},
                "objective_gap": {"reconstruction": 0.1, "truth": 0.1 / ratio, "ratio": ratio, "large": ratio >= 2}}

    results = [row("dlg", 0.02, 0.0, (-0.01, 0.01), 1e5), row("i2i", 0.46, 0.30, (0.21, 0.38), 1e3),
               row("i2i", 0.01, 0.0, (-0.02, 0.02), 1.0, "dp")]
    text = write_inversion_table(results, tmp_path / "table.md").read_text()
    assert "| i2i | 1 | 1 | early | A | dp (z=0.3, eps=12/round) | 0.010 | 0.050 | MRI +0.000 [-0.020, +0.020] | " \
        "100% (12%) | 1x | low |" in text
    assert "| dlg | 1 | 1 | early | A | none | 0.020 | 0.050 | MRI +0.000 [-0.010, +0.010] | 100% (12%) | 1e+05x | " \
        "search-limited: leak not excluded |" in text
    assert "1 of 3 settings recover this patient's anatomy" in text and "1 are search-limited" in text
    assert "Overall: high." in text
    del results[1]["anatomy"]  # a cell scored by an older fedi2i
    text = write_inversion_table(results, tmp_path / "table.md").read_text()
    assert "not scored" in text and "1 setting(s) were scored by an older fedi2i" in text
    assert "Overall: search-limited: leak not excluded." in verdict(results)


def test_dp_epsilon_falls_with_noise() -> None:
    assert dp_epsilon(0.0, 1.0, 1, 1e-5) == float("inf")
    high, low = dp_epsilon(0.5, 1.0, 1, 1e-5), dp_epsilon(2.0, 1.0, 1, 1e-5)
    assert high > low > 0
    assert dp_epsilon(1.0, 0.01, 100, 1e-5) < dp_epsilon(1.0, 0.01, 1000, 1e-5)


def test_cell_result_is_json_with_figure(small, tmp_path: Path) -> None:
    config, data = small
    settings = InversionSettings().with_iterations(2)
    settings = settings.model_copy(update={"i2i": settings.i2i.model_copy(update={"level_iterations": 1})})
    result = run_inversion_cell(config, data, InversionCell("i2i", 2, 1, "early", "dpsgd", noise_multiplier=1.0),
                                tmp_path, settings=settings)
    json.dumps(result)
    assert result["dp_epsilon_round"] > 0 and result["images_reconstructed"] == 2
    assert Path(result["figure"]).exists()
    for key in ("method", "batch", "steps", "defence", "round", "client", "mri_ssim", "mri_psnr", "ct_ssim",
                "ct_psnr", "iterations", "seconds"):
        assert key in result


def test_cli_attacks_a_recorded_round(victim_run: Path, tmp_path: Path) -> None:
    from fedi2i.cli import app
    import fedi2i.cli.attack_inversion  # noqa: F401  (registers the command)

    runner = CliRunner()
    out = tmp_path / "out"
    ok = runner.invoke(app, ["attack", "inversion", "--run", str(victim_run), "--client", "B", "--round", "0",
                             "--method", "ig", "--iterations", "2", "--out", str(out), "--quiet"])
    assert ok.exit_code == 0, ok.output
    result = json.loads((out / "ig-r0-B.json").read_text())
    assert result["truth_scope"] == "batch" and result["batch"] == 2 and (out / "figures" / "ig-r0-B.png").exists()
    bad = runner.invoke(app, ["attack", "inversion", "--run", str(victim_run), "--round", "7", "--quiet"])
    assert bad.exit_code == 4 and "round 7 was not recorded" in bad.output  # run-folder state: exit 4
    bad = runner.invoke(app, ["attack", "inversion", "--run", str(victim_run), "--client", "Q", "--quiet"])
    assert bad.exit_code == 4 and "client Q is not in round 0" in bad.output


def test_cli_grid_is_its_own_command_and_takes_its_options(victim_run: Path, tmp_path: Path) -> None:
    from fedi2i.cli import app
    import fedi2i.cli.attack_inversion  # noqa: F401  (registers the commands)

    runner = CliRunner()
    out = tmp_path / "grid"
    ok = runner.invoke(app, ["attack", "inversion-grid", "--run", str(victim_run), "--iterations", "3", "--set",
                             "methods=[dlg]", "--set", "defences=[none]", "--out", str(out), "--quiet"])
    assert ok.exit_code == 0, ok.output
    assert f"results in {out} (results.json" in ok.output and (out / "table.md").is_file()
    cells = json.loads((out / "results.json").read_text())
    assert [(c["method"], c["defence"], c["iterations"]) for c in cells] == [("dlg", "none", 3)]
    # options of the single attack are refused, not ignored
    refused = runner.invoke(app, ["attack", "inversion-grid", "--run", str(victim_run), "--client", "B"])
    assert refused.exit_code == 2 and "No such option" in refused.output
    gone = runner.invoke(app, ["attack", "inversion", "--run", str(victim_run), "--grid"])
    assert gone.exit_code == 2 and "No such option" in gone.output


def test_long_local_training_is_replayed_in_capped_steps() -> None:
    from fedi2i.attacks.inversion.base import MAX_REPLAY_STEPS, _capped

    assert _capped(3, 0.1) == (3, 0.1)  # exact replay up to the cap
    steps, lr = _capped(4 * MAX_REPLAY_STEPS, 0.1)
    assert steps == MAX_REPLAY_STEPS and lr == pytest.approx(0.4)  # same total step length
