"""The typer application and the small pieces every command shares, among them the one error path.

Every command lets its errors rise; ``Fedi2iGroup.invoke`` turns them into one or two plain lines and
the exit code of their class (2 usage or config, 3 data, 4 run state, 1 an internal bug, 130 an
interrupt). Messages are printed without rich markup, so ``[patient X, file Y]`` and paths with
brackets reach the user as written. Only ``--verbose`` shows a traceback; otherwise an internal bug
writes its traceback to a log file and names it.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import traceback
from collections.abc import Iterable
from enum import Enum
from pathlib import Path
from typing import Any, NoReturn

import click
import typer
import yaml
from rich.console import Console
from typer.core import TyperGroup

from fedi2i.config import Config, load_config, preset_names
from fedi2i.errors import ConfigError, Fedi2iError, RunStateError

EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130


def _console(stderr: bool = False) -> Console:
    """A console that never cuts lines at 80 columns when the output is a file or a pipe."""
    stream = sys.stderr if stderr else sys.stdout
    tty = stream.isatty()
    return Console(stderr=stderr, width=None if tty else 400, soft_wrap=not tty)


console = _console()
err_console = _console(stderr=True)
_state = {"verbose": False}


class Fedi2iGroup(TyperGroup):
    """The root command group: every error of every subcommand passes through ``invoke``."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Fedi2iError as exc:
            fail(exc)
        except KeyboardInterrupt:
            err_console.print("interrupted: a run folder keeps its last finished round; run the same command "
                              "again to resume", markup=False, highlight=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except OSError as exc:
            if _state["verbose"]:
                raise
            where = exc.filename or "a file"
            _print_error(f"cannot use {where}: {exc.strerror or exc}; check the path and its permissions")
            raise typer.Exit(ConfigError.exit_code) from None
        except Exception as exc:  # a bug: say so, keep the traceback in a log
            if _state["verbose"]:
                raise
            log = _write_crash_log()
            _print_error(f"internal error ({type(exc).__name__}: {str(exc)[:300]}). This is a bug in fedi2i; "
                         f"the traceback is in {log} (rerun with --verbose to see it here)")
            raise typer.Exit(EXIT_INTERNAL) from None


def _print_error(message: str) -> None:
    err_console.print(f"error: {message}", markup=False, highlight=False, emoji=False)


def _write_crash_log() -> Path:
    handle = tempfile.NamedTemporaryFile("w", prefix="fedi2i-error-", suffix=".log", delete=False)
    with handle:
        handle.write(" ".join(sys.argv) + "\n\n" + traceback.format_exc())
    return Path(handle.name)


HELP = ("fedi2i: federated MRI-to-synthetic-CT translation with a built-in security audit.\n\n"
                "Train a U-Net across centres, attack it as a curious server or a malicious centre, "
                "defend it, and audit the whole attack x defence matrix.\n\n"
                "Exit codes: 0 done, 1 internal bug (traceback in a log file), 2 usage or configuration, "
                "3 input data, 4 run folder state, 130 interrupted.")
app = typer.Typer(help=HELP, cls=Fedi2iGroup, no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Build, read and check datasets in the SynthRAD2023 layout.", no_args_is_help=True)
attack_app = typer.Typer(help="Attacks on a trained run: gradient inversion, membership inference, poisoning.",
                         no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(attack_app, name="attack")


def choices(name: str, values: Iterable[str]) -> type[Enum]:
    """A str Enum of a fixed set of values: typer checks them, lists them in --help, and shell completion
    offers them. Built from the config's own Literal types, so the CLI cannot drift from the schema."""
    return Enum(name, {v: v for v in values}, type=str)  # type: ignore[return-value]


def presets_help(what: str = "or YAML file") -> str:
    """The help text of a preset option, naming the presets actually shipped."""
    return f"Preset ({', '.join(preset_names())}) {what}."


def complete_preset(incomplete: str) -> list[str]:
    """Shell completion of a preset option: the shipped presets (a YAML path is completed by the shell)."""
    return [name for name in preset_names() if name.startswith(incomplete)]


def setup_logging(verbose: bool) -> None:
    """Log level for the command; ``--verbose`` also lets tracebacks through."""
    _state["verbose"] = verbose
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``--set train.rounds=3`` style overrides; values are parsed as YAML (numbers, lists, booleans)."""
    overrides: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value such as train.rounds=3, got {pair!r}")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            problem = str(exc).splitlines()[0]
            raise ConfigError(f"--set {key.strip()}: the value {value!r} is not valid YAML ({problem}); "
                              "quote strings and close brackets, e.g. --set data.train_centres=[A,B]") from None
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
    cfg = load_config(config, overrides)
    if options.get("data__root") is not None and not {"data.train_centres", "data.unseen_centres"} & set(overrides):
        from fedi2i.data.federation import detect_centres

        found, note = detect_centres(cfg.data)
        if note:
            err_console.print(f"note: {note}", markup=False, highlight=False)
            cfg = load_config(config, {**overrides, "data.train_centres": found.train_centres,
                                       "data.unseen_centres": found.unseen_centres})
    return cfg


def check_out_folder(out: Path | None, option: str = "--out") -> None:
    """An output option must name a folder (or a path not there yet), never a file."""
    if out is not None and out.exists() and not out.is_dir():
        raise ConfigError(f"{option} {out} is a file, not a folder; name a folder")


def run_config(run: Path) -> Config:
    """The config a trained run folder was made with (its config.yaml), or a run-state error naming it."""
    path = run / "config.yaml"
    if not run.exists():
        raise RunStateError(f"run folder {run} does not exist; give the --out folder of a fedi2i train run")
    if not run.is_dir():
        raise RunStateError(f"--run {run} is a file; give the folder of a fedi2i train run")
    if not path.is_file():
        raise RunStateError(f"{run} has no config.yaml: is it a fedi2i run folder?")
    try:
        return load_config(path)
    except ConfigError as exc:
        raise RunStateError(f"{exc}\n(the run folder's config.yaml does not load; retrain the run with "
                            "--fresh)") from None


def fail(exc: Fedi2iError) -> NoReturn:
    """Print a fedi2i error as plain text (no markup) and exit with its class's code."""
    _print_error(str(exc))
    raise typer.Exit(code=getattr(exc, "exit_code", 2))
