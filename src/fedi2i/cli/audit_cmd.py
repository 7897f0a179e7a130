"""``fedi2i audit``: the whole attack x defence x centre matrix and a report people can read."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fedi2i.cli.app import app, check_out_folder, complete_preset, console, load_cli_config, presets_help, setup_logging
@app.command("audit")
def audit_command(
    preset: Annotated[str, typer.Option(
        "--preset", "-p", help=presets_help(), autocompletion=complete_preset)] = "quick",
    data: Annotated[Optional[Path], typer.Option(
        help="Dataset folder (default: built-in realistic heads, built on first use).")] = None,
    out: Annotated[Path, typer.Option(help="Audit folder; re-running it skips finished cells.")] = Path("runs/audit"),
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override any config key: --set train.rounds=5")] = None,
    skip_bad: Annotated[bool, typer.Option(
        "--skip-bad", help="Leave out patients whose data fail their checks (listed in each run's "
                           "metrics.json).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    workers: Annotated[Optional[int], typer.Option(
        "--workers", "-w", min=1, help="Cells run at once, in worker processes (default: the usable cores).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Train the baseline and the defended federations, attack them all, and write report.html."""
    from fedi2i.audit.store import check_resumable

    setup_logging(verbose)
    check_out_folder(out)
    cfg = load_cli_config(preset, set_, data__root=data, data__skip_bad=skip_bad or None)
    check_resumable(out, cfg)  # before the training code loads
    from fedi2i.audit.run import default_workers, run_audit

    report = run_audit(cfg, out, progress=not quiet, workers=workers or default_workers())
    console.print(f"report: {report.resolve()}", markup=False)
