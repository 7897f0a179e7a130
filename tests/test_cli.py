"""The command line explains itself and turns user mistakes into clear messages."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fedi2i.cli import app

runner = CliRunner()


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("data", "train", "attack"):
        assert command in result.output
    train_help = runner.invoke(app, ["train", "--help"])
    assert "--strategy" in train_help.output and "--secagg" in train_help.output
    assert "--record-rounds" in train_help.output and "--centralised" in train_help.output


def test_train_cli_tiny(phantom_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "-c", "tiny", "--data", str(phantom_root), "--out", str(out),
                                 "--rounds", "1", "--record-rounds", "0", "-q"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["finished"] and metrics["mode"] == "federated"
    assert (out / "record" / "round_0000.safetensors").exists()


def test_train_cli_errors_are_clear(phantom_root: Path, tmp_path: Path) -> None:
    bad = runner.invoke(app, ["train", "-c", "tiny", "--data", str(phantom_root), "--strategy", "fedmedian",
                              "--secagg", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "individual update" in bad.output
    typo = runner.invoke(app, ["train", "-c", "tiny", "--set", "train.learnrate=1", "--out", str(tmp_path / "y")])
    assert typo.exit_code == 2 and "train.learnrate: unknown key" in typo.output
    krum = runner.invoke(app, ["train", "-c", "tiny", "--data", str(phantom_root), "--strategy", "krum",
                               "--set", "federation.krum_f=1", "--out", str(tmp_path / "z")])
    assert krum.exit_code == 2 and "Krum" in krum.output
    missing = runner.invoke(app, ["train", "-c", "tiny", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "w")])
    assert missing.exit_code == 3 and "does not exist" in missing.output  # a data error
