"""A pre-started ClientApp interpreter per machine: Flower's own ``flwr-clientapp``, forked instead of started.

Why: Flower 1.42 runs every message in a fresh ``flwr-clientapp`` process (its SuperExec starts one per
task with ``subprocess.Popen`` and the process serves exactly one task, then exits), so each message pays
the interpreter, Flower's imports, torch and MONAI again: about 7 CPU-seconds for a fraction of a second
of training. Flower has no long-lived ClientApp: its pre-started "warm" workers exist only for the
Kubernetes executor and only for AgentApp, Model and Connector tasks, and every polling interval but the
SuperExec's (``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``) is hard-coded.

What: the SuperExec starts the task command by name from its ``PATH``. :func:`write_launcher` writes a
small ``flwr-clientapp`` launcher (standard library only, started with ``python -I -S``) that is put first
on the SuperNode's ``PATH``. The launcher hands its arguments, environment, working folder and standard
streams to the fork server (:func:`serve`), which imported Flower, torch, MONAI and fedi2i's ClientApp
code once and took torch's first training step; the fork server forks, and the child runs Flower's unmodified ``flwr-clientapp`` entry point
with exactly those arguments. Flower's code is not patched: each task still gets its own process with
its own token, heartbeat and exit, only without the imports. When the fork server does not answer, the
launcher runs the real ``flwr-clientapp`` instead.

Fork safety: the fork server runs no Python threads, and torch only on one thread (a warm-up step), so
no OpenMP pool exists when it forks (library thread pools created at import, as OpenBLAS's, handle fork
themselves); each child sets its own torch threads from the run config. Secrets come from
``os.urandom``/``secrets`` (kernel); each child re-seeds torch's and numpy's global generators from the
OS (Python's ``random`` does so itself), so forked children share no random state.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import sys
import time
import traceback
from pathlib import Path

LAUNCHER = "flwr-clientapp"
_HEADER = 4  # bytes of the request length, big-endian

_LAUNCHER_SOURCE = '''#!{python} -IS
"""flwr-clientapp launcher: forks the task from fedi2i's pre-started ClientApp interpreter ({socket}),
or runs the real flwr-clientapp when that does not answer."""
import json, os, signal, socket, sys
try:
    s = socket.socket(socket.AF_UNIX)
    s.connect({socket!r})
except OSError:
    os.execv({real!r}, [{real!r}, *sys.argv[1:]])
req = json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}}).encode()
socket.send_fds(s, [len(req).to_bytes({header}, "big")], [0, 1, 2])
s.sendall(req)
f = s.makefile("r")
pid = int(f.readline().split()[1])
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda n, _f: os.kill(pid, n))
line = f.readline().split()
sys.exit(int(line[1]) if line else 1)
'''


def write_launcher(bin_dir: Path, socket_path: Path, python: str | None = None) -> Path:
    """Write the ``flwr-clientapp`` launcher into ``bin_dir`` (to be put first on the SuperNode's PATH)."""
    bin_dir = Path(bin_dir)
    bin_dir.mkdir(parents=True, exist_ok=True)
    python = python or sys.executable
    real = str(Path(python).parent / LAUNCHER)
    path = bin_dir / LAUNCHER
    path.write_text(_LAUNCHER_SOURCE.format(python=python, socket=str(socket_path), real=real, header=_HEADER))
    path.chmod(0o755)
    return path


def preload() -> float:
    """Import what every ClientApp task needs (Flower's ClientApp runtime, torch, MONAI, fedi2i's training
    and evaluation code) and take torch's first training step; returns the CPU-seconds it took."""
    start = time.process_time()
    import flwr.supernode.cli.flwr_clientapp  # noqa: F401 - the entry point the children run

    from fedi2i.fl.flower.clientapp import preload_task_modules, warm_up_training

    preload_task_modules()
    warm_up_training()
    return time.process_time() - start


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    """One launch request: its JSON body and the launcher's stdin, stdout and stderr."""
    head, fds, _flags, _addr = socket.recv_fds(conn, _HEADER, 3)
    while len(head) < _HEADER:
        head += conn.recv(_HEADER - len(head))
    size, body = int.from_bytes(head, "big"), b""
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ConnectionError("the launcher closed the connection mid-request")
        body += chunk
    return json.loads(body), list(fds)


def _fresh_seeds() -> None:
    """Global generators seeded from the OS, as in a fresh process (a forked child would otherwise share
    the fork server's torch and numpy states with every other task; Python's ``random`` re-seeds itself)."""
    if "torch" in sys.modules:
        sys.modules["torch"].seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()


def _run_child(request: dict, fds: list[int]) -> None:
    """In the forked child: take the launcher's streams, folder and environment, run Flower's
    ``flwr-clientapp`` entry point, and exit with its code (never returns)."""
    code = 1
    try:
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        _fresh_seeds()
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = [LAUNCHER, *request["argv"]]
        from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

        flwr_clientapp()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - the child must always exit, with the trace on its stderr
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def bind_private(socket_path: Path) -> socket.socket:
    """Listen on ``socket_path`` with the socket readable and writable by this user only: whoever can
    connect can have a ClientApp task forked with the arguments and environment it sends."""
    socket_path = Path(socket_path)
    socket_path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX)
    old_umask = os.umask(0o177)
    try:
        server.bind(str(socket_path))
    finally:
        os.umask(old_umask)
    server.listen(64)
    return server


def same_user(conn: socket.socket) -> bool:
    """Whether the process at the other end of a Unix-socket connection runs as this user (Linux)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid == os.getuid()


def serve(socket_path: Path, ready_file: Path | None = None) -> None:
    """The fork server: preload, listen on ``socket_path`` and fork one child per launch request; tell
    each launcher its child's PID and, when the child is reaped, its exit code. Runs until killed."""
    cpu = preload()
    socket_path = Path(socket_path)
    server = bind_private(socket_path)
    if ready_file is not None:
        Path(ready_file).write_text(json.dumps({"pid": os.getpid(), "preload_cpu_s": cpu}))
    print(f"fedi2i ClientApp fork server ready on {socket_path} (preload {cpu:.2f} CPU-s)", flush=True)
    waiting: dict[int, socket.socket] = {}
    while True:
        readable, _, _ = select.select([server], [], [], 0.2)
        _reap(waiting)
        if not readable:
            continue
        conn, _ = server.accept()
        if not same_user(conn):  # the socket is 0600 already; a peer of another user is refused anyway
            print("launch request from another user refused", file=sys.stderr, flush=True)
            conn.close()
            continue
        try:
            request, fds = _receive(conn)
        except (OSError, ValueError) as exc:
            print(f"bad launch request: {exc}", file=sys.stderr, flush=True)
            conn.close()
            continue
        pid = os.fork()
        if pid == 0:
            server.close()
            for other in waiting.values():
                other.close()
            conn.close()
            _run_child(request, fds)
        for fd in fds:
            os.close(fd)
        print(f"forked ClientApp task {pid}", flush=True)
        try:
            conn.sendall(f"pid {pid}\n".encode())
        except OSError:
            pass
        waiting[pid] = conn


def _reap(waiting: dict[int, socket.socket]) -> None:
    """Collect finished children and send each launcher its child's exit code."""
    while waiting:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = waiting.pop(pid, None)
        if conn is not None:
            try:
                conn.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
            except OSError:
                pass
            conn.close()


def main() -> None:
    """``python -m fedi2i.fl.flower.prestart SOCKET [--bin DIR] [--ready FILE]``: on a hospital's machine,
    start this before its SuperNode, and start the SuperNode with ``DIR`` first on its ``PATH``."""
    import argparse

    parser = argparse.ArgumentParser(description="Pre-started fedi2i ClientApp interpreter (a fork server)")
    parser.add_argument("socket", type=Path, help="the Unix socket to listen on")
    parser.add_argument("--bin", type=Path, help="write the flwr-clientapp launcher into this folder")
    parser.add_argument("--ready", type=Path, help="file written (PID, preload CPU-s) once it listens")
    args = parser.parse_args()
    if args.bin is not None:
        write_launcher(args.bin, args.socket.resolve())
    serve(args.socket, args.ready)


if __name__ == "__main__":
    main()
