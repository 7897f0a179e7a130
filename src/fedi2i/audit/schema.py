"""Typed audit results: each attack's cell result, a cell's stored entry, and results.json.

Results cross the attack -> audit boundary as JSON files. Each is validated once, where it is read, against
the model of its kind, so a schema change on one side fails there, naming the file, instead of surfacing as a
``KeyError`` deep inside the findings. results.json carries ``schema_version``; reading an older or newer
version is an error that says so. Numbers that are not finite (a diverged model) are stored as null: the
files are strict JSON any reader can parse.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedi2i.audit.findings import Comparison, Threat
from fedi2i.io import read_json, unreadable, write_text

# 3: study findings carry the intervals that decided them, and may read "inconclusive".
SCHEMA_VERSION = 3
CellKind = Literal["train", "membership", "inversion", "poison"]
Metrics = dict[str, float | None]


def finite_json(value: Any) -> Any:
    """JSON-safe copy: NaN and +-Inf become None, tuples become lists, anything else unknown a string."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    try:
        return finite_json(float(value))  # numpy and torch scalars
    except (TypeError, ValueError):
        return str(value)


class CellResult(BaseModel):
    """A cell's result: the fields the audit reads are typed; the rest travels along untouched."""

    model_config = ConfigDict(extra="allow")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class TrainResult(CellResult):
    run_dir: str
    unseen: dict[str, Metrics] | None = None
    seen: dict[str, Metrics] | None = None
    dp: dict[str, Any] | bool | None = None  # False when the run had no DP
    train_seconds: float | None = None
    figures: list[str] = Field(default_factory=list)


class MembershipResult(CellResult):
    methods: dict[str, dict[str, Any]] = Field(default_factory=dict)


class InversionResult(CellResult):
    method: str
    batch: int
    defence: str
    mri_ssim: float | None = None
    mri_psnr: float | None = None
    ct_ssim: float | None = None
    ct_psnr: float | None = None
    background: dict[str, float | None] | None = None
    figure: str | None = None


class PoisonResult(CellResult):
    key: str
    rule: str
    attack: str
    level: str
    n_malicious: int
    malicious: list[str] = Field(default_factory=list)
    tolerates: int = 0
    n_clients: int | None = None
    status: Literal["done", "skipped"]
    collapsed: bool = False
    diverged: bool = False
    unseen_mean: Metrics = Field(default_factory=dict)
    detector: dict[str, Any] | None = None


RESULT_MODELS: dict[str, type[CellResult]] = {"train": TrainResult, "membership": MembershipResult,
                                           "inversion": InversionResult, "poison": PoisonResult}


class CellEntry(BaseModel):
    """One audit cell as stored in ``cells/<key>.json``: what ran, how it ended, and its result."""

    model_config = ConfigDict(extra="forbid")

    key: str
    kind: CellKind
    title: str
    params: dict[str, Any] = Field(default_factory=dict)
    status: Literal["ok", "error"]
    result: dict[str, Any] | None = None
    error: str | None = None
    traceback: str | None = None
    seconds: float = 0.0

    @model_validator(mode="after")
    def _result_of_its_kind(self) -> "CellEntry":
        if self.status == "ok":
            if self.result is None:
                raise ValueError("a finished cell has no result")
            try:
                RESULT_MODELS[self.kind].model_validate(self.result)
            except ValidationError as exc:
                raise ValueError(f"result of a {self.kind} cell: {_problem(exc)}") from None
        return self

    def to_dict(self) -> dict[str, Any]:
        return finite_json(self.model_dump(mode="python", exclude_none=True))


class AuditResults(BaseModel):
    """results.json: the findings, the headline tables and every cell, under a schema version."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    preset: str
    generated: str
    versions: dict[str, str]
    cells_planned: int
    cells_ok: int
    summary: list[Threat]
    study_comparison: list[Comparison]
    quality: dict[str, dict[str, float]]
    guarantees: list[dict[str, Any]] = Field(default_factory=list)
    unusable: list[dict[str, str]] = Field(default_factory=list)
    poison_summary: dict[str, Any] = Field(default_factory=dict)
    section_errors: dict[str, str] = Field(default_factory=dict)
    cells: dict[str, CellEntry]

    def to_dict(self) -> dict[str, Any]:
        raw = self.model_dump(mode="python", exclude={"cells", "summary", "study_comparison"})
        raw["summary"] = [asdict(t) for t in self.summary]
        raw["study_comparison"] = [asdict(c) for c in self.study_comparison]
        raw["cells"] = {k: c.to_dict() for k, c in self.cells.items()}
        return finite_json(raw)

    def write(self, path: Path) -> None:
        write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False))


def _problem(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "top level"
    return f"{where}: {err['msg']}" + (f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else "")


def load_cell(path: Path) -> CellEntry:
    """A stored cell, validated; a corrupt or foreign file is a ``RunStateError`` naming it."""
    raw = read_json(path, hint="delete it and re-run the audit to recompute that cell")
    try:
        return CellEntry.model_validate(raw)
    except ValidationError as exc:
        raise unreadable(path, f"not an audit cell of this version: {_problem(exc)}",
                         "delete it and re-run the audit to recompute that cell") from None


def load_results(path: Path) -> AuditResults:
    """results.json, validated; another schema version or a corrupt file is a ``RunStateError`` naming it."""
    hint = "re-run `fedi2i audit` on its folder to rewrite it (finished cells are reused)"
    raw = read_json(path, hint=hint)
    version = raw.get("schema_version", 1) if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION:
        raise unreadable(path, f"schema version {version}, this fedi2i reads version {SCHEMA_VERSION}", hint)
    try:
        return AuditResults.model_validate(raw)
    except ValidationError as exc:
        raise unreadable(path, f"not audit results: {_problem(exc)}", hint) from None
