"""Where audit cells keep their results: one JSON file per cell, written atomically.

A cell is finished when its JSON exists with status "ok"; a failed cell is stored with its error so
the report can show it, and is retried on the next run. Killing the audit loses at most the cell in
flight, because nothing else is ever half-written. Every file is validated when read (``CellEntry``):
a corrupt or foreign one stops the audit with an error naming it, rather than being silently recomputed
or, worse, reported. A folder whose cells were computed under other settings is refused before anything is
run or written (``check_resumable``): its finished cells would otherwise be reported as results of the new
settings.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fedi2i.audit.schema import CellEntry, load_cell
from fedi2i.config import Config, load_config, result_fields
from fedi2i.errors import ConfigError, RunStateError
from fedi2i.io import write_text
from fedi2i.runfolder import settings_diff

CONFIG_FILE = "config.yaml"
# What a resumed audit may change: its label, where the data lies, torch's thread count, and which parts of
# the audit run (attacks.audit adds or drops whole cells; a finished cell stays valid).
NOT_CELL_SHAPING = ("name", "data.root", "train.threads", "attacks.audit")


def check_resumable(out_dir: Path, config: Config) -> None:
    """Refuse an audit folder whose finished cells were computed with other settings (a changed attack budget,
    seed, recipe, ...), naming what changed; a folder without cells may be reused freely."""
    out_dir = Path(out_dir)
    path = out_dir / CONFIG_FILE
    if not path.exists() or not any((out_dir / "cells").glob("*.json")):
        return
    hint = "pass another --out to keep it, or delete the folder to start over"
    try:
        old = load_config(path)
    except ConfigError as exc:
        raise RunStateError(f"{path} no longer loads ({exc}); {hint}") from None
    changed = settings_diff(result_fields(old, NOT_CELL_SHAPING), result_fields(config, NOT_CELL_SHAPING))
    if changed:
        raise RunStateError(f"{out_dir} holds an audit run with other settings ({changed}): its finished cells "
                            f"would be reported as results of these; {hint}")


def cell_filename(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", key) + ".json"


class CellStore:
    """Results of an audit's cells under ``<out>/cells/``."""

    def __init__(self, out_dir: Path) -> None:
        self.dir = Path(out_dir) / "cells"
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.dir / cell_filename(key)

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.path(key)
        return load_cell(path).to_dict() if path.exists() else None

    def done(self, key: str) -> bool:
        entry = self.get(key)
        return entry is not None and entry.get("status") == "ok"

    def put(self, key: str, entry: dict[str, Any]) -> None:
        write_text(self.path(key), json.dumps(CellEntry.model_validate(entry).to_dict(), indent=2, allow_nan=False))

    def all(self) -> dict[str, dict[str, Any]]:
        out = {}
        for path in sorted(self.dir.glob("*.json")):
            entry = load_cell(path).to_dict()
            out[entry["key"]] = entry
        return out
