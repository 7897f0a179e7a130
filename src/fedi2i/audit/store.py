"""Where audit cells keep their results: one JSON file per cell, written atomically.

A cell is finished when its JSON exists with status "ok"; a failed cell is stored with its error so
the report can show it, and is retried on the next run. Killing the audit loses at most the cell in
flight, because nothing else is ever half-written.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fedi2i.io import write_json


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
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None  # cannot happen with atomic writes, but a hand-edited file must not stop the audit

    def done(self, key: str) -> bool:
        entry = self.get(key)
        return entry is not None and entry.get("status") == "ok"

    def put(self, key: str, entry: dict[str, Any]) -> None:
        write_json(self.path(key), entry)

    def all(self) -> dict[str, dict[str, Any]]:
        out = {}
        for path in sorted(self.dir.glob("*.json")):
            try:
                entry = json.loads(path.read_text())
            except json.JSONDecodeError:
                continue
            out[entry.get("key", path.stem)] = entry
        return out
