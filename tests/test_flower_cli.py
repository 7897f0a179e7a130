"""``fedi2i flower``: deployment files that Flower accepts, and a clear message without the extra."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import fedi2i.cli.flower_cmd  # noqa: F401  (registers the flower commands)
from fedi2i.cli import app
from fedi2i.config import config_from_dict
from fedi2i.fl.flower import deploy

runner = CliRunner()


def test_flower_config_writes_app_connection_and_commands(tmp_path: Path) -> None:
    out = tmp_path / "deploy"
    result = runner.invoke(app, ["flower", "config", "-c", "tiny", "--secagg", "--rounds", "3", "--out", str(out),
                                 "--superlink", "link.hospital-net.example:8000", "--root-certificates", "ca.pem",
                                 "--run-dir", "/srv/fedi2i/run1"])
    assert result.exit_code == 0, result.output
    app_cfg = tomllib.loads((out / "app" / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    cfg = config_from_dict(yaml.safe_load(app_cfg["fedi2i-config"]))
    assert cfg.secagg.enabled and cfg.train.rounds == 3 and app_cfg["run-dir"] == "/srv/fedi2i/run1"
    conn = tomllib.loads((out / "flwr-home" / "config.toml").read_text())["superlink"]["fedi2i"]
    assert conn == {"address": "link.hospital-net.example:8000", "root-certificates": "ca.pem"}
    commands = (out / "commands.txt").read_text()
    assert "--enable-supernode-auth" in commands and "--ssl-certfile" in commands
    for centre in cfg.data.train_centres:  # one SuperNode per training centre, TLS and node key
        assert f"centre-id=\"{centre}\"" in commands or f"centre-id=\\\"{centre}\\\"" in commands
    assert commands.count("--auth-supernode-private-key") == len(cfg.data.train_centres)


def test_flower_config_rejects_a_bad_address() -> None:
    result = runner.invoke(app, ["flower", "config", "--superlink", "no-port"])
    assert result.exit_code == 2 and "host:port" in result.output


def test_flower_local_without_flwr_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise deploy.FlowerUnavailable(deploy.INSTALL_HINT)

    monkeypatch.setattr(deploy, "require_flower", missing)
    result = runner.invoke(app, ["flower", "local", "-c", "tiny"])
    assert result.exit_code == 2
    assert "pip install fedi2i[flower]" in " ".join(result.output.split())  # rich wraps long lines


def test_flower_keys_writes_each_centres_identity_and_the_key_list(tmp_path: Path) -> None:
    from tests.cli_harness import EXIT_USAGE, assert_clear_error, run_cli

    out = tmp_path / "identity"
    result = run_cli("flower", "keys", "A", "B", "--out", out)
    assert result.code == 0, result.output
    assert "federation-keys.yaml" in result.output
    listed = yaml.safe_load((out / "federation-keys.yaml").read_text())
    assert sorted(listed) == ["A", "B"] and all(len(k) == 64 for k in listed.values())
    assert (out / "A.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    again = run_cli("flower", "keys", "A", "--out", out)  # a centre's key is never replaced silently
    assert_clear_error(again, EXIT_USAGE, "A.key")
