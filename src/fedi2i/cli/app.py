"""The typer application and the small pieces every command shares."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console

from fedi2i.config import Config, load_config
from fedi2i.errors import Fedi2iError

console = Console()
app = typer.Typer(
    help="fedi2i: federated MRI-to-synthetic-CT translation with a built-in security audit.\n\n"
         "Train a U-Net across centres, attack it as a curious server or a malicious centre, "
         "defend it, and audit the whole attack x defence matrix.",
    no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Build, read and check datasets in the SynthRAD2023 layout.", no_args_is_help=True)
attack_app = typer.Typer(help="Attacks on a trained run: gradient inversion, membership inference, poisoning.",
                         no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(attack_app, name="attack")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``--set train.rounds=3`` style overrides; values are parsed as YAML (numbers, lists, booleans)."""
    overrides: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise Fedi2iError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def load_cli_config(config: str, set_: list[str] | None = None, **options: Any) -> Config:
    """A preset or YAML file with the ``--set`` pairs, then the command's own options on top.

    ``options`` are dotted keys passed as ``data__root=...``; None means "not given" and is skipped, so a
    command's flags only override the config when the user used them.
    """
    overrides = parse_overrides(set_)
    for key, value in options.items():
        if value is not None:
            overrides[key.replace("__", ".")] = str(value) if isinstance(value, Path) else value
    return load_config(config, overrides)


def fail(exc: Exception) -> None:
    """Print a fedi2i error as one clear message and exit non-zero (no traceback for user errors)."""
    console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
    raise typer.Exit(code=2)
