"""``fedi2i attack inversion`` (one recorded update) and ``fedi2i attack inversion-grid`` (the threat grid):
gradient inversion (DLG, Inverting Gradients, I2I) on a trained run."""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedi2i.cli.app import attack_app, check_out_folder, console, parse_overrides, run_config, setup_logging
from fedi2i.config import Config, set_dotted
from fedi2i.errors import RecordError

if TYPE_CHECKING:  # the attack code (torch, MONAI) is imported only when the command runs
    from fedi2i.attacks.inversion import InversionSettings
    from fedi2i.attacks.inversion.base import Progress as ProgressFn


class Method(str, Enum):
    """The inversion attacks (``fedi2i.attacks.inversion.settings.METHODS``, checked by a test)."""

    dlg = "dlg"
    ig = "ig"
    i2i = "i2i"


@contextmanager
def matching_progress(total: int, label: str, enabled: bool) -> Iterator[ProgressFn | None]:
    """A rich bar over attack iterations showing the current matching loss."""
    if not enabled:
        yield None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("matching loss {task.fields[loss]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(label, total=total, loss="-")

        def tick(iteration: int, objective: float) -> None:
            progress.update(task, completed=min(iteration, total), loss=f"{objective:.4g}")

        yield tick


def _budget(settings: InversionSettings, method: str, image_size: int) -> int:
    """Iterations the progress bar counts to."""
    s = settings.method(method)
    if method == "i2i":
        from fedi2i.attacks.inversion.i2i import pyramid

        levels = len(pyramid(image_size, s.levels))  # type: ignore[union-attr]
        return (levels * s.level_iterations + s.iterations) * s.restarts  # type: ignore[union-attr]
    return s.iterations * getattr(s, "restarts", 1)


# Options both commands take, spelled once.
IterationsOption = Annotated[Optional[int], typer.Option(help="Attack iterations (default: from the config).")]
SeedOption = Annotated[Optional[int], typer.Option(help="Seed of the attack's random starts.")]
OutOption = Annotated[Optional[Path], typer.Option(help="Output folder (default: RUN/attacks/inversion).")]
SetOption = Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting: --set i2i.lr=0.02")]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v")]


@attack_app.command("inversion")
def inversion_command(
    run: Annotated[Path, typer.Option("--run", help="Run folder holding the curious-server record (record/).")],
    client: Annotated[Optional[str], typer.Option(
        "--client", help="Centre whose update is attacked (default: first).")] = None,
    round_: Annotated[Optional[int], typer.Option(
        "--round", help="Recorded round to attack (default: the first).")] = None,
    method: Annotated[Method, typer.Option("--method", "-m", help="Attack.")] = Method.i2i,
    iterations: IterationsOption = None,
    images: Annotated[Optional[int], typer.Option(
        help="Images to reconstruct per client (default: batch size).")] = None,
    seed: SeedOption = None,
    out: OutOption = None,
    set_: SetOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    verbose: VerboseOption = False,
) -> None:
    """Rebuild a centre's training MRI and CT from its recorded update, as a curious server could; scores
    the result against the true slices (SSIM/PSNR after Hungarian matching) and draws truth vs reconstruction.

    The whole threat grid is its own command: fedi2i attack inversion-grid."""
    setup_logging(verbose)
    config, overrides, out_dir = _prepare(run, out, set_, seed)
    r, who, size = _recorded_target(run, round_, client)  # named before the attack code loads
    settings = _settings(config, overrides, iterations)
    from fedi2i.attacks.inversion.run import attack_recorded_round

    with matching_progress(_budget(settings, method.value, size or config.data.image_size),
                           f"{method.value} on {who}, round {r}", not quiet) as tick:
        result = attack_recorded_round(run, r, who, method.value, settings, out_dir=out_dir, images=images,
                                       progress=tick)
    show_results([result])
    console.print(f"results in {out_dir} ({result['key']}.json, figures/{result['key']}.png)", markup=False)


@attack_app.command("inversion-grid")
def inversion_grid_command(
    run: Annotated[Path, typer.Option("--run", help="A fedi2i train run folder: its config and trained model.")],
    iterations: IterationsOption = None,
    seed: SeedOption = None,
    out: OutOption = None,
    set_: SetOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    verbose: VerboseOption = False,
) -> None:
    """The whole threat grid of the config's attacks.inversion settings (methods x batch sizes x local steps x
    model stages x defences), with RUN's config and trained model; writes results.json, results.csv,
    table.md and a figure per cell, and reuses finished cells when run again."""
    setup_logging(verbose)
    config, overrides, out_dir = _prepare(run, out, set_, seed)
    settings = _settings(config, overrides, iterations)
    from fedi2i.attacks.inversion import verdict

    results = _grid(config, run, out_dir, settings, quiet)
    show_results(results)
    console.print(verdict(results), markup=False)
    console.print(f"results in {out_dir} (results.json, results.csv, table.md, figures/)", markup=False)


def _prepare(run: Path, out: Path | None, set_: list[str] | None,
             seed: int | None) -> tuple[Config, dict[str, Any], Path]:
    """The run's config, the command's overrides and the output folder: a wrong folder or a bad --set is
    named before the attack code (torch, MONAI) loads."""
    check_out_folder(out)
    config = run_config(run)
    overrides = parse_overrides(set_)
    if seed is not None:
        overrides["seed"] = seed
    return config, overrides, out or run / "attacks" / "inversion"


def _settings(config: Config, overrides: dict[str, Any], iterations: int | None) -> InversionSettings:
    """The config's attacks.inversion settings with the --set overrides and --iterations on top."""
    from fedi2i.attacks.inversion import InversionSettings

    settings = InversionSettings.from_config(config, _nest(overrides))
    return settings if iterations is None else settings.with_iterations(iterations)


def _recorded_target(run: Path, round_: int | None, client: str | None) -> tuple[int, str, int | None]:
    """(round, client, image size) of the attacked update, read and checked from the record."""
    from fedi2i.fl.observer import ServerRecord

    record = ServerRecord(run)
    rounds = record.rounds()
    if not rounds:
        raise RecordError(f"{run} has a record folder but no recorded round")
    r = rounds[0] if round_ is None else round_
    who = client or (record.meta.get("clients") or [None])[0]
    if who is None:
        raise RecordError(f"{run}: the record does not list its clients; pass --client")
    view = record.round(r)  # read (and check) the round before any data or model is loaded
    if not view.secure and who not in view.updates:
        raise RecordError(f"client {who} is not in round {r} of {run}; clients: {', '.join(sorted(view.updates))}")
    size = record.meta.get("image_size")
    return r, who, None if size is None else int(size)


def _nest(overrides: dict[str, Any]) -> dict[str, Any]:
    """``{"i2i.lr": 0.02}`` -> ``{"i2i": {"lr": 0.02}}`` for the pydantic settings."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        set_dotted(nested, key, value)
    return nested


def _grid(config: Config, run: Path, out_dir: Path, settings: InversionSettings, quiet: bool) -> list[dict[str, Any]]:
    from fedi2i.attacks.inversion import plan_inversion
    from fedi2i.attacks.inversion.run import run_inversion_grid
    from fedi2i.data.federation import load_federation

    data = load_federation(config.data, config.seed, progress=not quiet)
    cells = plan_inversion(settings)
    columns = (TextColumn("[bold]threat grid"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[last]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False, disable=quiet) as progress:
        task = progress.add_task("grid", total=len(cells), last="")

        def on_cell(cell: Any, result: dict[str, Any]) -> None:
            progress.update(task, advance=1, last=f"{cell.key}: MRI SSIM {result['mri_ssim']:.3f}")

        return run_inversion_grid(config, data, out_dir, settings, base_run_dir=run, on_cell=on_cell)


def show_results(results: list[dict[str, Any]]) -> None:
    table = Table(title="gradient inversion (SSIM/PSNR after Hungarian matching)")
    for col in ("method", "batch", "steps", "model", "defence", "client", "MRI SSIM", "MRI PSNR", "CT SSIM",
                "CT PSNR", "iters", "s"):
        table.add_column(col)
    for r in results:
        table.add_row(r["method"], str(r["batch"]), str(r["steps"]), str(r["stage"]), r["defence"], str(r["client"]),
                      f"{r['mri_ssim']:.3f}", f"{r['mri_psnr']:.1f}", f"{r['ct_ssim']:.3f}", f"{r['ct_psnr']:.1f}",
                      str(r["iterations"]), f"{r['seconds']:.0f}")
    console.print(table)
