"""``fedi2i data build`` and ``fedi2i data inspect``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional, get_args

import typer
from rich.table import Table

from fedi2i.cli.app import (check_out_folder, choices, complete_preset, console, data_app, load_cli_config,
                            setup_logging)
from fedi2i.config import DataConfig
from fedi2i.errors import DataError

if TYPE_CHECKING:  # image libraries load only when a command reads images
    from fedi2i.data.synthrad import PatientVolumes


# The built-in dataset sources, from the config's schema.
Source = choices("Source", get_args(DataConfig.model_fields["source"].annotation))


@data_app.command("build")
def build(
    out: Annotated[Optional[Path], typer.Option(
        help="Output folder (default: the built-in dataset in the cache).")] = None,
    config: Annotated[str, typer.Option(
        help="Preset name or YAML file giving the data settings.", autocompletion=complete_preset)] = "quick",
    source: Annotated[Optional[Source], typer.Option(  # type: ignore[valid-type]
        help="head (real CT skull + Colin27 T1) or phantom.")] = None,
    centres: Annotated[Optional[int], typer.Option(help="Number of centres (letters A, B, ...).")] = None,
    patients: Annotated[Optional[int], typer.Option(help="Patients per centre.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed (default: the config's).")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Rebuild even when a complete dataset is already there.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Build a paired MRI/CT dataset in the SynthRAD2023 layout (realistic heads by default).

    A complete dataset already in the folder is reused, not rebuilt (use --force to rebuild it).
    """
    setup_logging(verbose)
    check_out_folder(out)
    cfg = load_cli_config(config, data__source=source and source.value, data__n_centres=centres,
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
    root: Annotated[Path, typer.Argument(help="Dataset folder in the SynthRAD2023 layout.")],
    mapping: Annotated[Optional[Path], typer.Option(
        help="CSV/JSON patient->centre mapping (else from IDs).")] = None,
    skip_bad: Annotated[bool, typer.Option(
        "--skip-bad", help="Report bad patients but exit 0 (train and audit with --skip-bad leave them "
                           "out).")] = False,
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
