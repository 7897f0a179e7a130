"""The audit's experiment matrix: which training runs, and which attack cells on top of them.

Training runs are shared: every attack on the FedAvg baseline reads the same run (train once, attack
many times). A cell names the runs it needs; a cell whose run failed fails with that reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fedi2i.config import Config
from fedi2i.errors import ConfigError

Defence = Literal["none", "secagg", "dp"]


class AuditSettings(BaseModel):
    """``attacks.audit`` in a config: which parts of the matrix to run."""

    model_config = ConfigDict(extra="forbid")

    defences: list[Defence] = Field(default_factory=lambda: ["none", "secagg", "dp"])
    centralised_baseline: bool = True
    membership: bool = True
    inversion: bool = True
    poisoning: bool = True


def audit_settings(config: Config) -> AuditSettings:
    try:
        return AuditSettings.model_validate(config.attacks.get("audit", {}))
    except Exception as exc:  # pydantic's message names the bad key
        raise ConfigError(f"invalid attacks.audit settings: {exc}") from None


@dataclass
class AuditCell:
    """One unit of audit work with its own result file."""

    key: str
    kind: Literal["train", "membership", "inversion", "poison"]
    title: str
    needs: list[str] = field(default_factory=list)  # cells whose results this one reads (must succeed)
    after: list[str] = field(default_factory=list)  # cells that must have finished first, whatever their outcome
    params: dict[str, Any] = field(default_factory=dict)
    # Filled in by the runner: the function that does the work.
    action: Callable[[], dict[str, Any]] | None = None


TRAIN_RUNS: dict[str, dict[str, Any]] = {
    # run name -> config overrides; "none" is the FedAvg baseline every attack starts from
    "none": {},
    "secagg": {"secagg.enabled": True},
    # DP noise on BatchNorm running variances can make them negative (NaN models), and Opacus DP-SGD
    # refuses BatchNorm, so the DP run uses GroupNorm
    "dp": {"dp.enabled": True, "model.norm": "group"},
}


def train_key(defence: str) -> str:
    return "train/centralised" if defence == "centralised" else f"train/fedavg-{defence}"
