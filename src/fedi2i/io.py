"""Atomic writes and safe reads for everything fedi2i keeps on disk.

Every write goes to a temporary file in the same folder and is renamed over the target
(``os.replace``), so a run killed at any instant leaves either the old file or the new one, never
half of one. Every read treats the file as data: JSON, safetensors, or ``torch.load`` with
``weights_only=True``, which refuses pickled code. A file that cannot be read is a ``RunStateError``
naming the file and what to do about it.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from fedi2i.errors import RunStateError

DEFAULT_HINT = "delete it, or start the run over with --fresh"


@contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary sibling of ``path`` to write to, renamed into place when the block ends without error.

    For writers that want a file name rather than a handle (NIfTI, ITK images: pass a ``suffix`` that ends
    in the format's extension, since they choose the format from it); removed if the block fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _created_mode())  # mkstemp makes 0600; the file gets what open() would have given it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _created_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file: 0666 less the process's umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write through ``write(file)`` into a temporary sibling of ``path``, then rename it into place."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        write(handle)


def write_bytes(path: Path, data: bytes) -> None:
    _atomic(path, lambda f: f.write(data))


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, payload: Any) -> None:
    """Atomic JSON write: a reader never sees half a file."""
    write_text(path, json.dumps(payload, indent=2, default=float))


def save_torch(path: Path, obj: Any) -> None:
    """``torch.save`` of plain data (tensors, numbers, strings, lists, dicts), atomically."""
    import torch

    _atomic(path, lambda f: torch.save(obj, f))


def save_safetensors(path: Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    write_bytes(path, save(tensors, metadata=metadata))


def save_npz(path: Path, compressed: bool = False, **arrays: Any) -> None:
    import numpy as np

    _atomic(path, lambda f: (np.savez_compressed if compressed else np.savez)(f, **arrays))


def save_figure(path: Path, figure: Any, **kwargs: Any) -> None:
    """A matplotlib figure, atomically (the format follows ``path``'s suffix)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    _atomic(path, lambda f: figure.savefig(f, format=fmt, **kwargs))


def unreadable(path: Path, why: str, hint: str = DEFAULT_HINT) -> RunStateError:
    """The error for a file that exists but cannot be read as what it should be."""
    return RunStateError(f"{path} is unreadable ({why}): the file is corrupt, truncated or not fedi2i's; {hint}")


def read_json(path: Path, hint: str = DEFAULT_HINT) -> Any:
    """A JSON file, or a ``RunStateError`` naming it when it is not valid UTF-8 JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise unreadable(path, f"not valid JSON: {exc}", hint) from None
    except IsADirectoryError:
        raise unreadable(path, "a folder where a file should be", hint) from None


def load_torch(path: Path, hint: str = DEFAULT_HINT) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain data only, never code from the file."""
    import torch

    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise unreadable(path, "a folder where a file should be", hint) from None
    if not data:
        raise unreadable(path, "empty file", hint)
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc) or "GLOBAL" in str(exc):
            first = "it holds pickled objects, which fedi2i never loads because they can run code"
        raise unreadable(path, first[:200], hint) from None


def load_safetensors(path: Path, hint: str = DEFAULT_HINT) -> tuple[dict[str, Any], dict[str, str]]:
    """Tensors and metadata of a safetensors file, or a ``RunStateError`` naming it."""
    from safetensors.torch import load

    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise unreadable(path, "a folder where a file should be", hint) from None
    try:
        tensors = load(data)
        metadata = _safetensors_metadata(data)
    except Exception as exc:  # SafetensorError, ValueError, ... for a truncated or foreign file
        raise unreadable(path, str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__, hint) from None
    return tensors, metadata


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (its 8-byte length, then a JSON header)."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size].decode("utf-8"))
    return dict(header.get("__metadata__") or {})
