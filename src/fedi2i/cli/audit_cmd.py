"""``fedi2i audit``: the whole attack x defence x centre matrix and a report people can read."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fedi2i.cli.app import app, check_out_folder, console, load_cli_config, setup_logging


@app.command("audit")
def audit_command(
    preset: str = typer.Option("quick", "--preset", "-p", help="Preset (quick, paper, tiny) or YAML config."),
    data: Optional[Path] = typer.Option(None, help="Dataset folder (default: built-in realistic heads, built on first use)."),
    out: Path = typer.Option(Path("runs/audit"), help="Audit folder; re-running it skips finished cells."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override any config key: --set train.rounds=5"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Leave out patients whose data fail their checks "
                                                         "(listed in each run's metrics.json)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", min=1,
                                          help="Cells run at once, in worker processes (default: the usable cores)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Train the baseline and the defended federations, attack them all, and write report.html."""
    from fedi2i.audit.run import default_workers, run_audit

    setup_logging(verbose)
    check_out_folder(out)
    cfg = load_cli_config(preset, set_, data__root=data, data__skip_bad=skip_bad or None)
    report = run_audit(cfg, out, progress=not quiet, workers=workers or default_workers())
    console.print(f"report: {report.resolve()}", markup=False)
