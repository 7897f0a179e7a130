"""The command line explains itself and turns user mistakes into clear messages."""

from __future__ import annotations

import json
import re
import subprocess
import sys
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


def test_preset_help_names_every_shipped_preset() -> None:
    from fedi2i.config import preset_names

    assert "reference" in preset_names()
    for command in (["audit"], ["train"], ["attack", "poison"], ["flower", "config"]):
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0, result.output
        flat = " ".join(result.output.replace("│", " ").split())  # the help box wraps the text
        assert f"({', '.join(preset_names())})" in flat, (command, flat)


def test_train_cli_tiny(phantom_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "-c", "tiny", "--data", str(phantom_root), "--out", str(out),
                                 "--rounds", "2", "--record-rounds", "0"])
    assert result.exit_code == 0, result.output
    # the bar shows the validation of round 1's model, which came back while round 2 ran
    assert re.search(r"2/2 .*val MAE \d+ HU \(round 1\)", result.output), result.output
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


def _cli_with(patch: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess after ``patch`` (Python) replaced part of it, to reach error paths on purpose."""
    code = ("import sys, fedi2i.cli\ncli_app = sys.modules['fedi2i.cli.app']\n" + patch +
            f"\nsys.argv = ['fedi2i', *{list(args)!r}]\ncli_app.app()\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_internal_error_points_to_a_log_not_a_traceback() -> None:
    patch = ("def boom(*a, **k):\n    raise RuntimeError('boom in the config loader')\n"
             "cli_app.load_config = boom")
    quiet = _cli_with(patch, "train", "-c", "tiny")
    assert quiet.returncode == 1 and "Traceback" not in quiet.stderr, quiet.stderr
    assert "internal error" in quiet.stderr and "boom in the config loader" in quiet.stderr
    log = Path(re.search(r"the traceback is in (\S+\.log)", quiet.stderr).group(1))
    assert "Traceback" in log.read_text() and "boom" in log.read_text()
    log.unlink()
    verbose = _cli_with(patch, "train", "-c", "tiny", "--verbose")
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr


def test_data_error_prints_patient_and_file_as_written() -> None:
    """Brackets in a data error are text, not rich markup: the prefix and a path with [/x] survive."""
    patch = ("from fedi2i.errors import DataError\n"
             "def bad(*a, **k):\n    raise DataError('mask is empty', patient='1BA001', path='/d/[/x]/mask.nii.gz')\n"
             "cli_app.load_config = bad")
    result = _cli_with(patch, "train", "-c", "tiny")
    assert result.returncode == 3, result.stderr
    assert "[patient 1BA001, file /d/[/x]/mask.nii.gz] mask is empty" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_import_loads_no_torch() -> None:
    """`fedi2i --help` and config errors stay fast: torch, MONAI and matplotlib load inside commands only."""
    code = "import sys, fedi2i.cli; print(sorted(m for m in ('torch', 'monai', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_cli_method_names_match_the_attacks() -> None:
    from fedi2i.attacks.inversion.settings import METHODS as INVERSION
    from fedi2i.attacks.membership import METHODS as MEMBERSHIP
    from fedi2i.cli.attack_inversion import Method
    from fedi2i.cli.attack_membership import METHOD_NAMES

    assert tuple(m.value for m in Method) == tuple(INVERSION)
    assert METHOD_NAMES == tuple(MEMBERSHIP)


def test_cli_choices_match_the_config_schema() -> None:
    from typing import get_args

    from fedi2i.attacks.membership.settings import MembershipSettings
    from fedi2i.cli.attack_membership import Sigma
    from fedi2i.cli.data_cmd import Source
    from fedi2i.config import DataConfig

    assert tuple(s.value for s in Sigma) == get_args(MembershipSettings.model_fields["sigma"].annotation)
    assert tuple(s.value for s in Source) == get_args(DataConfig.model_fields["source"].annotation)


def test_shell_completion_offers_presets_and_fixed_choices(tmp_path: Path) -> None:
    """What a user's shell gets on <TAB>: the shipped presets for a preset option, the set of a fixed choice."""
    from tests.cli_harness import cli_env, run_cli

    def complete(words: str) -> list[str]:
        env = {**cli_env(), "_FEDI2I_COMPLETE": "complete_bash", "COMP_WORDS": words,
               "COMP_CWORD": str(len(words.split(" ")) - 1)}
        result = run_cli(env=env, timeout=120)
        assert result.code == 0, str(result)
        return result.stdout.split()

    assert {"quick", "tiny"} <= set(complete("fedi2i audit --preset "))
    assert complete("fedi2i train -c ti") == ["tiny"]
    assert complete("fedi2i data build --source ") == ["head", "phantom"]
    assert complete("fedi2i attack membership --sigma p") == ["pooled", "per-sample"]
    refused = run_cli("data", "build", "--source", "mri", "--out", tmp_path / "d", timeout=120)
    assert refused.code == 2 and "'mri' is not one of 'head', 'phantom'" in refused.output, str(refused)

