"""``fedi2i data build`` and ``fedi2i data inspect``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from fedi2i.cli.app import console, data_app, fail, load_cli_config, setup_logging
from fedi2i.data.federation import build_dataset, default_dataset_dir
from fedi2i.data.synthrad import load_centre_mapping, load_patient, scan_dataset
from fedi2i.errors import DataError, Fedi2iError


@data_app.command("build")
def build(
    out: Optional[Path] = typer.Option(None, help="Output folder (default: the built-in dataset in the cache)."),
    config: str = typer.Option("quick", help="Preset name or YAML file giving the data settings."),
    source: Optional[str] = typer.Option(None, help="head (real CT skull + Colin27 T1) or phantom."),
    centres: Optional[int] = typer.Option(None, help="Number of centres (letters A, B, ...)."),
    patients: Optional[int] = typer.Option(None, help="Patients per centre."),
    seed: Optional[int] = typer.Option(None, help="Seed (default: the config's)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Build a paired MRI/CT dataset in the SynthRAD2023 layout (realistic heads by default)."""
    setup_logging(verbose)
    try:
        cfg = load_cli_config(config, data__source=source, data__n_centres=centres,
                              data__patients_per_centre=patients, seed=seed)
        root = out or default_dataset_dir(cfg.data, cfg.seed)
        built = build_dataset(root, cfg.data, cfg.seed)
    except Fedi2iError as exc:
        fail(exc)
    if built != cfg.data.source:
        console.print(f"[yellow]note:[/] built the {built} dataset instead of {cfg.data.source} (see warning above)")
    console.print(f"dataset written to [bold]{root}[/]")


@data_app.command("inspect")
def inspect(
    root: Path = typer.Argument(..., help="Dataset folder in the SynthRAD2023 layout."),
    mapping: Optional[Path] = typer.Option(None, help="CSV/JSON patient->centre mapping (else from IDs)."),
) -> None:
    """Check every patient (files present, readable, same grid, finite, non-empty mask) without training."""
    try:
        records = scan_dataset(root, load_centre_mapping(mapping) if mapping else None)
    except Fedi2iError as exc:
        fail(exc)
    table = Table(title=f"{root}")
    for col in ("patient", "centre", "shape (z,y,x)", "spacing (mm)", "status"):
        table.add_column(col)
    bad = 0
    for record in records:
        try:
            vol = load_patient(record)
            table.add_row(record.pid, record.centre, str(vol.ct.shape),
                          ", ".join(f"{s:.2f}" for s in vol.spacing), "[green]ok[/]")
        except DataError as exc:
            bad += 1
            table.add_row(record.pid, record.centre, "-", "-", f"[red]{exc}[/]")
    console.print(table)
    centres = sorted({r.centre for r in records})
    console.print(f"{len(records)} patients in {len(centres)} centres ({', '.join(centres)}); {bad} with problems")
    if bad:
        raise typer.Exit(code=1)
