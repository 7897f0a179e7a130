"""Drive the installed ``fedi2i`` command as a user would: a subprocess, its exit code and what it printed.

Hostile-input tests import this so every case checks the same things the same way: the exit code of
its class, that the message names the file, patient or key, that no traceback reaches the user, and
that a run folder the command was pointed at is byte-for-byte unchanged afterwards.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The console script next to the interpreter running the tests (the project's .venv in `make test`).
FEDI2I = Path(sys.executable).parent / "fedi2i"

# Exit codes of the CLI's error classes.
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_RUN_STATE = 4


@dataclass
class CliResult:
    """One finished ``fedi2i`` call."""

    args: list[str]
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __str__(self) -> str:  # shown by pytest when an assert fails
        return (f"fedi2i {' '.join(self.args)} -> exit {self.code}\n--- stdout\n{self.stdout}\n"
                f"--- stderr\n{self.stderr}")


def cli_env(cache: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment for a CLI call: one torch thread, no colours, an isolated dataset cache if given."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NO_COLOR": "1", "TERM": "dumb",
                "PYTHONWARNINGS": "ignore"})
    env.pop("COLUMNS", None)
    if cache is not None:
        env["FEDI2I_CACHE"] = str(cache)
    env.update(extra)
    return env


def run_cli(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 300, stdin: str | None = None) -> CliResult:
    """Run ``fedi2i ARGS`` to completion (output captured, so stdout is not a terminal)."""
    argv = [str(a) for a in args]
    proc = subprocess.run([str(FEDI2I), *argv], cwd=cwd, env=env or cli_env(), capture_output=True,
                          text=True, timeout=timeout, input=stdin, errors="replace")
    return CliResult(argv, proc.returncode, proc.stdout, proc.stderr)


def tree_hash(folder: Path) -> dict[str, str]:
    """``relative path -> sha256`` of every file under ``folder`` (empty if it does not exist)."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_clear_error(result: CliResult, code: int, *names: str) -> None:
    """The command failed with ``code``, printed every one of ``names`` and no traceback."""
    assert result.code == code, str(result)
    assert "Traceback" not in result.output, str(result)
    for name in names:
        assert name in result.output, f"{name!r} not named in the message\n{result}"


def assert_unchanged(before: dict[str, str], folder: Path) -> None:
    """A folder hashed with ``tree_hash`` before a failed command has exactly the same files after it."""
    after = tree_hash(folder)
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    assert not (added or removed or changed), \
        f"run folder changed: added {added}, removed {removed}, changed {changed}"
