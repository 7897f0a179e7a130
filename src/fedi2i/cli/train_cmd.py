"""``fedi2i train``: centralised or federated training from a preset or YAML config."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional, get_args

import typer
from rich.table import Table

from fedi2i.cli.app import (app, check_out_folder, choices, complete_preset, console, load_cli_config, presets_help,
                            setup_logging)
from fedi2i.cli.progress import round_progress
from fedi2i.config import Config, FederationConfig
from fedi2i.errors import ConfigError
from fedi2i.runfolder import check_resumable, run_fingerprint

# The aggregation rules the config accepts, as a choice typer checks and lists in --help.
Strategy = choices("Strategy", get_args(FederationConfig.model_fields["strategy"].annotation))


def parse_rounds(text: Optional[str]) -> object:
    """``all``, ``none`` or a comma list such as ``0,5,9``."""
    if text is None:
        return None
    if text in ("all", "none"):
        return text
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--record-rounds expects all, none or a comma list of rounds, got {text!r}") from None


@app.command("train")
def train_command(
    config: Annotated[str, typer.Option(
        "--config", "-c", help=presets_help(),
        autocompletion=complete_preset)] = "quick",
    out: Annotated[Optional[Path], typer.Option(
        help="Run folder, resumed if it holds an unfinished run of the same settings (default: "
             "runs/<config>-<strategy>, see below).")] = None,
    centralised: Annotated[bool, typer.Option(
        "--centralised", help="Pool every training centre (baseline).")] = False,
    strategy: Annotated[Optional[Strategy], typer.Option(help="Aggregation rule.")] = None,
    secagg: Annotated[bool, typer.Option("--secagg", help="Secure aggregation (FedAvg weighting).")] = False,
    dp: Annotated[bool, typer.Option("--dp", help="Differential privacy on client updates (clip + noise).")] = False,
    rounds: Annotated[Optional[int], typer.Option(help="Override the number of rounds.")] = None,
    record_rounds: Annotated[Optional[str], typer.Option(
        help="Rounds the curious server records: all, none, 0,5,9.")] = None,
    data: Annotated[Optional[Path], typer.Option(
        help="Dataset folder (default: built-in dataset, built on first use).")] = None,
    skip_bad: Annotated[bool, typer.Option(
        "--skip-bad", help="Leave out patients whose data fail their checks (listed in metrics.json) instead of "
                           "stopping.")] = False,
    fresh: Annotated[bool, typer.Option(
        "--fresh", help="Remove the folder's earlier run (checkpoint, record, results) and start over.")] = False,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override any config key: --set train.lr=1e-3")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Train the MRI-to-sCT U-Net; writes metrics.json, history.json, figures/ and the curious-server record.

    Without --out the run goes to runs/<config name>-<centralised|strategy>[-secagg][-dp]. A folder that
    holds a run of other settings is never resumed: pass another --out, or --fresh to replace it.
    """
    setup_logging(verbose)
    check_out_folder(out)
    cfg = load_cli_config(config, set_, federation__strategy=strategy and strategy.value, train__rounds=rounds,
                          data__root=data, data__skip_bad=skip_bad or None,
                          federation__record_rounds=parse_rounds(record_rounds),
                          secagg__enabled=secagg or None, dp__enabled=dp or None)
    out = out or default_run_dir(cfg, centralised)
    if not fresh:  # refuse another config's run at once, before torch and MONAI load
        check_resumable(out, run_fingerprint(cfg, centralised))
    from fedi2i.training import RunOptions, train

    label = "centralised" if centralised else f"{cfg.federation.strategy}{' + secagg' if cfg.secagg.enabled else ''}"
    with round_progress(cfg.train.rounds, label, enabled=not quiet) as on_round:
        result = train(cfg, out, options=RunOptions(centralised=centralised, resume=not fresh, on_round=on_round))
    show_metrics(result.metrics)
    console.print(f"outputs in {out} (metrics.json, history.json, figures/)", markup=False)


def default_run_dir(cfg: Config, centralised: bool) -> Path:
    """``runs/quick-fedmedian-secagg``: runs of different settings land in different folders."""
    parts = [cfg.name, "centralised" if centralised else cfg.federation.strategy]
    parts += [p for p, on in (("secagg", cfg.secagg.enabled), ("dp", cfg.dp.enabled)) if on]
    return Path("runs") / re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts))


def show_metrics(metrics: dict) -> None:
    table = Table(title="test metrics per centre (mean over patients): model grid | native grid (SynthRAD)")
    for col in ("centre", "role", "patients", "MAE (HU)", "PSNR (dB)", "SSIM"):
        table.add_column(col)
    native = metrics.get("native_grid", {})
    for role in ("seen", "unseen"):
        for centre, s in metrics.get(role, {}).items():
            n = native.get(role, {}).get(centre)
            cells = [f"{s[k]:{f}}" + (f" | {n[k]:{f}}" if n else "") for k, f in (("mae", ".1f"), ("psnr", ".2f"),
                                                                              ("ssim", ".3f"))]
            table.add_row(centre, role, f"{s['n_patients']:.0f}", *cells)
    console.print(table)
