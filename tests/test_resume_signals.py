"""Training stopped by a real SIGINT and then a real SIGKILL resumes to exactly the uninterrupted model.

The installed ``fedi2i train`` runs as a subprocess. It gets SIGINT once its first checkpoint is on disk,
is started again and gets SIGKILL once it has saved one more round, and is started a third time to
finish. Every entry of the final state dict, BatchNorm's ``num_batches_tracked`` counters included,
must be bit-identical to an uninterrupted run's.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import torch

from tests.cli_harness import FEDI2I, cli_env, run_cli

ROUNDS = 4


def _args(data: Path, out: Path) -> list[str]:
    return ["train", "-c", "tiny", "--data", str(data), "--out", str(out), "--rounds", str(ROUNDS),
            "--record-rounds", "none", "--set", "federation.eval_every=0", "-q"]


def _saved_round(out: Path) -> int:
    return torch.load(out / "checkpoint.pt", weights_only=True)["next_round"]


def _interrupt(data: Path, out: Path, sig: signal.Signals) -> subprocess.CompletedProcess[str]:
    """Start training, send ``sig`` as soon as it saves a new checkpoint, and wait for it to end."""
    checkpoint = out / "checkpoint.pt"
    seen = checkpoint.stat().st_mtime_ns if checkpoint.exists() else None
    proc = subprocess.Popen([str(FEDI2I), *_args(data, out)], env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if checkpoint.exists() and checkpoint.stat().st_mtime_ns != seen:
            break
        time.sleep(0.02)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_interrupted_training_resumes_bit_identically(phantom_root: Path, tmp_path: Path) -> None:
    reference = tmp_path / "uninterrupted"
    assert run_cli(*_args(phantom_root, reference)).code == 0

    out = tmp_path / "run"
    stopped = _interrupt(phantom_root, out, signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr
    assert "interrupted" in stopped.stderr and "resume" in stopped.stderr and "Traceback" not in stopped.stderr
    after_sigint = _saved_round(out)
    killed = _interrupt(phantom_root, out, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    after_sigkill = _saved_round(out)
    assert 1 <= after_sigint < after_sigkill < ROUNDS, "a signal did not arrive mid-run"

    finished = run_cli(*_args(phantom_root, out))
    assert finished.code == 0, str(finished)
    want = torch.load(reference / "model.pt", weights_only=True)
    got = torch.load(out / "model.pt", weights_only=True)
    assert list(got) == list(want) and any(k.endswith("num_batches_tracked") for k in want)
    for key in want:
        assert torch.equal(got[key], want[key]), \
            f"{key} differs after SIGINT at round {after_sigint} and SIGKILL at round {after_sigkill}"
