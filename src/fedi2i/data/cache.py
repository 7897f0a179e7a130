"""The one cache folder: fetched head sources, the built head template and the built-in datasets.

``FEDI2I_CACHE`` moves it (tests point it at a folder of their own); the default is ``~/.cache/fedi2i``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


def cache_dir() -> Path:
    """Where fetched sources, the head template and built datasets live."""
    env = os.environ.get("FEDI2I_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fedi2i"


@contextlib.contextmanager
def cache_lock(folder: Path, name: str) -> Iterator[None]:
    """Exclusive lock so that concurrent processes fetch or build a cached item only once."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
