"""Hostile input to the installed ``fedi2i`` command: configs, run folders, CLI options, Flower settings.

Each case runs the real console script as a subprocess and checks what a user sees: the exit code of
the error's class (2 usage or config, 3 data, 4 run state), a message that names the file, key or
option at fault, no traceback, and that a run folder the command was pointed at is unchanged (or,
for the cases that should work, still resumes). Data-layer inputs have their own module
(test_hostile_data.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.cli_harness import (EXIT_RUN_STATE, EXIT_USAGE, assert_clear_error, assert_unchanged, cli_env, run_cli,
                               tree_hash)

MARKER_NAME = "planted-code-ran"


class Planted:
    """Unpickling this writes a marker file: what a checkpoint planted by an attacker would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


@pytest.fixture(scope="module")
def trained(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny run with a curious-server record, shared by every run-folder case."""
    run = tmp_path_factory.mktemp("hostile") / "run"
    result = run_cli("train", "-c", "tiny", "--data", phantom_root, "--out", run, "--rounds", "2",
                     "--record-rounds", "0,1", "-q", env=cli_env(run.parent / "cache"))
    assert result.code == 0, str(result)
    return run


@pytest.fixture()
def run_copy(trained: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def _train(phantom_root: Path, out: Path, *extra: str | Path) -> list[str | Path]:
    return ["train", "-c", "tiny", "--data", phantom_root, "--out", out, "-q", *extra]


# --- configuration: each a clear error (exit 2) that names the key, and nothing written -------------------

CONFIG_CASES = [
    ("rounds-zero", ["--rounds", "0"], "train.rounds"),
    ("rounds-negative", ["--set", "train.rounds=-3"], "train.rounds"),
    ("batch-zero", ["--set", "train.batch_size=0"], "train.batch_size"),
    ("image-size-zero", ["--set", "data.image_size=0"], "data.image_size"),
    ("image-size-odd", ["--set", "data.image_size=30"], "data.image_size"),
    ("lr-negative", ["--set", "train.lr=-0.1"], "train.lr"),
    ("lr-zero", ["--set", "train.lr=0"], "train.lr"),
    ("threads-negative", ["--set", "train.threads=-2"], "train.threads"),
    ("channels-empty", ["--set", "model.channels=[]"], "model.channels"),
    ("channels-zero", ["--set", "model.channels=[8,0,16]"], "model.channels"),
    ("group-norm-channels", ["--set", "model.norm=group", "--set", "model.channels=[6,12,24]"], "model.channels"),
    ("train-centres-empty", ["--set", "data.train_centres=[]"], "data.train_centres"),
    ("unseen-also-trains", ["--set", "data.unseen_centres=[A]"], "data.unseen_centres"),
    ("centre-twice", ["--set", "data.train_centres=[A,A,B]"], "data.train_centres"),
    ("record-round-outside", ["--record-rounds", "5"], "federation.record_rounds"),
    ("record-round-negative", ["--set", "federation.record_rounds=[-1]"], "federation.record_rounds"),
    ("attacks-typo", ["--set", "attacks.inverson.methods=[dlg]"], "attacks.inverson"),
    ("all-malicious", ["--set", "attacks.poison.n_malicious=[4]"], "attacks.poison.n_malicious"),
    ("unknown-key", ["--set", "train.learnrate=1"], "train.learnrate"),
    ("set-bad-yaml", ["--set", "train.lr=[1,"], "train.lr"),
    ("set-no-equals", ["--set", "train.rounds"], "train.rounds"),
    ("set-no-key", ["--set", "=3"], "--set"),
    ("strategy-unknown", ["--strategy", "fedmean"], "--strategy"),
    ("secagg-with-median", ["--strategy", "fedmedian", "--secagg"], "fedmedian"),
    ("dp-delta", ["--set", "dp.delta=2"], "dp.delta"),
    ("trimmed-beta", ["--set", "federation.trimmed_beta=0.7"], "federation.trimmed_beta"),
    ("fractions", ["--set", "data.val_fraction=0.6", "--set", "data.test_fraction=0.5"], "data.val_fraction"),
    ("min-clients", ["--set", "federation.min_clients=9"], "federation.min_clients"),
    ("rounds-not-a-number", ["--rounds", "many"], "--rounds"),
    ("record-rounds-words", ["--record-rounds", "first,last"], "--record-rounds"),
]


@pytest.mark.parametrize("args,name", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_setting_is_a_clear_config_error(phantom_root: Path, tmp_path: Path, args: list[str], name: str) -> None:
    out = tmp_path / "run"
    result = run_cli(*_train(phantom_root, out, *args), cwd=tmp_path)
    assert_clear_error(result, EXIT_USAGE, name)
    assert not out.exists() and not (tmp_path / "runs").exists(), "a refused config still wrote a run folder"


def _config_file(tmp_path: Path, kind: str) -> tuple[Path, str]:
    """A hostile config file and the text its error must name."""
    path = tmp_path / "my.yaml"
    if kind == "not-utf8":
        path.write_bytes(b"name: caf\xe9\ntrain: {rounds: 2}\n")
    elif kind == "folder":
        path = tmp_path / "configs.yaml"
        path.mkdir()
    elif kind == "bad-yaml":
        path.write_text("train: {rounds: 2\n")
    elif kind == "list":
        path.write_text("- train\n- rounds\n")
    elif kind == "missing":
        path = tmp_path / "nowhere.yaml"
    elif kind == "mapping-bad-json":
        mapping = tmp_path / "centres.json"
        mapping.write_text("{not json")
        path.write_text(f"name: t\ndata: {{centre_mapping: {json.dumps(str(mapping))}}}\n")
        return path, "centres.json"
    elif kind == "mapping-list":
        mapping = tmp_path / "centres.json"
        mapping.write_text('["1BA001", "A"]')
        path.write_text(f"name: t\ndata: {{centre_mapping: {json.dumps(str(mapping))}}}\n")
        return path, "centres.json"
    return path, path.name


@pytest.mark.parametrize("kind", ["not-utf8", "folder", "bad-yaml", "list", "missing", "mapping-bad-json",
                                  "mapping-list"])
def test_bad_config_file_is_named(phantom_root: Path, tmp_path: Path, kind: str) -> None:
    path, name = _config_file(tmp_path, kind)
    result = run_cli("train", "-c", path, "--data", phantom_root, "--out", tmp_path / "run", "-q", cwd=tmp_path)
    assert_clear_error(result, EXIT_USAGE, name)


def test_unknown_preset_lists_the_known_ones(tmp_path: Path) -> None:
    result = run_cli("train", "-c", "quik", "--out", tmp_path / "run", cwd=tmp_path)
    assert_clear_error(result, EXIT_USAGE, "quik", "quick")


def test_out_naming_a_file_is_refused(phantom_root: Path, tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    result = run_cli(*_train(phantom_root, target), cwd=tmp_path)
    assert_clear_error(result, EXIT_USAGE, "notes.txt")
    assert target.read_text() == "mine"


# --- run folders: refused before anything is written (exit 4), the folder unchanged ---------------------

RESUME_CASES = [
    ("strategy", ["--strategy", "fedmedian"], "federation.strategy"),
    ("model", ["--set", "model.channels=[8,16]"], "model.channels"),
    ("centralised", ["--centralised"], "mode"),
    ("secagg", ["--secagg"], "secagg.enabled"),
    ("rounds", ["--rounds", "3"], "train.rounds"),
]


@pytest.mark.parametrize("args,key", [c[1:] for c in RESUME_CASES], ids=[c[0] for c in RESUME_CASES])
def test_resume_with_other_settings_is_refused(phantom_root: Path, run_copy: Path, args: list[str], key: str) -> None:
    before = tree_hash(run_copy)
    result = run_cli(*_train(phantom_root, run_copy, "--record-rounds", "0,1", *args))
    assert_clear_error(result, EXIT_RUN_STATE, key, "--fresh", "--out")
    assert_unchanged(before, run_copy)


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "random":
        path.write_bytes(bytes((i * 7919 + 13) % 256 for i in range(len(data))))


@pytest.mark.parametrize("how", ["empty", "truncated", "random"])
def test_damaged_checkpoint_is_named_on_resume(phantom_root: Path, run_copy: Path, how: str) -> None:
    _damage(run_copy / "checkpoint.pt", how)
    before = tree_hash(run_copy)
    result = run_cli(*_train(phantom_root, run_copy, "--record-rounds", "0,1"))
    assert_clear_error(result, EXIT_RUN_STATE, "checkpoint.pt", "--fresh")
    assert_unchanged(before, run_copy)


@pytest.mark.parametrize("how", ["empty", "truncated", "random"])
def test_damaged_record_round_is_named_by_the_attack(run_copy: Path, how: str) -> None:
    _damage(run_copy / "record" / "round_0000.safetensors", how)
    before = tree_hash(run_copy)
    result = run_cli("attack", "inversion", "--run", run_copy, "--round", "0", "--method", "dlg", "-q")
    assert_clear_error(result, EXIT_RUN_STATE, "round_0000.safetensors")
    assert_unchanged(before, run_copy)


@pytest.mark.parametrize("file,content", [("run.json", "{"), ("record/spec.json", "\xff not json"),
                                          ("config.yaml", "train: {rounds: 0}\n")],
                         ids=["run-json", "record-spec", "run-config"])
def test_damaged_run_file_is_named(phantom_root: Path, run_copy: Path, file: str, content: str) -> None:
    (run_copy / file).write_text(content, encoding="latin-1")
    before = tree_hash(run_copy)
    if file == "run.json":
        result = run_cli(*_train(phantom_root, run_copy, "--record-rounds", "0,1"))
    else:
        result = run_cli("attack", "inversion", "--run", run_copy, "--method", "dlg", "-q")
    assert_clear_error(result, EXIT_RUN_STATE, Path(file).name)
    assert_unchanged(before, run_copy)


@pytest.mark.parametrize("args,name", [
    (["--run", "{missing}"], "does not exist"),
    (["--run", "{file}"], "is a file"),
    (["--run", "{run}", "--round", "7"], "round 7"),
    (["--run", "{run}", "--client", "Z", "--round", "0"], "Z"),
], ids=["missing-run", "run-is-file", "round-not-recorded", "unknown-client"])
def test_attack_on_a_wrong_run_is_named(run_copy: Path, tmp_path: Path, args: list[str], name: str) -> None:
    (tmp_path / "a-file").write_text("x")
    paths = {"missing": tmp_path / "nope", "file": tmp_path / "a-file", "run": run_copy}
    before = tree_hash(run_copy)
    result = run_cli("attack", "inversion", *[a.format(**paths) for a in args], "--method", "dlg", "-q")
    assert_clear_error(result, EXIT_RUN_STATE, name)
    assert_unchanged(before, run_copy)


@pytest.mark.parametrize("args,name", [(["inversion", "--method", "gauss"], "--method"),
                                       (["membership", "--rounds", "a,b"], "--rounds"),
                                       (["inversion", "--out", "{file}"], "a-file")],
                         ids=["inversion-method", "membership-rounds", "attack-out-is-file"])
def test_bad_attack_option_is_a_usage_error(run_copy: Path, tmp_path: Path, args: list[str], name: str) -> None:
    (tmp_path / "a-file").write_text("x")
    before = tree_hash(run_copy)
    argv = [a.format(file=tmp_path / "a-file") for a in args]
    result = run_cli("attack", argv[0], "--run", run_copy, *argv[1:], "-q")
    assert_clear_error(result, EXIT_USAGE, name)
    assert_unchanged(before, run_copy)


def test_fresh_removes_the_old_record(phantom_root: Path, run_copy: Path) -> None:
    """--fresh starts over: no record round or result of the old run survives for an attack to read."""
    (run_copy / "attacks").mkdir()
    (run_copy / "attacks" / "old.json").write_text("{}")
    result = run_cli(*_train(phantom_root, run_copy, "--rounds", "1", "--record-rounds", "0", "--fresh"))
    assert result.code == 0, str(result)
    assert sorted(p.name for p in (run_copy / "record").glob("round_*")) == ["round_0000.safetensors"]
    assert not (run_copy / "attacks").exists()
    assert json.loads((run_copy / "metrics.json").read_text())["rounds_done"] == 1
    assert "MAE (HU)" in result.stdout and "…" not in result.stdout, "the metrics table was cut to 80 columns"


def test_default_folder_never_resumes_another_config(phantom_root: Path, trained: Path, tmp_path: Path) -> None:
    """The README tour: `train` without --out after a federated run neither resumes nor relabels it."""
    shutil.copytree(trained, tmp_path / "runs" / "tiny-fedavg")
    # an old-style default folder holding the federated run under the centralised run's name
    shutil.copytree(trained, tmp_path / "runs" / "tiny-centralised")
    before = tree_hash(tmp_path / "runs")
    result = run_cli("train", "-c", "tiny", "--data", phantom_root, "--centralised", "-q", cwd=tmp_path)
    assert_clear_error(result, EXIT_RUN_STATE, "mode", "tiny-centralised")
    assert_unchanged(before, tmp_path / "runs")


# --- a planted checkpoint: refused by every command that reads run folders, its code never runs -------------

@pytest.fixture()
def planted(run_copy: Path, tmp_path: Path) -> tuple[Path, Path]:
    import torch

    marker = tmp_path / MARKER_NAME
    for target in (run_copy / "checkpoint.pt", run_copy / "record" / "round_0000.safetensors"):
        torch.save({"global_vector": Planted(marker), "next_round": 0, "history": []}, target)
    # the plant is live: an unsafe load of the same bytes would run its code
    probe = tmp_path / "probe"
    torch.load(run_copy / "checkpoint.pt", weights_only=False)
    assert marker.exists(), "the planted file does not run code, so the test below proves nothing"
    marker.rename(probe)
    return run_copy, marker


@pytest.mark.parametrize("command", ["train", "inversion", "membership"])
def test_planted_checkpoint_never_runs(phantom_root: Path, planted: tuple[Path, Path], command: str) -> None:
    run, marker = planted
    before = tree_hash(run)
    if command == "train":
        result = run_cli(*_train(phantom_root, run, "--record-rounds", "0,1"))
        name = "checkpoint.pt"
    else:
        result = run_cli("attack", command, "--run", run, "-q", *(["--method", "dlg", "--round", "0"]
                                                                  if command == "inversion" else []))
        name = "round_0000.safetensors"
    assert_clear_error(result, EXIT_RUN_STATE, name)
    assert not marker.exists(), "code from a file in the run folder ran"
    assert_unchanged(before, run)


AUDIT_ONLY_BASELINE = ("attacks.audit={defences: [none], centralised_baseline: false, membership: false, "
                       "inversion: false, poisoning: false}")


def test_planted_checkpoint_never_runs_on_audit_resume(phantom_root: Path, planted: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    """An audit resuming its baseline run finds the planted checkpoint there: refused, nothing runs."""
    from fedi2i.audit.cells import AuditContext
    from fedi2i.config import load_config
    from fedi2i.io import write_json
    from fedi2i.runfolder import RUN_FILE, run_fingerprint

    run, marker = planted
    audit = tmp_path / "audit"
    cfg = load_config("tiny", {"data.root": str(phantom_root), "attacks.audit": {
        "defences": ["none"], "centralised_baseline": False, "membership": False, "inversion": False,
        "poisoning": False}})
    ctx = AuditContext(cfg, audit)
    shutil.copytree(run, ctx.run_dir("none"))
    write_json(ctx.run_dir("none") / RUN_FILE, {"fingerprint": run_fingerprint(ctx.run_config("none"), False)})
    before = tree_hash(ctx.run_dir("none"))
    result = run_cli("audit", "-p", "tiny", "--data", phantom_root, "--out", audit, "-q", "--set",
                     AUDIT_ONLY_BASELINE)
    # the audit records the refused run as a failed cell and goes on to write its report
    assert result.code in (0, EXIT_RUN_STATE), str(result)
    assert "checkpoint.pt is unreadable" in result.output and "pickled objects" in result.output, str(result)
    assert "Traceback" not in result.output, str(result)
    assert not marker.exists(), "code from a file in the run folder ran"
    assert_unchanged(before, ctx.run_dir("none"))


# --- Flower settings -------------------------------------------------------------------------------------

@pytest.mark.parametrize("address,name", [("127.0.0.1:99999", "99999"), ("127.0.0.1:0", "port 0"),
                                          ("no-port", "host:port"), (":9092", "host:port"),
                                          ("bad host:9092", "bad host"), ("::1:9092", "IPv6")],
                         ids=["port-too-high", "port-zero", "no-port", "no-host", "space-in-host", "bare-ipv6"])
def test_bad_superlink_address(tmp_path: Path, address: str, name: str) -> None:
    result = run_cli("flower", "config", "-c", "tiny", "--superlink", address, cwd=tmp_path)
    assert_clear_error(result, EXIT_USAGE, name)


def test_flower_config_rejects_secagg_with_a_robust_rule(tmp_path: Path) -> None:
    result = run_cli("flower", "config", "-c", "tiny", "--secagg", "--set", "federation.strategy=krum")
    assert_clear_error(result, EXIT_USAGE, "krum")


def test_flower_config_out_naming_a_file(tmp_path: Path) -> None:
    (tmp_path / "deploy").write_text("x")
    result = run_cli("flower", "config", "-c", "tiny", "--out", tmp_path / "deploy")
    assert_clear_error(result, EXIT_USAGE, "deploy")


def test_flower_commands_are_not_wrapped_in_a_pipe(tmp_path: Path) -> None:
    """Printed to a pipe, each SuperLink/SuperNode command stays on one line and can be pasted."""
    run_dir = "/srv/fedi2i/" + "a-long-folder-name-" * 6 + "run"
    result = run_cli("flower", "config", "-c", "tiny", "--superlink", "link.example:8000", "--run-dir", run_dir)
    assert result.code == 0, str(result)
    node_lines = [line for line in result.stdout.splitlines() if "flower-supernode" in line]
    assert len(node_lines) == 4 and all("--superlink link.example:8000" in line for line in node_lines), result.stdout
    assert any(run_dir in line for line in result.stdout.splitlines()), result.stdout


def test_error_with_brackets_is_printed_as_written(phantom_root: Path, tmp_path: Path) -> None:
    """Rich markup in a message (a path with [/x] in it) is neither read nor crashes the printer."""
    config = tmp_path / "[" / "x]bad[bold].yaml"
    config.parent.mkdir()
    config.write_text("train: {rounds: 0}\n")
    result = run_cli("train", "-c", config, "--data", phantom_root, "--out", tmp_path / "run", "-q")
    assert_clear_error(result, EXIT_USAGE, "[/x]bad[bold].yaml", "train.rounds")
