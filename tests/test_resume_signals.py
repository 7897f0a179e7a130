"""Training stopped by a real SIGINT or SIGKILL resumes to exactly the model an uninterrupted run ends with.

The installed ``fedi2i train`` runs as a subprocess; the signal is sent once its first checkpoint is on
disk. Rerunning the same command finishes the run, and every entry of the final state dict, BatchNorm's
``num_batches_tracked`` counters included, must be bit-identical to the uninterrupted run's.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.cli_harness import FEDI2I, cli_env, run_cli

ROUNDS = "4"


def _args(data: Path, out: Path) -> list[str]:
    return ["train", "-c", "tiny", "--data", str(data), "--out", str(out), "--rounds", ROUNDS,
            "--record-rounds", "none", "--set", "federation.eval_every=0", "-q"]


def _state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "model.pt", weights_only=True)


@pytest.fixture(scope="module")
def reference(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("signals") / "uninterrupted"
    result = run_cli(*_args(phantom_root, out))
    assert result.code == 0, str(result)
    return out


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGKILL, -signal.SIGKILL)],
                         ids=["sigint", "sigkill"])
def test_interrupted_training_resumes_bit_identically(phantom_root: Path, reference: Path, tmp_path: Path,
                                                      sig: signal.Signals, code: int) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen([str(FEDI2I), *_args(phantom_root, out)], env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, f"{stdout}\n{stderr}"
    assert "Traceback" not in stderr
    if sig == signal.SIGINT:
        assert "interrupted" in stderr and "resume" in stderr
    stopped_at = torch.load(out / "checkpoint.pt", weights_only=True)["next_round"]
    assert 1 <= stopped_at < int(ROUNDS), "the signal did not arrive mid-run"

    resumed = run_cli(*_args(phantom_root, out))
    assert resumed.code == 0, str(resumed)
    want, got = _state(reference), _state(out)
    assert list(got) == list(want)
    assert any(k.endswith("num_batches_tracked") for k in want)
    for key in want:
        assert torch.equal(got[key], want[key]), f"{key} differs after resuming from round {stopped_at}"
