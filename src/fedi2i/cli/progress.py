"""Progress display for training runs: a rich bar over rounds that shows the latest mean loss."""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator
from typing import TYPE_CHECKING

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fedi2i.cli.app import console

if TYPE_CHECKING:
    from fedi2i.fl.round_loop import RoundCallback, RoundEntry


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

        shown: list[RoundEntry] = []  # the previous round's entry gets its val while this round runs

        def on_round(done: int, entry: RoundEntry) -> None:
            losses = entry.train_loss
            status = f"loss {sum(losses.values()) / max(len(losses), 1):.4f}"
            validated = next((e for e in (entry, *shown[-1:]) if e.val), None)
            if validated is not None:
                maes = [v["mae"] for v in validated.val.values()]  # type: ignore[union-attr]
                status += f"  val MAE {sum(maes) / len(maes):.0f} HU (round {validated.round + 1})"
            shown[:] = [entry]
            progress.update(task, completed=done, status=status)

        yield on_round
