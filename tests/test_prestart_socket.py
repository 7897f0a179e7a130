"""The fork server's socket: whoever can connect can have a ClientApp task forked, so only this user may."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from fedi2i.fl.flower.prestart import bind_private, same_user


def test_socket_is_private_to_its_user(tmp_path: Path) -> None:
    old = os.umask(0o022)  # a permissive umask must not leak into the socket's mode
    try:
        server = bind_private(tmp_path / "fork.sock")
    finally:
        os.umask(old)
    try:
        mode = stat.S_IMODE((tmp_path / "fork.sock").stat().st_mode)
        assert mode == 0o600, oct(mode)
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(tmp_path / "fork.sock"))
        conn, _ = server.accept()
        assert same_user(conn)  # this process's own connection is accepted
        conn.close()
        client.close()
    finally:
        server.close()


def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "fork.sock"
    path.write_text("left over by a killed server")
    server = bind_private(path)
    try:
        assert stat.S_ISSOCK(path.stat().st_mode)
    finally:
        server.close()
