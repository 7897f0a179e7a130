"""The curious-server record: exactly what the server sees each round, on disk, and a reader for attacks.

Each recorded round is one safetensors file ``record/round_XXXX.safetensors`` holding the global model
the clients received (``global``), every client's returned update (``update/<cid>``) when the server
sees individual updates, or only the aggregate (``aggregate``) under secure aggregation, plus a JSON
header with example counts and the local training settings an attacker may know (lr, epochs, batch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fedi2i.errors import RecordError
from fedi2i.fl.params import ParamSpec
from fedi2i.io import load_safetensors, read_json, save_safetensors, write_json
from fedi2i.runfolder import RECORD_DIR

RETRAIN = "retrain the run with --fresh (or delete the file to leave that round out)"


@dataclass
class RoundView:
    """One round as the server saw it."""

    round: int
    global_vector: torch.Tensor
    updates: dict[str, torch.Tensor]  # empty under secure aggregation
    aggregate: torch.Tensor
    num_examples: dict[str, int]
    secure: bool
    meta: dict[str, Any]


class CuriousServerRecorder:
    """Writes the rounds named in the config; under SecAgg it can only ever receive the aggregate."""

    def __init__(self, run_dir: Path, spec: ParamSpec, rounds: list[int] | str, fp16: bool = False,
                 meta: dict[str, Any] | None = None) -> None:
        self.dir = Path(run_dir) / RECORD_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.spec = spec
        self.rounds = rounds
        self.dtype = torch.float16 if fp16 else torch.float32
        self.meta = meta or {}
        write_json(self.dir / "spec.json",
                   {"names": list(spec.names), "shapes": [list(s) for s in spec.shapes], "meta": self.meta})

    def wants(self, round_index: int) -> bool:
        if self.rounds == "all":
            return True
        if self.rounds == "none":
            return False
        return round_index in self.rounds  # type: ignore[operator]

    def record(self, round_index: int, global_vector: torch.Tensor, aggregate: torch.Tensor,
               num_examples: dict[str, int], updates: dict[str, torch.Tensor] | None = None,
               extra: dict[str, Any] | None = None) -> None:
        if not self.wants(round_index):
            return
        tensors = {"global": global_vector, "aggregate": aggregate}
        for cid, update in (updates or {}).items():
            tensors[f"update/{cid}"] = update
        tensors = {k: v.detach().to(self.dtype).contiguous() for k, v in tensors.items()}
        header = {"round": round_index, "num_examples": num_examples, "secure": updates is None,
                  **(extra or {})}
        save_safetensors(self.dir / f"round_{round_index:04d}.safetensors", tensors,
                         metadata={"header": json.dumps(header)})


class ServerRecord:
    """Reader API used by the attacks: which rounds exist, the global model, each client's update."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir) / RECORD_DIR
        spec_path = self.dir / "spec.json"
        if not spec_path.exists():
            raise RecordError(f"{run_dir} has no curious-server record (train with --record-rounds)")
        raw = read_json(spec_path, hint=RETRAIN)
        try:
            self.spec = ParamSpec(tuple(raw["names"]), tuple(tuple(int(n) for n in s) for s in raw["shapes"]))
            self.meta: dict[str, Any] = dict(raw.get("meta") or {})
        except (KeyError, TypeError, ValueError, AttributeError):
            raise RecordError(f"{spec_path} is not a record spec (names, shapes); {RETRAIN}") from None

    def rounds(self) -> list[int]:
        found = (p.stem.split("_", 1)[1] for p in self.dir.glob("round_*.safetensors"))
        return sorted(int(n) for n in found if n.isdigit())

    def _path(self, round_index: int) -> Path:
        path = self.dir / f"round_{round_index:04d}.safetensors"
        if not path.exists():
            raise RecordError(f"round {round_index} was not recorded; recorded rounds: {self.rounds()}")
        return path

    def round(self, round_index: int) -> RoundView:
        path = self._path(round_index)
        raw, metadata = load_safetensors(path, hint=RETRAIN)
        tensors = {k: v.float() for k, v in raw.items()}
        try:
            header = json.loads(metadata["header"])
            missing = {"global", "aggregate"} - set(tensors) or {"num_examples", "secure"} - set(header)
        except (KeyError, TypeError, ValueError):
            missing = {"header"}
        numel = self.spec.numel
        if missing or any(v.dim() != 1 or v.numel() != numel for v in tensors.values()):
            raise RecordError(f"{path} does not match its record (missing {sorted(missing)} or vectors of the wrong "
                              f"size, the spec has {numel} values); {RETRAIN}")
        updates = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("update/")}
        return RoundView(round=round_index, global_vector=tensors["global"], updates=updates,
                         aggregate=tensors["aggregate"], num_examples=header.pop("num_examples"),
                         secure=header.pop("secure"), meta=header)

    def verify(self, rounds: list[int] | None = None) -> list[int]:
        """Read every recorded round (or those given) once: a damaged file stops a command before its work."""
        wanted = self.rounds() if rounds is None else rounds
        for r in wanted:
            self.round(r)
        return wanted

    def client_update(self, round_index: int, cid: str) -> torch.Tensor:
        view = self.round(round_index)
        if view.secure:
            raise RecordError(f"round {round_index} ran under secure aggregation: the server never saw "
                              f"client {cid}'s individual update, only the aggregate")
        if cid not in view.updates:
            raise RecordError(f"client {cid} is not in round {round_index}; clients: {sorted(view.updates)}")
        return view.updates[cid]
