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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedi2i.io import read_json, unreadable, write_text

# 3: study findings carry the intervals that decided them, and may read "inconclusive".
# 4: threat rows carry the intervals behind their verdict (which may span two levels, "medium to high");
#    poisoning cells their training seed (replicates paired by seed), train cells per-patient unseen metrics,
#    and results.json the paired poisoning effects. Version 3 files are read as they are (every new field
#    has a default); older ones are refused.
SCHEMA_VERSION = 4
READABLE_VERSIONS = (3, 4)
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


@dataclass
class Threat:
    """A row of the security officer's table."""

    threat: str
    exposure: str
    defence: str
    with_defence: str
    verdict: str  # high | medium | low | "<level> to <level>" (the interval spans both) | not measured
    # the 95 % intervals behind the verdict, by part: [point, low, high]
    intervals: dict[str, list[float | None]] = field(default_factory=dict)


@dataclass
class Comparison:
    """A finding of the study beside ours."""

    finding: str
    study: str
    ours: str
    status: str  # reproduced | not reproduced | exceeded | inconclusive | not measured
    # the 95 % intervals that decided the status, by part (centre, or attack and centre): [point, low, high]
    intervals: dict[str, list[float | None]] = field(default_factory=dict)


@dataclass
class PoisonEffect:
    """One attacked configuration of the poisoning matrix against its rule's clean runs, paired by seed:
    the unseen-centre MAE of each arm per seed (None where collapsed, diverged or missing) and the ratio
    attacked / clean with its 95 % interval over the seeds (None with fewer than 3 paired seeds)."""

    rule: str
    attack: str
    level: str
    n_malicious: int
    rounds: int | None
    seeds: list[int | None]
    clean_mae: list[float | None]
    attacked_mae: list[float | None]
    collapsed: list[bool] = field(default_factory=list)  # per seed: the attacked run collapsed or diverged
    ratio: list[float | None] | None = None  # [point, low, high]; an infinite end (collapse) is stored null
    judged: bool = False  # a study finding reads it
    note: str = ""  # why there is no interval, where there are enough seeds


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
    # per centre, per unseen patient: the pairs behind an interval over patients (absent in older cells)
    unseen_patients: dict[str, dict[str, Metrics]] | None = None


class AucScores(CellResult):
    """One membership method's scores at one level (slice or patient) for one target centre."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, serialize_by_alias=True)

    auc: float | None = None
    auc_same_centre: float | None = None  # against same-centre non-members: membership itself
    auc_same_centre_ci95: list[float] | None = None  # patient-clustered bootstrap; None with bootstrap off
    n_members: int | None = None
    n_nonmembers: int | None = None
    n_same_centre: int | None = None
    tpr_at_1e_2: float | None = Field(default=None, alias="tpr@1e-2")


class MembershipCentre(CellResult):
    slice: AucScores = Field(default_factory=AucScores)
    patient: AucScores = Field(default_factory=AucScores)


class MeanAuc(CellResult):
    """An AUC averaged over the target centres, with its stratified 95 % interval."""

    auc: float | None = None
    ci95: list[float] | None = None


class MembershipMethod(CellResult):
    """One attack's result: unavailable (with the reason, e.g. FedMIA under secure aggregation), or its scores
    per target centre and their mean over centres."""

    available: bool = True
    reason: str = ""
    centres: dict[str, MembershipCentre] = Field(default_factory=dict)
    same_centre_mean: MeanAuc | None = None


class ExposurePoint(MeanAuc):
    """A point of an exposure curve: the mean same-centre AUC at one round or federation size."""

    round: int | None = None
    patients: int | None = None


class ExposureCurve(CellResult):
    methods: dict[str, list[ExposurePoint]] = Field(default_factory=dict)


class MembershipCandidates(CellResult):
    member_patients: dict[str, int] = Field(default_factory=dict)


class MembershipResult(CellResult):
    methods: dict[str, MembershipMethod] = Field(default_factory=dict)
    candidates: MembershipCandidates | None = None
    exposure_round: ExposureCurve | None = None  # per-round exposure (absent where it was not measured)
    train_patients: int | None = None  # the federation-size cells: training patients per centre

    def available(self) -> dict[str, MembershipMethod]:
        return {name: m for name, m in self.methods.items() if m.available}


class InversionDeciding(CellResult):
    """The number an inversion verdict reads: in-mask SSIM margin over other patients, with its interval."""

    modality: Literal["mri", "ct"]
    margin: float
    ci95: list[float] | None = None  # None: too few patients for an interval


class InversionAnatomy(CellResult):
    deciding: InversionDeciding


class InversionGap(CellResult):
    """Update distance of the reconstruction and of the true batch; ``large``: the search stopped short."""

    reconstruction: float | None = None
    truth: float | None = None
    ratio: float | None = None
    large: bool


class BudgetCurve(CellResult):
    """The in-mask margin and update distance against the attacker's iterations (``points``: one dict each)."""

    points: list[dict[str, float | None]] = Field(default_factory=list)
    still_improving: bool | None = None


class InversionPrior(CellResult):
    init: str = ""
    source: str = ""


class InversionResult(CellResult):
    key: str = ""
    method: str
    batch: int
    defence: str
    steps: int = 1
    stage: str = ""
    client: str | None = None
    iterations: int | None = None
    seconds: float | None = None
    prior: InversionPrior | None = None
    mri_ssim: float | None = None
    mri_psnr: float | None = None
    ct_ssim: float | None = None
    ct_psnr: float | None = None
    background: dict[str, float | None] | None = None  # cells written before the in-mask score only
    # fedi2i.attacks.inversion.assess; None in cells written before them (the findings name and skip those)
    anatomy: InversionAnatomy | None = None
    objective_gap: InversionGap | None = None
    budget_curve: BudgetCurve | None = None
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
    replicate: int = 0  # 0: the matrix's own run; 1, 2, ...: the same cell again with another training seed
    seed: int | None = None  # the run's training seed (None in cells written before seeds were replicated)
    rounds: int | None = None
    collapsed: bool = False
    collapsed_round: int | None = None
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

    def typed(self) -> CellResult | None:
        """The result as its kind's model (validated when the entry was), None for a failed cell."""
        return None if self.result is None else RESULT_MODELS[self.kind].model_validate(self.result)


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
    poison_effects: list[PoisonEffect] = Field(default_factory=list)
    section_errors: dict[str, str] = Field(default_factory=dict)
    cells: dict[str, CellEntry]

    def to_dict(self) -> dict[str, Any]:
        raw = self.model_dump(mode="python", exclude={"cells", "summary", "study_comparison", "poison_effects"})
        raw["summary"] = [asdict(t) for t in self.summary]
        raw["study_comparison"] = [asdict(c) for c in self.study_comparison]
        raw["poison_effects"] = [asdict(e) for e in self.poison_effects]
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
    """results.json, validated; a version this fedi2i cannot read or a corrupt file is a ``RunStateError``
    naming it. A version 3 file is read as it is: what version 4 added takes its default (no intervals on
    threat rows, no paired poisoning effects)."""
    hint = "re-run `fedi2i audit` on its folder to rewrite it (finished cells are reused)"
    raw = read_json(path, hint=hint)
    version = raw.get("schema_version", 1) if isinstance(raw, dict) else None
    if version not in READABLE_VERSIONS:
        raise unreadable(path, f"schema version {version}, this fedi2i reads versions "
                               f"{', '.join(map(str, READABLE_VERSIONS))}", hint)
    try:
        return AuditResults.model_validate(raw)
    except ValidationError as exc:
        raise unreadable(path, f"not audit results: {_problem(exc)}", hint) from None
