"""``fedi2i predict``: the sCT of new patients' MRIs, written on each MRI's own grid."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import track

from fedi2i.cli.app import app, console, setup_logging
from fedi2i.errors import ConfigError


@app.command("predict")
def predict_command(
    mri: Annotated[Path, typer.Argument(
        help="An MRI (.nii.gz, .nii, .mha), a SynthRAD patient folder (mr.* and mask.*), or a folder of either.")],
    run: Annotated[Optional[Path], typer.Option("--run", help="A finished run folder (fedi2i train --out).")] = None,
    model: Annotated[Optional[Path], typer.Option(
        "--model", help="A model.safetensors file (it carries its config).")] = None,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Output folder, or the output file for one MRI (.nii.gz, .nii or .mha).")] = Path("sct"),
    mask: Annotated[Optional[Path], typer.Option(
        "--mask", help="Body mask of a single MRI file (default: a patient folder's mask.*, else estimated from "
                       "the MRI).")] = None,
    masked: Annotated[bool, typer.Option("--masked", help="Set the sCT outside the body mask to -1024 HU.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Write the synthetic CT of each MRI as int16 HU, on the MRI's grid (same shape, affine and direction)."""
    from fedi2i.inference import load_model, load_run_model, plan_jobs, predict_job

    setup_logging(verbose)
    if (run is None) == (model is None):
        raise ConfigError("give exactly one of --run DIR (a finished run folder) or --model FILE (model.safetensors)")
    jobs = plan_jobs(mri, out, mask)
    sct_model = load_run_model(run) if run is not None else load_model(model)  # type: ignore[arg-type]
    steps = track(jobs, description="Predicting sCT", console=console) if len(jobs) > 1 and not quiet else jobs
    for job in steps:
        written = predict_job(sct_model, job, apply_mask=masked)
        console.print(f"{job.name}: {written}", markup=False, highlight=False)
    console.print(f"{len(jobs)} sCT volume(s) written (int16 HU, on each MRI's grid)", markup=False)
