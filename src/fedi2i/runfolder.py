"""A run folder: what a run wrote, the fingerprint of the settings that shaped it, and how to start over.

Light on purpose (no torch): the CLI refuses a folder that holds a run of other settings before it
imports the training code, and before anything in the folder is written.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from fedi2i.config import Config, dump_config, load_config, result_fields
from fedi2i.errors import ConfigError, RunStateError
from fedi2i.io import DEFAULT_HINT as FRESH_HINT
from fedi2i.io import load_torch, read_json, write_json

CHECKPOINT = "checkpoint.pt"
RECORD_DIR = "record"
RUN_FILE = "run.json"  # the fingerprint of what shapes the run's results
MODEL_FILE = "model.safetensors"  # the final model (fedi2i.inference writes and reads it)
# Everything a run writes; --fresh removes exactly these (never other files of the folder).
RUN_OUTPUTS = (CHECKPOINT, RUN_FILE, "config.yaml", "history.json", "metrics.json", "model.pt", MODEL_FILE,
               "figures", RECORD_DIR, "attacks")


def run_fingerprint(config: Config, centralised: bool) -> dict[str, Any]:
    """The settings that shape a run's results, as flat dotted keys (what a resume must not change)."""
    return {"mode": "centralised" if centralised else "federated", **result_fields(config)}


def recorded_fingerprint(run_dir: Path) -> dict[str, Any] | None:
    """The fingerprint an existing run folder was trained with (None: no run there)."""
    path = run_dir / RUN_FILE
    if path.exists():
        payload = read_json(path)
        if not isinstance(payload, dict) or not isinstance(payload.get("fingerprint"), dict):
            raise RunStateError(f"{path} is not a fedi2i run file; delete it, or start the run over with --fresh")
        return payload["fingerprint"]
    if (run_dir / CHECKPOINT).exists() and (run_dir / "config.yaml").exists():  # a run from before run.json
        try:
            old = load_config(run_dir / "config.yaml")
        except ConfigError as exc:
            raise RunStateError(f"{run_dir / 'config.yaml'} no longer loads ({exc}); "
                                "use another --out, or start over with --fresh") from None
        metrics = run_dir / "metrics.json"
        mode = read_json(metrics).get("mode", "federated") if metrics.exists() else "federated"
        return run_fingerprint(old, mode == "centralised")
    return None


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint as plain data (``weights_only``): a planted or corrupt file is refused, never run."""
    import torch

    state = load_torch(path, hint=FRESH_HINT)
    if not (isinstance(state, dict) and isinstance(state.get("global_vector"), torch.Tensor)
            and isinstance(state.get("next_round"), int) and isinstance(state.get("history"), list)):
        raise RunStateError(f"{path} is not a fedi2i checkpoint (no global_vector, next_round and history); "
                            f"{FRESH_HINT}")
    return state


def check_resumable(run_dir: Path, fingerprint: dict[str, Any]) -> None:
    """Refuse, before anything is written, to continue a run folder that holds a run of other settings
    or a checkpoint that cannot be read."""
    old = recorded_fingerprint(run_dir)
    if old is not None:
        _refuse_other_settings(run_dir, old, fingerprint)
    if (run_dir / CHECKPOINT).exists():
        read_checkpoint(run_dir / CHECKPOINT)


def settings_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The changed settings of two fingerprints, "key: old -> new; ..." ("" when none changed). A setting
    added to fedi2i since the old one was written is not a change."""
    keys = sorted(set(old) & set(new))
    diffs = [f"{k}: {old[k]} -> {new[k]}" for k in keys if old[k] != new[k]]
    return "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")


def _refuse_other_settings(run_dir: Path, old: dict[str, Any], fingerprint: dict[str, Any]) -> None:
    shown = settings_diff(old, fingerprint)
    if shown:
        raise RunStateError(f"{run_dir} holds a run with other settings ({shown}); pass another --out to keep "
                            "it, or --fresh to replace it")


def clear_run(run_dir: Path) -> None:
    """Remove every output of an earlier run in ``run_dir`` (record rounds and attack results included)."""
    for name in RUN_OUTPUTS:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def prepare_run_dir(config: Config, run_dir: Path, centralised: bool, resume: bool) -> None:
    """Check (resume) or clear (fresh) the folder, then write the run's fingerprint and config."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file, not a folder; name a folder for the run")
    fingerprint = run_fingerprint(config, centralised)
    if resume:
        check_resumable(run_dir, fingerprint)
    elif run_dir.exists():
        clear_run(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / RUN_FILE, {"fingerprint": fingerprint})
    dump_config(config, run_dir / "config.yaml")
