"""The package works outside its repository: built as a wheel, installed into a clean virtualenv, run elsewhere."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_wheel_installed_in_a_clean_venv_runs_the_tiny_audit_from_another_folder(tmp_path: Path) -> None:
    project = tmp_path / "project"  # a copy, so the build leaves nothing in the repository
    shutil.copytree(REPO / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, project / name)
    dist = tmp_path / "dist"
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist),
                  str(project)], cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(dist.glob("fedi2i-*.whl"))

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    clean_site = next(env_dir.glob("lib/python*/site-packages"))
    # Dependencies come from this interpreter's site-packages, appended after the clean one (a plain path:
    # its .pth files, among them the repository's editable hook, are not run), so only the wheel is fedi2i.
    (clean_site / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    installed = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(clean_site),
                      str(wheel)], cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr[-2000:]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    python = env_dir / "bin" / "python"
    where = _run([str(python), "-c", "import fedi2i, sys; print(fedi2i.__file__)"], cwd=elsewhere)
    assert str(clean_site) in where.stdout, where.stdout + where.stderr

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["FEDI2I_CACHE"] = str(tmp_path / "cache")
    cli = [str(python), "-c", "import sys; from fedi2i.cli import app; sys.argv[0] = 'fedi2i'; app()"]
    audit = _run(cli + ["audit", "--preset", "tiny", "--out", "audit", "--workers", "1", "--quiet",
                        "--set", "train.rounds=2"], cwd=elsewhere, env=env)
    assert audit.returncode == 0, audit.stdout[-2000:] + audit.stderr[-2000:]
    assert "Traceback" not in audit.stdout + audit.stderr
    assert (elsewhere / "audit" / "report.html").is_file()
    assert (elsewhere / "audit" / "results.json").is_file()
