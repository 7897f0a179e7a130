"""``fedi2i data build`` and ``fedi2i data inspect``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.table import Table

from fedi2i.cli.app import check_out_folder, console, data_app, load_cli_config, setup_logging
from fedi2i.errors import DataError

if TYPE_CHECKING:  # image libraries load only when a command reads images
    from fedi2i.data.synthrad import PatientVolumes


@data_app.command("build")
def build(
    out: Optional[Path] = typer.Option(None, help="Output folder (default: the built-in dataset in the cache)."),
    config: str = typer.Option("quick", help="Preset name or YAML file giving the data settings."),
    source: Optional[str] = typer.Option(None, help="head (real CT skull + Colin27 T1) or phantom."),
    centres: Optional[int] = typer.Option(None, help="Number of centres (letters A, B, ...)."),
    patients: Optional[int] = typer.Option(None, help="Patients per centre."),
    seed: Optional[int] = typer.Option(None, help="Seed (default: the config's)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even when a complete dataset is already there."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Build a paired MRI/CT dataset in the SynthRAD2023 layout (realistic heads by default).

    A complete dataset already in the folder is reused, not rebuilt (use --force to rebuild it).
    """
    setup_logging(verbose)
    check_out_folder(out)
    cfg = load_cli_config(config, data__source=source, data__n_centres=centres,
                          data__patients_per_centre=patients, seed=seed)
    if force:
        from fedi2i.data.federation import COMPLETE, default_dataset_dir

        marker = (out or default_dataset_dir(cfg.data, cfg.seed)) / COMPLETE
        marker.unlink(missing_ok=True)
    from fedi2i.data.federation import build_cached  # torch loads only when a dataset is built

    built = build_cached(cfg.data, cfg.seed, out=out)
    if built.fallback:
        console.print(f"note: built the {built.source} dataset instead of {built.requested} (see the warning "
                      f"above); it is cached under its own name", markup=False)
    verb = "already complete, reused" if built.reused else "written"
    console.print(f"{built.source} dataset {verb}: {built.root}", markup=False)


def _flags(vol: PatientVolumes) -> str:
    from fedi2i.data.geometry import ANISOTROPY_RATIO, OBLIQUE_DEG, anisotropy, obliquity_deg

    flags = []
    tilt = obliquity_deg(vol.direction)
    if tilt > OBLIQUE_DEG:
        flags.append(f"oblique {tilt:.1f} deg (resampled onto axial planes)")
    ratio = anisotropy(vol.spacing)
    if ratio > ANISOTROPY_RATIO:
        flags.append(f"anisotropic {ratio:.1f}:1")
    return "; ".join(flags) or "-"


@data_app.command("inspect")
def inspect(
    root: Path = typer.Argument(..., help="Dataset folder in the SynthRAD2023 layout."),
    mapping: Optional[Path] = typer.Option(None, help="CSV/JSON patient->centre mapping (else from IDs)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Report bad patients but exit 0 (train and audit "
                                                            "with --skip-bad leave them out)."),
) -> None:
    """Check every patient (files, grid, values, mask) and show orientation, spacing and pixel type.

    Exit code 3 when a patient has a problem (0 with --skip-bad).
    """
    from fedi2i.data.geometry import orientation_code
    from fedi2i.data.synthrad import load_centre_mapping, load_patient, scan_dataset

    records = scan_dataset(root, load_centre_mapping(mapping) if mapping else None)
    table = Table(title=str(root))
    for col in ("patient", "centre", "shape (z,y,x)", "spacing z,y,x (mm)", "orientation", "mr dtype", "flags",
                "status"):
        table.add_column(col, overflow="fold")
    bad: dict[str, str] = {}
    for record in records:
        try:
            vol = load_patient(record)
        except DataError as exc:
            bad[record.pid] = str(exc)
            table.add_row(record.pid, record.centre, "-", "-", "-", "-", "-", "error (below)")
            continue
        table.add_row(record.pid, record.centre, str(vol.ct.shape), ", ".join(f"{s:.2f}" for s in vol.spacing),
                      orientation_code(vol.direction), vol.dtypes.get("mr", "?"), _flags(vol), "ok")
    console.print(table, markup=False)
    for message in bad.values():
        console.print(f"problem: {message}", markup=False, highlight=False, soft_wrap=True)
    centres = sorted({r.centre for r in records})
    console.print(f"{len(records)} patients in {len(centres)} centres ({', '.join(centres)}); {len(bad)} with "
                  "problems", markup=False)
    if len(centres) >= 2:
        console.print(f"with --data {root}, fedi2i trains on centres {', '.join(centres[:-1])} and keeps "
                      f"{centres[-1]} unseen unless the config names centres found here", markup=False)
    if bad and not skip_bad:
        raise DataError(f"{len(bad)} patient(s) failed their checks ({', '.join(bad)}); fix them, or pass "
                        "--skip-bad to train and audit without them", path=str(root))
