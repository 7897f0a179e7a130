"""Where audit cells keep their results: one JSON file per cell, written atomically.

A cell is finished when its JSON exists with status "ok"; a failed cell is stored with its error so
the report can show it, and is retried on the next run. Killing the audit loses at most the cell in
flight, because nothing else is ever half-written. Every file is validated when read (``CellEntry``):
a corrupt or foreign one stops the audit with an error naming it, rather than being silently recomputed
or, worse, reported.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fedi2i.audit.schema import CellEntry, load_cell
from fedi2i.io import write_text


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
