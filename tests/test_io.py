"""Atomic writes and data-only reads (fedi2i.io)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fedi2i.errors import RunStateError
from fedi2i.io import load_safetensors, load_torch, read_json, save_safetensors, save_torch, write_json


class _Boom:
    def __reduce__(self):  # noqa: ANN204
        raise OSError("disk full")


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    save_torch(path, {"a": torch.ones(2)})
    with pytest.raises(OSError, match="disk full"):
        save_torch(path, {"a": _Boom()})
    assert torch.equal(load_torch(path)["a"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_pickled_objects_are_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Planted:
        def __reduce__(self):  # noqa: ANN204
            return (exec, (f"open({str(marker)!r}, 'w').write('x')",))

    path = tmp_path / "checkpoint.pt"
    torch.save({"x": Planted()}, path)
    with pytest.raises(RunStateError, match="checkpoint.pt.*pickled objects"):
        load_torch(path)
    assert not marker.exists()


@pytest.mark.parametrize("data", [b"", b"PK\x03\x04trunc", bytes(range(256))], ids=["empty", "zip-stub", "random"])
def test_unreadable_files_name_themselves(tmp_path: Path, data: bytes) -> None:
    for name, reader in (("c.pt", load_torch), ("r.safetensors", load_safetensors), ("m.json", read_json)):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(RunStateError, match=name.replace(".", r"\.") + " is unreadable"):
            reader(path)


def test_round_trips(tmp_path: Path) -> None:
    write_json(tmp_path / "a.json", {"x": [1, 2]})
    assert read_json(tmp_path / "a.json") == {"x": [1, 2]}
    save_safetensors(tmp_path / "t.safetensors", {"v": torch.arange(3.0)}, {"header": "{}"})
    tensors, meta = load_safetensors(tmp_path / "t.safetensors")
    assert torch.equal(tensors["v"], torch.arange(3.0)) and meta == {"header": "{}"}


def test_atomic_writes_get_the_mode_a_plain_open_gives(tmp_path: Path) -> None:
    # a report written atomically must be as readable as one written in place (mkstemp alone makes 0600)
    import stat

    from fedi2i.io import write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "report.html", "<p>ok</p>")
        with open(tmp_path / "plain.html", "w") as handle:
            handle.write("<p>ok</p>")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "report.html").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.html").stat().st_mode) == 0o644
