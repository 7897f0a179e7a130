"""``fedi2i attack poison``: run the poisoning matrix (attacks x levels x malicious centres x rules)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedi2i.cli.app import (attack_app, check_out_folder, complete_preset, console, load_cli_config, presets_help,
                            setup_logging)
from fedi2i.config import Config

if TYPE_CHECKING:  # the attack code (torch) is imported only when the command runs
    from fedi2i.attacks.poisoning.matrix import PoisonCell
    from fedi2i.attacks.poisoning.settings import PoisonSettings
    from fedi2i.data.federation import FederatedData
    from fedi2i.fl.round_loop import RoundEntry


@attack_app.command("poison")
def poison_command(
    config: Annotated[str, typer.Option(
        "--config", "-c", help=presets_help("or YAML file; the matrix is read from its attacks.poison section"),
        autocompletion=complete_preset)] = "quick",
    out: Annotated[Path, typer.Option(
        help="Output folder; finished cells found there are reused.")] = Path("runs/poison"),
    data: Annotated[Optional[Path], typer.Option(
        help="Dataset folder (default: built-in dataset, built on first use).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override any config key, e.g. --set attacks.poison.rules=[fedavg,trimmed]")] = None,
    plan_only: Annotated[bool, typer.Option("--plan", help="Only list the cells, train nothing.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Train every cell of the poisoning matrix, watch it with the update detector, write tables and figures."""
    from fedi2i.attacks.poisoning import load_poison_settings, plan_poison, summarise_poison
    from fedi2i.data.federation import load_federation

    setup_logging(verbose)
    check_out_folder(out)
    cfg = load_cli_config(config, set_, data__root=data)
    settings = load_poison_settings(cfg)
    fed = load_federation(cfg.data, cfg.seed)
    cells = plan_poison(cfg, settings, fed)
    if plan_only:
        show_plan(cells)
        return
    results = _run(cfg, fed, cells, settings, out, quiet)
    summary = summarise_poison(results, out)
    show_results(results)
    console.print(summary["markdown"].split("## Poisoning: detection")[1] if not quiet else "", markup=False)
    console.print(f"outputs in {out} (poisoning.md, quality.csv/json, detection.csv/json, figures/)", markup=False)


def _run(cfg: Config, fed: FederatedData, cells: list[PoisonCell], settings: PoisonSettings, out: Path,
         quiet: bool) -> list[dict[str, Any]]:
    """Run the matrix, with two progress bars: cells done / total, and rounds of the current cell."""
    from fedi2i.attacks.poisoning import run_poison_matrix

    if quiet:
        return run_poison_matrix(cfg, fed, out, settings, cells)
    rounds = settings.rounds or cfg.train.rounds
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        matrix = progress.add_task("cells", total=len(cells), status="")
        current = progress.add_task("rounds", total=rounds, status=cells[0].key if cells else "")
        index = {"i": 0}

        def on_round(done: int, entry: RoundEntry) -> None:
            progress.update(current, completed=done)

        def on_cell(cell: PoisonCell, result: dict[str, Any], reused: bool) -> None:
            index["i"] += 1
            mae = (result.get("unseen_mean") or {}).get("mae")
            note = "reused" if reused else result["status"]
            if result.get("collapsed"):
                note = "collapsed"
            progress.update(matrix, advance=1, status=f"last: {cell.key} ({note}"
                            + (f", unseen MAE {mae:.0f} HU)" if mae is not None else ")"))
            following = cells[index["i"]].key if index["i"] < len(cells) else ""
            progress.update(current, completed=0, status=following)

        return run_poison_matrix(cfg, fed, out, settings, cells, on_cell=on_cell, on_round=on_round)


def show_plan(cells: list[PoisonCell]) -> None:
    table = Table(title=f"poisoning matrix: {len(cells)} cells")
    for col in ("key", "malicious", "strength", "rule tolerates", "note"):
        table.add_column(col)
    for c in cells:
        strength = ", ".join(f"{k}={v:g}" for k, v in c.strength.items()) or "-"
        table.add_row(c.key, " ".join(c.malicious) or "-", strength,
                      str(c.tolerates), c.skip_reason or "")
    console.print(table)


def show_results(results: list[dict[str, Any]]) -> None:
    table = Table(title="poisoning matrix: unseen-centre and honest-centre quality")
    for col in ("cell", "malicious", "unseen MAE", "unseen PSNR", "unseen SSIM", "honest MAE", "flagged"):
        table.add_column(col)
    for r in results:
        um, hm = r.get("unseen_mean") or {}, r.get("honest_mean") or {}
        if r["status"] == "skipped":
            table.add_row(r["key"], "-", "skipped", "", "", "", "")
            continue
        if r.get("collapsed"):
            table.add_row(r["key"], " ".join(r["malicious"]), f"collapsed (round {r['collapsed_round']})", "", "", "",
                          " ".join(r["detector"]["flagged"]))
            continue
        fmt = lambda d, k, p: "n/a" if d.get(k) is None else f"{d[k]:.{p}f}"  # noqa: E731
        table.add_row(r["key"], " ".join(r["malicious"]) or "-", fmt(um, "mae", 1), fmt(um, "psnr", 2),
                      fmt(um, "ssim", 3), fmt(hm, "mae", 1), " ".join(r["detector"]["flagged"]) or "-")
    console.print(table)
