"""Progress display for training runs: a rich bar over rounds that shows the latest mean loss."""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fedi2i.cli.app import console

if TYPE_CHECKING:
    from fedi2i.fl.round_loop import RoundCallback


@contextmanager
def round_progress(total_rounds: int, label: str, enabled: bool = True) -> Iterator[RoundCallback | None]:
    """Yields an ``on_round`` callback for the engine (None when disabled)."""
    if not enabled:
        yield None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(label, total=total_rounds, status="")

        def on_round(done: int, entry: dict[str, Any]) -> None:
            losses = entry.get("train_loss", {})
            mean = sum(losses.values()) / max(len(losses), 1)
            status = f"loss {mean:.4f}"
            if "val" in entry:
                maes = [v["mae"] for v in entry["val"].values()]
                status += f"  val MAE {sum(maes) / len(maes):.0f} HU"
            progress.update(task, completed=done, status=status)

        yield on_round
