"""Deployment files and a local federation on loopback: one SuperLink, one SuperNode per centre.

Public API (no Flower import needed for the first three):

- :func:`app_pyproject` / :func:`write_app`: the Flower app folder (a ``pyproject.toml`` whose components
  point at :mod:`fedi2i.fl.flower.serverapp` and :mod:`fedi2i.fl.flower.clientapp`, with the fedi2i
  config as YAML in ``[tool.flwr.app.config]``). ``[project].dependencies`` stays empty: every node
  already has ``fedi2i[flower]`` installed, and a non-empty list makes the SuperLink try to install it.
- :func:`connection_toml`: the ``[superlink.<name>]`` entry of Flower's ``config.toml`` that ``flwr run``
  reads from ``$FLWR_HOME``.
- :func:`superlink_command` / :func:`supernode_command`: the commands a server and a hospital run.
- :class:`LocalFederation`: starts those commands on 127.0.0.1 with free ports, runs an app with
  ``flwr run``, and stops every process it started (by PID, children included), also on errors. By
  default its SuperNodes fork their ClientApp tasks from one pre-started interpreter
  (:mod:`fedi2i.fl.flower.prestart`) instead of starting and importing a fresh one per message.
- :func:`run_local`: all of the above for one config; returns the run folder's results.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fedi2i.config import Config
from fedi2i.errors import ConfigError, Fedi2iError
from fedi2i.io import write_text
from fedi2i.fl.flower import protocol as P

log = logging.getLogger(__name__)

INSTALL_HINT = "Flower is not installed; install the extra with: pip install fedi2i[flower]"
APP_NAME = "fedi2i-flower-app"
CONNECTION = "fedi2i"
SERVERAPP = "fedi2i.fl.flower.serverapp:app"
CLIENTAPP = "fedi2i.fl.flower.clientapp:app"


class FlowerUnavailable(Fedi2iError):
    """The ``flower`` extra is not installed."""


class FlowerRunError(Fedi2iError):
    """A Flower process failed to start, or a run failed or timed out."""


def require_flower() -> None:
    """Raise :class:`FlowerUnavailable` with the install command when flwr is missing."""
    import importlib.util

    if importlib.util.find_spec("flwr") is None:
        raise FlowerUnavailable(INSTALL_HINT)


# ------------------------------------------------------------------ TOML (flat tables only)
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        readable = "\n" in value and "'''" not in value and all(c.isprintable() or c == "\n" for c in value)
        if readable:  # multi-line literal string: the YAML config stays readable in pyproject.toml
            return "'''\n" + value + "'''"
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml(tables: dict[str, dict[str, Any]]) -> str:
    """TOML text for ``{table name: {key: scalar or list}}`` (keys with dashes are quoted when needed)."""
    lines: list[str] = []
    for name, entries in tables.items():
        lines.append(f"[{name}]")
        for key, value in entries.items():
            bare = key.replace("-", "").replace("_", "").isalnum()
            lines.append(f"{key if bare else json.dumps(key)} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------ deployment files
def app_pyproject(config: Config, run_dir: str | Path, *, poll_interval: float = 0.2, stage_timeout: float = 600.0,
                  min_nodes: int = 0, resume: bool = True) -> str:
    """The app's ``pyproject.toml``: components, and the run config the ServerApp and ClientApps read."""
    return _toml({
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {"name": APP_NAME, "version": "1.0.0", "license": "Apache-2.0",
                    "description": f"fedi2i federated MRI-to-sCT training ({config.name})",
                    "dependencies": []},
        "tool.flwr.app": {"publisher": "fedi2i"},
        "tool.flwr.app.components": {"serverapp": SERVERAPP, "clientapp": CLIENTAPP},
        "tool.flwr.app.config": {
            P.RUN_CONFIG_YAML: yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False),
            P.RUN_DIR: str(run_dir), P.RUN_POLL: float(poll_interval), P.RUN_TIMEOUT: float(stage_timeout),
            P.RUN_NODES: int(min_nodes), P.RUN_RESUME: bool(resume)},
    })


def write_app(app_dir: Path, config: Config, run_dir: str | Path, **options: Any) -> Path:
    """Write the app folder (just its ``pyproject.toml``); returns the folder."""
    app_dir = Path(app_dir)
    write_text(app_dir / "pyproject.toml", app_pyproject(config, run_dir, **options))
    return app_dir


def connection_toml(address: str, *, name: str = CONNECTION, insecure: bool = False,
                    root_certificates: str | Path | None = None) -> str:
    """Flower's ``$FLWR_HOME/config.toml`` with one SuperLink connection, made the default."""
    conn: dict[str, Any] = {"address": address}
    if insecure:
        conn["insecure"] = True
    if root_certificates:
        conn["root-certificates"] = str(root_certificates)
    return _toml({"superlink": {"default": name}, f"superlink.{name}": conn})


def _bin(name: str) -> str:
    """A Flower executable next to this interpreter (the venv), else whatever PATH finds."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def superlink_command(host: str, port: int, *, insecure: bool = False, certfile: str | None = None,
                      keyfile: str | None = None, ca_certfile: str | None = None,
                      node_auth: bool = False) -> list[str]:
    """``flower-superlink``: one HTTP port serves the Fleet API (nodes), the Control API (``flwr run``)
    and the runtime API of the ServerApp."""
    cmd = [_bin("flower-superlink"), "--host", host, "--port", str(port),
           "--disable-runtime-dependency-installation"]
    if insecure:
        cmd.append("--insecure")
    else:
        for flag, value in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile), ("--ssl-ca-certfile", ca_certfile)):
            if not value:
                raise ConfigError(f"a TLS SuperLink needs {flag} (or pass insecure=True for a loopback try-out)")
            cmd += [flag, str(value)]
    if node_auth:
        cmd.append("--enable-supernode-auth")
    return cmd


def node_config_arg(centre: str, data_path: str | Path, **extra: Any) -> str:
    """The ``--node-config`` value: space-separated ``key=value`` pairs, strings quoted."""
    items = {P.NODE_CENTRE: centre, P.NODE_DATA: str(data_path), **{k.replace("_", "-"): v for k, v in extra.items()
                                                                      if v is not None}}
    return " ".join(f"{k}={_toml_value(v)}" for k, v in items.items())


def supernode_command(superlink: str, centre: str, data_path: str | Path, *, runtime_port: int,
                      insecure: bool = False, root_certificates: str | None = None,
                      auth_private_key: str | None = None, **node_options: Any) -> list[str]:
    """``flower-supernode`` for one centre; ``runtime_port`` is the node-local port its ClientApp
    processes connect to (bound to 127.0.0.1)."""
    cmd = [_bin("flower-supernode"), "--superlink", superlink, "--host", "127.0.0.1", "--port", str(runtime_port),
           "--node-config", node_config_arg(centre, data_path, **node_options)]
    if insecure:
        cmd.append("--insecure")
    elif root_certificates:
        cmd += ["--root-certificates", str(root_certificates)]
    if auth_private_key:
        cmd += ["--auth-supernode-private-key", str(auth_private_key)]
    return cmd


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free right now (picked at run time, never hard-coded)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------ processes
def _children() -> dict[int, list[int]]:
    """Parent PID -> child PIDs of every visible process (Linux /proc)."""
    tree: dict[int, list[int]] = {}
    if not Path("/proc").is_dir():  # not Linux: only the processes started directly can be tracked
        return tree
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Flower's SuperExec, ServerApp and ClientApp processes)."""
    tree, out, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def process_cpu(pid: int) -> float | None:
    """User + system CPU-seconds of a live process (Linux /proc), without its children; None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def stop_processes(pids: list[int], grace: float = 5.0) -> None:
    """SIGTERM each PID, wait up to ``grace`` seconds, SIGKILL what is left."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@dataclass
class FlowerRun:
    """Outcome of one ``flwr run`` on a local federation."""

    run_id: str
    seconds: float
    status: str
    output: str


@dataclass
class LocalFederation:
    """A SuperLink and one SuperNode per centre on 127.0.0.1, insecure (loopback try-outs and tests).

    Use as a context manager: every process it started (and their children) is stopped on exit.
    """

    centres: dict[str, Path]
    workdir: Path
    host: str = "127.0.0.1"
    superexec_poll: float = 0.25
    prestart: bool = True
    port: int = 0
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    _seen: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        require_flower()
        self.workdir = Path(self.workdir)
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        self.flwr_home = self.workdir / "flwr-home"
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        self.bin_dir = self.workdir / "bin"
        self.socket_path = self.workdir / "clientapp.sock"
        if len(str(self.socket_path)) > 100:  # AF_UNIX paths are limited to about 108 bytes
            self.socket_path = Path(tempfile.mkdtemp(prefix="fedi2i-")) / "clientapp.sock"
        self.prestart_cpu_s: float | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """Flower's home in the work folder, no telemetry or update check, the venv's tools first on PATH."""
        env = dict(os.environ)
        env.update({"FLWR_HOME": str(self.flwr_home), "FLWR_TELEMETRY_ENABLED": "0",
                    "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": str(self.superexec_poll),
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"})
        if self.prestart:  # the SuperExec finds the forking flwr-clientapp launcher first
            env["PATH"] = f"{self.bin_dir}{os.pathsep}{env['PATH']}"
        return env

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        out = open(self.workdir / "logs" / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env(), cwd=self.workdir)
        out.close()
        self.processes[name] = proc
        return proc

    def start(self, timeout: float = 60.0) -> "LocalFederation":
        """Start the SuperLink, wait until it answers, then start the SuperNodes, each with its own SecAgg
        identity key (written into the work folder); on any failure stop whatever was already started
        before raising."""
        from fedi2i.fl.secagg.identity import KEYS_FILE, write_identities

        atexit.register(self.stop)
        try:
            self.port = self.port or free_port(self.host)
            (self.flwr_home / "config.toml").write_text(connection_toml(self.address, insecure=True))
            keys = self.workdir / "identity"
            if not (keys / KEYS_FILE).exists():
                write_identities(keys, sorted(self.centres))
            if self.prestart:
                self._start_prestart(timeout)
            link = self._spawn("superlink", superlink_command(self.host, self.port, insecure=True))
            self._wait_ready(link, timeout)
            for centre, data in sorted(self.centres.items()):
                self._spawn(f"supernode-{centre}", supernode_command(
                    self.address, centre, data, insecure=True, runtime_port=free_port(),
                    identity_key=str(keys / f"{centre}.key"), federation_keys=str(keys / KEYS_FILE)))
        except BaseException:
            self.stop()
            raise
        return self

    def _start_prestart(self, timeout: float) -> None:
        """Start the pre-started ClientApp interpreter and write the launcher the SuperNodes run; wait
        until it has imported everything (its start-up CPU-seconds are kept in ``prestart_cpu_s``)."""
        from fedi2i.fl.flower.prestart import write_launcher

        ready = self.workdir / "logs" / "prestart-ready.json"
        ready.unlink(missing_ok=True)
        write_launcher(self.bin_dir, self.socket_path)
        proc = self._spawn("prestart", [sys.executable, "-m", "fedi2i.fl.flower.prestart", str(self.socket_path),
                                        "--ready", str(ready)])
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise FlowerRunError(f"the pre-started ClientApp interpreter did not start; see "
                                     f"{self.workdir / 'logs' / 'prestart.log'}")
            time.sleep(0.1)
        self.prestart_cpu_s = float(json.loads(ready.read_text())["preload_cpu_s"])

    def prestart_cpu(self) -> float | None:
        """CPU-seconds the pre-started interpreter has used so far (imports, then forking), or None."""
        proc = self.processes.get("prestart")
        return process_cpu(proc.pid) if proc is not None and proc.poll() is None else None

    def _wait_ready(self, link: subprocess.Popen, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if link.poll() is not None:
                raise FlowerRunError(f"flower-superlink exited with code {link.returncode}; see "
                                     f"{self.workdir / 'logs' / 'superlink.log'}")
            try:
                with urllib.request.urlopen(f"http://{self.address}/health", timeout=1) as res:
                    if res.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise FlowerRunError(f"the SuperLink did not answer on {self.address} within {timeout:.0f} s")

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run the ``flwr`` CLI against this federation."""
        proc = subprocess.Popen([_bin("flwr"), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=self.env(), cwd=self.workdir, text=True)
        self._seen.add(proc.pid)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_processes([proc.pid, *descendants(proc.pid)])
            out, _ = proc.communicate()
            raise FlowerRunError(f"`flwr {' '.join(args[:1])}` did not finish within {timeout:.0f} s:\n{out[-2000:]}")
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")

    def run(self, app_dir: Path, timeout: float = 900.0) -> FlowerRun:
        """``flwr run --stream`` the app and wait for the run to end; raise if it did not succeed."""
        self._check_alive()
        start = time.perf_counter()
        res = self.flwr("run", str(app_dir), CONNECTION, "--stream", timeout=timeout)
        seconds = time.perf_counter() - start
        run_id = ""
        for line in res.stdout.splitlines():
            if "Successfully started run" in line:
                run_id = line.split("Successfully started run", 1)[1].split()[0]
        if res.returncode != 0 or not run_id:
            raise FlowerRunError(f"`flwr run` failed (exit {res.returncode}):\n{res.stdout[-3000:]}")
        status = self.run_status(run_id)
        if "completed" not in status:
            raise FlowerRunError(f"run {run_id} ended with status {status!r}; ServerApp log:\n{res.stdout[-3000:]}")
        return FlowerRun(run_id, seconds, status, res.stdout)

    def run_status(self, run_id: str) -> str:
        res = self.flwr("ls", CONNECTION, "--run-id", run_id, "--format", "json")
        try:
            runs = json.loads(res.stdout[res.stdout.index("{"):])["runs"]
            return str(runs[0]["status"])
        except (ValueError, KeyError, IndexError) as exc:
            raise FlowerRunError(f"cannot read the status of run {run_id}: {exc}\n{res.stdout[-1000:]}") from None

    def _check_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.processes.items() if p.poll() is not None}
        if dead:
            raise FlowerRunError(f"Flower process(es) exited: {dead}; logs in {self.workdir / 'logs'}")

    def pids(self) -> list[int]:
        """Every live process this federation started, with all their descendants."""
        roots = [p.pid for p in self.processes.values()] + sorted(self._seen)
        out: list[int] = []
        for pid in roots:
            for p in [pid, *descendants(pid)]:
                if p not in out and _alive(p):
                    out.append(p)
        return out

    def stop(self) -> None:
        """Stop every process this federation started (idempotent)."""
        pids = self.pids()
        stop_processes(pids)
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.wait(timeout=5)
        atexit.unregister(self.stop)

    def __enter__(self) -> "LocalFederation":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class LocalRunResult:
    run_dir: Path
    global_vector: Any
    history: list[dict[str, Any]]
    flower: FlowerRun
    startup_seconds: float
    prestart_cpu_s: float | None = None  # the pre-started ClientApp interpreter's own CPU-s (None: not used)


def run_local(config: Config, run_dir: Path, *, data_root: Path | None = None, workdir: Path | None = None,
              timeout: float = 900.0, prestart: bool = True, **app_options: Any) -> LocalRunResult:
    """Start a loopback federation for ``config.data.train_centres``, run the app once, stop everything
    (``prestart``: fork the ClientApp tasks from a pre-started interpreter)."""
    from fedi2i.data.federation import resolve_root
    from fedi2i.fl.flower.rounds import read_json
    from fedi2i.fl.round_loop import load_global

    root = Path(data_root) if data_root else resolve_root(config.data, config.seed)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="fedi2i-flower-"))
    run_dir = Path(run_dir).resolve()
    app_dir = write_app(workdir / "app", config, run_dir, **app_options)
    start = time.perf_counter()
    with LocalFederation({c: root for c in config.data.train_centres}, workdir, prestart=prestart) as federation:
        startup = time.perf_counter() - start
        result = federation.run(app_dir, timeout=timeout)
        prestart_cpu = federation.prestart_cpu()
    return LocalRunResult(run_dir, load_global(run_dir), read_json(run_dir / "history.json"), result, startup,
                          prestart_cpu)
