"""``fedi2i flower``: deployment files for a Flower federation, and a loopback try-out.

``fedi2i flower config`` writes (or prints) the Flower app, Flower's connection file and the commands
the server and each hospital run. ``fedi2i flower local`` starts one SuperLink and one SuperNode per
training centre on 127.0.0.1, runs the config on them and stops every process it started.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from fedi2i.cli.app import app, check_out_folder, complete_preset, console, load_cli_config, presets_help, setup_logging
from fedi2i.errors import ConfigError
from fedi2i.fl.flower import deploy
from fedi2i.io import write_text

flower_app = typer.Typer(help="Run the federation on Flower: each hospital a SuperNode (needs the flower extra: pip install 'fedi2i\\[flower]').",
                         no_args_is_help=True)

ConfigOption = Annotated[str, typer.Option("--config", "-c", help=presets_help(),
                                           autocompletion=complete_preset)]
SetOption = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override any config key: --set train.rounds=3")]


def _config(config: str, set_: Optional[list[str]], secagg: bool, rounds: Optional[int]):  # noqa: ANN202
    return load_cli_config(config, set_, secagg__enabled=secagg or None, train__rounds=rounds)


@flower_app.command("config")
def config_command(
    config: ConfigOption = "tiny",
    out: Annotated[Optional[Path], typer.Option(
        help="Folder to write app/, flwr-home/config.toml and commands.txt into (default: print them).")] = None,
    superlink: Annotated[str, typer.Option(
        help="SuperLink address host:port as nodes and flwr reach it.")] = "127.0.0.1:8000",
    run_dir: Annotated[Path, typer.Option(
        help="Run folder on the server machine (absolute; a relative one is taken from the "
             "SuperLink's folder).")] = Path("runs/flower"),
    insecure: Annotated[bool, typer.Option("--insecure", help="No TLS (loopback try-outs only).")] = False,
    root_certificates: Annotated[Optional[Path], typer.Option(
        help="CA certificate the nodes and flwr trust.")] = None,
    secagg: Annotated[bool, typer.Option("--secagg", help="Secure aggregation.")] = False,
    rounds: Annotated[Optional[int], typer.Option(help="Override the number of rounds.")] = None,
    set_: SetOption = None,
) -> None:
    """Write or print the Flower app, the connection file and the SuperLink / SuperNode commands."""
    check_out_folder(out)
    cfg = _config(config, set_, secagg, rounds)
    port = parse_address(superlink, "--superlink")
    pyproject = deploy.app_pyproject(cfg, run_dir)
    connection = deploy.connection_toml(superlink, insecure=insecure, root_certificates=root_certificates)
    link = deploy.superlink_command("0.0.0.0", port, insecure=insecure,
                                    certfile=None if insecure else "server.pem",
                                    keyfile=None if insecure else "server.key",
                                    ca_certfile=None if insecure else "ca.pem", node_auth=not insecure)
    nodes = [deploy.supernode_command(superlink, c, f"/data/{c}", runtime_port=9094, insecure=insecure,
                                      root_certificates=None if insecure else "ca.pem",
                                      auth_private_key=None if insecure else f"node_{c}.key")
             for c in cfg.data.train_centres]
    commands = "\n".join([
        "# on the server machine", _shell(link), "",
        *[line for c, cmd in zip(cfg.data.train_centres, nodes) for line in (f"# at centre {c}", _shell(cmd), "")],
        "# on the machine that starts the run (FLWR_HOME holds config.toml)",
        "flwr run app fedi2i --stream"])
    if out is None:
        console.print("app/pyproject.toml", markup=False, highlight=False)
        console.print(pyproject, markup=False, highlight=False)
        console.print("$FLWR_HOME/config.toml", markup=False, highlight=False)
        console.print(connection, markup=False, highlight=False)
        console.print(commands, markup=False, highlight=False)
    else:
        deploy.write_app(out / "app", cfg, run_dir)
        write_text(out / "flwr-home" / "config.toml", connection)
        write_text(out / "commands.txt", commands + "\n")
        console.print(f"wrote {out / 'app' / 'pyproject.toml'}, {out / 'flwr-home' / 'config.toml'} and "
                      f"{out / 'commands.txt'} (see docs/deployment.md)", markup=False)
    try:
        deploy.require_flower()
    except deploy.FlowerUnavailable as exc:
        console.print(f"note: {exc}", markup=False, highlight=False)


def parse_address(address: str, option: str) -> int:
    """The port of a ``host:port`` address, checked (1..65535); IPv6 hosts go in brackets."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"{option} expects host:port such as 127.0.0.1:9092, got {address!r}")
    if not 1 <= int(port) <= 65535:
        raise ConfigError(f"{option} {address}: port {port} is out of range; use a port from 1 to 65535")
    if any(c.isspace() for c in host) or host.count(":") and not (host.startswith("[") and host.endswith("]")):
        raise ConfigError(f"{option} {address}: {host!r} is not a host name or address (IPv6 goes in brackets)")
    return int(port)


def _shell(cmd: list[str]) -> str:
    import shlex

    return " ".join(shlex.quote(Path(c).name if i == 0 else c) for i, c in enumerate(cmd))


@flower_app.command("local")
def local_command(
    config: ConfigOption = "tiny",
    out: Annotated[Path, typer.Option(
        help="Run folder (resumed if it holds a checkpoint).")] = Path("runs/flower-local"),
    data: Annotated[Optional[Path], typer.Option(
        help="Dataset folder every local node reads its centre from (default: the built-in dataset, built on first "
             "use).")] = None,
    secagg: Annotated[bool, typer.Option("--secagg", help="Secure aggregation over Flower.")] = False,
    rounds: Annotated[Optional[int], typer.Option(help="Override the number of rounds.")] = None,
    workdir: Annotated[Optional[Path], typer.Option(
        help="Where Flower's home, the app and the process logs go.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the run.")] = 1800.0,
    set_: SetOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Start a SuperLink and one SuperNode per training centre on 127.0.0.1, run, stop everything."""
    setup_logging(verbose)
    check_out_folder(out)
    check_out_folder(workdir, "--workdir")
    if timeout <= 0:
        raise ConfigError(f"--timeout must be a positive number of seconds, got {timeout}")
    deploy.require_flower()
    cfg = _config(config, set_, secagg, rounds)
    if data is not None:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": data})})
    console.print(f"starting a SuperLink and {len(cfg.data.train_centres)} SuperNodes on 127.0.0.1 ...")
    result = deploy.run_local(cfg, out, data_root=data, workdir=workdir, timeout=timeout)
    table = Table(title=f"Flower run {result.flower.run_id} ({result.flower.status})")
    for col in ("round", "seconds", "survivors", "exchanges"):
        table.add_column(col)
    for entry in result.history:
        stages = [k for k, v in entry.get("flower", {}).items() if isinstance(v, dict)]
        table.add_row(str(entry["round"]), f"{entry['round_seconds']:.1f}", ",".join(entry["survivors"]),
                      str(len(stages)))
    console.print(table)
    console.print(f"start-up {result.startup_seconds:.1f} s, run {result.flower.seconds:.1f} s; outputs in "
                  f"{result.run_dir} (checkpoint.pt, history.json, record/, model.pt); every Flower "
                  "process was stopped", markup=False)


@flower_app.command("keys")
def keys_command(
    centres: Annotated[list[str], typer.Argument(help="Centre ids, e.g. A B C D.")],
    out: Annotated[Path, typer.Option(help="Folder for <centre>.key and federation-keys.yaml.")] = Path("identity"),
) -> None:
    """Create each centre's SecAgg identity key (Ed25519) and the federation's list of public keys."""
    from fedi2i.fl.secagg.identity import KEYS_FILE, write_identities

    public = write_identities(out, centres)
    console.print(f"wrote {', '.join(f'{c}.key' for c in public)} and {KEYS_FILE} in {out}", markup=False)
    console.print(f"give each centre its own .key file (--node-config identity-key=...), and every centre a copy "
                  f"of {KEYS_FILE} (federation-keys=...)", markup=False)


app.add_typer(flower_app, name="flower")
