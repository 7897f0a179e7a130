"""Run the audit matrix: resumable, one result file per cell, failures recorded, progress shown.

Cells run one after another (``workers=1``) or spread over worker processes. A cell is handed to a worker
only once every cell it needs (its training run) has finished; each worker builds the same plan from the
same config and sets the same torch thread count, and every cell starts from the config's seed, so a
parallel audit writes the same numbers as a serial one. Workers are started with ``spawn`` (a forked
copy of a process whose torch thread pool is running can deadlock).

Order: among the ready cells, the one heading the longest chain of work goes first (its own estimated
cost plus that of the cells waiting on it, :func:`critical_order`), so the training run most attacks
read starts at once and the long cells do not end up alone at the tail with the other cores idle. A
fresh audit estimates by cell kind (a training run costs several attack cells), a resumed one uses the
seconds its own stored cells took. Order changes nothing in the results: every cell starts from the
same seed.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from logging.handlers import QueueHandler, QueueListener
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fedi2i.audit.cells import AuditContext, build_cells
from fedi2i.audit.plan import AuditCell
from fedi2i.audit.report import write_report
from fedi2i.audit.schema import CellEntry
from fedi2i.audit.store import CONFIG_FILE, CellStore, check_resumable
from fedi2i.config import Config, dump_config

log = logging.getLogger(__name__)
SPAWN = multiprocessing.get_context("spawn")  # a forked copy of a process running torch threads can deadlock
OnCell = Callable[[AuditCell, dict[str, Any]], None]


def default_workers() -> int:
    """The cores this process may use (its CPU affinity, which a container or ``taskset`` narrows)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _threads(config: Config, workers: int) -> int:
    """torch threads per process: the preset's, else the usable cores shared among the workers."""
    return config.train.threads or max(1, default_workers() // workers)


def _seed(seed: int) -> None:
    """Every cell starts from the same global RNG state, whatever ran before it in this process."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# Seconds per cell kind, measured in the quick audit on 2 idle cores (one torch thread per worker; means
# over 4 training, 3 membership, 33 inversion and 42 poisoning cells). Only their order matters: it decides
# which ready cell is handed out first.
KIND_SECONDS = {"train": 72.0, "membership": 46.0, "inversion": 14.0, "poison": 25.0}


def cell_cost(cell: AuditCell, seen: dict[str, float] | None = None) -> float:
    """Estimated seconds of one cell: what this cell took before (a resumed audit), else its kind's mean."""
    if seen and cell.key in seen:
        return seen[cell.key]
    return KIND_SECONDS.get(cell.kind, 30.0)


def critical_order(cells: list[AuditCell], seen: dict[str, float] | None = None) -> list[AuditCell]:
    """The cells, longest remaining chain first: each cell's cost plus the longest chain of cells that wait
    on it (``needs`` and ``after``); ties keep the plan's order."""
    waiting: dict[str, list[AuditCell]] = {}
    for cell in cells:
        for key in cell.needs + cell.after:
            waiting.setdefault(key, []).append(cell)
    chain: dict[str, float] = {}

    def length(cell: AuditCell) -> float:
        if cell.key not in chain:
            chain[cell.key] = cell_cost(cell, seen) + max((length(c) for c in waiting.get(cell.key, [])),
                                                          default=0.0)
        return chain[cell.key]

    rank = {cell.key: i for i, cell in enumerate(cells)}
    return sorted(cells, key=lambda c: (-length(c), rank[c.key]))


def run_cell(cell: AuditCell, store: CellStore, seed: int = 0) -> dict[str, Any]:
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
            _seed(seed)
            entry.update(status="ok", result=cell.action())
            CellEntry.model_validate(entry)  # a result the audit cannot read is the cell's failure
        except Exception as exc:  # a failing cell (or a result it cannot read) must not stop the audit
            log.error("audit cell %s failed: %s", cell.key, exc)
            entry.pop("result", None)
            entry.update(status="error", error=f"{type(exc).__name__}: {exc}",
                         traceback=traceback.format_exc(limit=8))
        entry["seconds"] = time.perf_counter() - start
    store.put(cell.key, entry)
    return store.get(cell.key) or entry


# --- worker processes ---------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _worker_init(config: Config, out_dir: str, threads: int, logs: Any, level: int) -> None:
    """Once per worker: log records (and warnings) go to the parent, which prints them above its one
    progress view; the preset's thread count; the same plan as the parent."""
    root = logging.getLogger()
    root.handlers = [QueueHandler(logs)]
    root.setLevel(level)
    logging.captureWarnings(True)
    torch.set_num_threads(threads)
    _WORKER["cells"] = {c.key: c for c in build_cells(AuditContext(config, Path(out_dir)))}
    _WORKER["store"] = CellStore(Path(out_dir))
    _WORKER["seed"] = config.seed


def _worker_run(key: str) -> dict[str, Any]:
    return run_cell(_WORKER["cells"][key], _WORKER["store"], _WORKER["seed"])


class _Scheduler:
    """Hands ready cells to a pool of workers; a cell is ready when every cell it needs has finished."""

    def __init__(self, config: Config, out_dir: Path, store: CellStore, workers: int) -> None:
        self.config, self.out_dir, self.store, self.workers = config, out_dir, store, workers
        self.pool: ProcessPoolExecutor | None = None
        self.logs = SPAWN.Queue()  # the workers' log records, printed by this process
        self._submitted: set[Future[dict[str, Any]]] = set()  # futures of the current pool

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=SPAWN, initializer=_worker_init,
                                   initargs=(self.config, str(self.out_dir), _threads(self.config, self.workers),
                                             self.logs, logging.getLogger().getEffectiveLevel()))

    def run(self, cells: list[AuditCell], on_start: Callable[[list[str]], None],
            on_done: Callable[[AuditCell, dict[str, Any]], None]) -> None:
        planned = {c.key for c in cells}
        seen = {k: float(e["seconds"]) for k, e in self.store.all().items() if e.get("seconds")}
        pending = critical_order(cells, seen)
        finished: set[str] = set()
        running: dict[Future[dict[str, Any]], AuditCell] = {}

        def ready(cell: AuditCell) -> bool:
            return all(n in finished or n not in planned for n in cell.needs + cell.after)

        handlers = logging.getLogger().handlers or [logging.lastResort]
        listener = QueueListener(self.logs, *handlers, respect_handler_level=True)
        listener.start()
        try:
            while pending or running:
                for cell in list(pending):
                    if not ready(cell):
                        continue
                    if self.store.done(cell.key) or any(not self.store.done(n) for n in cell.needs):
                        pending.remove(cell)  # reused, or its run failed: no worker needed
                        finished.add(cell.key)
                        on_done(cell, run_cell(cell, self.store, self.config.seed))
                    elif len(running) < self.workers:
                        pending.remove(cell)
                        self.pool = self.pool or self._new_pool()  # none started if nothing is left to run
                        future = self.pool.submit(_worker_run, cell.key)
                        self._submitted.add(future)
                        running[future] = cell
                on_start([c.title for c in running.values()])
                if not running:
                    if pending and not any(ready(c) for c in pending):
                        raise RuntimeError(f"audit cells wait on each other: {[c.key for c in pending]}")
                    continue
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    cell = running.pop(future)
                    finished.add(cell.key)
                    on_done(cell, self._result(cell, future))
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=False, cancel_futures=True)
            listener.stop()

    def _result(self, cell: AuditCell, future: Future[dict[str, Any]]) -> dict[str, Any]:
        """The worker's entry. A worker that dies breaks the pool: every cell running in it is recorded as
        failed (and retried by the next run, like any failed cell), and a new pool takes the rest."""
        try:
            return future.result()
        except BrokenProcessPool as exc:
            if self.pool is not None and future in self._submitted:  # the first report of this pool's end
                self.pool.shutdown(wait=False, cancel_futures=True)
                self.pool, self._submitted = None, set()
            entry = {"key": cell.key, "kind": cell.kind, "title": cell.title, "params": cell.params,
                     "status": "error", "seconds": 0.0,
                     "error": f"a worker process died while this cell ran ({exc}); out of memory?"}
            self.store.put(cell.key, entry)
            return entry


def run_audit(config: Config, out_dir: Path, progress: bool = True, on_cell: OnCell | None = None,
              workers: int = 1) -> Path:
    """Plan, run (skipping finished cells, ``workers`` at a time) and report; returns report.html's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_resumable(out_dir, config)
    torch.set_num_threads(_threads(config, workers))
    store = CellStore(out_dir)
    store.all()  # every stored cell is read (validated) now: a corrupt one stops the audit before any work
    dump_config(config, out_dir / CONFIG_FILE)
    context = AuditContext(config, out_dir)
    cells = build_cells(context)
    console = Console()
    columns = (TextColumn("[bold]audit"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[current]}"),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    if progress:
        todo = sum(not store.done(c.key) for c in cells)
        console.print(f"audit: {len(cells)} cells, {todo} to run, "
                      + ("one at a time" if workers <= 1 else f"on {workers} worker processes"))
    with Progress(*columns, console=console, disable=not progress, transient=False) as bar:
        task = bar.add_task("audit", total=len(cells), current="")

        def done(cell: AuditCell, entry: dict[str, Any]) -> None:
            if entry["status"] != "ok":
                console.print(f"[red]cell {cell.key} failed:[/] {entry.get('error')}")
            if on_cell is not None:
                on_cell(cell, entry)
            bar.advance(task)

        if workers <= 1:
            for cell in cells:
                bar.update(task, current=cell.title)
                done(cell, run_cell(cell, store, config.seed))
        else:
            _ = context.data  # built (and cached) once here, not by every worker at the same time
            _Scheduler(config, out_dir, store, workers).run(
                cells, lambda titles: bar.update(task, current=", ".join(titles)), done)
        bar.update(task, current="writing report")
    return write_report(config, out_dir, cells, store)
