"""Run the audit matrix: resumable, one result file per cell, failures recorded, progress shown."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fedi2i.audit.cells import AuditContext, build_cells
from fedi2i.audit.plan import AuditCell
from fedi2i.audit.report import write_report
from fedi2i.audit.store import CellStore
from fedi2i.config import Config, dump_config

log = logging.getLogger(__name__)


def run_cell(cell: AuditCell, store: CellStore) -> dict[str, Any]:
    """Run one cell unless it is already done; a failure is stored with its error, never raised."""
    previous = store.get(cell.key)
    if previous is not None and previous.get("status") == "ok":
        return previous
    failed_needs = [n for n in cell.needs if not store.done(n)]
    start = time.perf_counter()
    entry: dict[str, Any] = {"key": cell.key, "kind": cell.kind, "title": cell.title, "params": cell.params}
    if failed_needs:
        entry.update(status="error", error=f"needs {', '.join(failed_needs)}, which did not finish", seconds=0.0)
    else:
        try:
            assert cell.action is not None
            entry.update(status="ok", result=cell.action())
        except Exception as exc:  # a failing cell must not stop the audit: record it and go on
            log.error("audit cell %s failed: %s", cell.key, exc)
            entry.update(status="error", error=f"{type(exc).__name__}: {exc}",
                         traceback=traceback.format_exc(limit=8))
        entry["seconds"] = time.perf_counter() - start
    store.put(cell.key, entry)
    return entry


def run_audit(config: Config, out_dir: Path, progress: bool = True,
              on_cell: Callable[[AuditCell, dict[str, Any]], None] | None = None) -> Path:
    """Plan, run (skipping finished cells) and report; returns the path of report.html."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    dump_config(config, out_dir / "config.yaml")
    store = CellStore(out_dir)
    context = AuditContext(config, out_dir)
    cells = build_cells(context)
    console = Console()
    columns = (TextColumn("[bold]audit"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[current]}"),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not progress, transient=False) as bar:
        task = bar.add_task("audit", total=len(cells), current="")
        for cell in cells:
            bar.update(task, current=cell.title)
            entry = run_cell(cell, store)
            if entry["status"] != "ok":
                console.print(f"[red]cell {cell.key} failed:[/] {entry.get('error')}")
            if on_cell is not None:
                on_cell(cell, entry)
            bar.advance(task)
        bar.update(task, current="writing report")
    return write_report(config, out_dir, cells, store)
