"""``fedi2i attack membership``: FedMIA and baseline membership inference on a trained run."""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedi2i.cli.app import attack_app, check_out_folder, choices, console, run_config, setup_logging
from fedi2i.errors import ConfigError

if TYPE_CHECKING:  # the attack code (torch) is imported only when the command runs
    from fedi2i.attacks.membership.collect import Progress as ProgressFn

# The attack's method names (``fedi2i.attacks.membership.METHODS``, checked by a test), for --help.
METHOD_NAMES = ("fedmia-loss", "fedmia-grad", "loss", "loss-global", "loss-series", "grad-norm", "grad-cosine",
                "grad-diff")
MembershipMethod = choices("MembershipMethod", METHOD_NAMES)
Sigma = choices("Sigma", ("pooled", "per-sample", "floored"))  # MembershipSettings.sigma, checked by a test


def parse_round_list(text: Optional[str]) -> Any:
    if text is None or text == "all":
        return text
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--rounds expects all or a comma list of recorded rounds, got {text!r}") from None


@contextmanager
def stage_progress(enabled: bool) -> Iterator[ProgressFn | None]:
    """A rich bar per signal stage (loss, gradient, gradient norm)."""
    if not enabled:
        yield None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        tasks: dict[str, Any] = {}

        def tick(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(f"{stage} signals", total=total)
            progress.update(tasks[stage], completed=done)

        yield tick


@attack_app.command("membership")
def membership_command(
    run: Annotated[Path, typer.Option("--run", help="Trained run folder (holds record/ and config.yaml).")],
    method: Annotated[Optional[list[MembershipMethod]], typer.Option(  # type: ignore[valid-type]
        "--method", "-m", help="Method(s), repeatable (default: all).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: RUN/attacks/membership).")] = None,
    rounds: Annotated[Optional[str], typer.Option(help="Recorded rounds to use: all or a comma list.")] = None,
    max_slices: Annotated[Optional[int], typer.Option("--max-slices", help="Candidate slices per patient.")] = None,
    sigma: Annotated[Optional[Sigma], typer.Option(help="FedMIA reference spread.")] = None,  # type: ignore[valid-type]
    seed: Annotated[Optional[int], typer.Option(help="Seed of the candidate draw and bootstrap.")] = None,
    shuffle_labels: Annotated[bool, typer.Option(
        "--shuffle-labels", help="Control: permute membership labels.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Who trained on which patient? FedMIA (loss / gradient) and baselines, per centre, from the
    curious-server record; under secure aggregation only what the aggregate reveals."""
    setup_logging(verbose)
    check_out_folder(out)
    wanted = parse_round_list(rounds)
    attacks = run_config(run).attacks  # a wrong folder is named before the attack code loads
    from fedi2i.fl.observer import ServerRecord

    ServerRecord(run).verify()  # a damaged record file is named before data, models and attack code load
    from fedi2i.attacks.membership import run_membership, settings_from_config

    settings = settings_from_config(attacks, methods=[m.value for m in method or []] or None, rounds=wanted,
                                    max_slices_per_patient=max_slices, sigma=sigma and sigma.value, seed=seed,
                                    shuffle_labels=shuffle_labels or None)
    out_dir = out or run / "attacks" / "membership"
    with stage_progress(not quiet) as tick:
        result = run_membership(run, settings=settings, out_dir=out_dir, progress=tick)
    show_results(result)
    console.print(f"results in {out_dir} (membership.json, membership.csv, membership.md, roc_*.png)", markup=False)


def show_results(result: dict[str, Any]) -> None:
    mode = "secure aggregation: the server sees only the aggregate" if result["secure"] else \
        "individual updates visible to the server"
    table = Table(title=f"membership AUC per centre, slice level ({mode})\n"
                        "all non-members (same-centre non-members) / patient level")
    table.add_column("method")
    for centre in result["clients"]:
        table.add_column(centre, justify="right")
    for name, entry in result["methods"].items():
        if not entry["available"]:
            table.add_row(name, *["[dim]unavailable[/]"] * len(result["clients"]))
            continue
        cells = []
        for centre in result["clients"]:
            v = entry["centres"].get(centre)
            if v is None:
                cells.append("n/a")
                continue
            same = v["slice"]["auc_same_centre"]
            cells.append(f"{v['slice']['auc']:.2f} ({'n/a' if same is None else f'{same:.2f}'}) / "
                         f"{v['patient']['auc']:.2f}")
        table.add_row(name, *cells)
    console.print(table)
    reasons = {e["reason"] for e in result["methods"].values() if not e["available"] and "reason" in e}
    for reason in reasons:
        console.print(f"note: {reason}", markup=False)
