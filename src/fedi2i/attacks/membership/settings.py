"""Settings of the membership inference attacks and the catalogue of methods they name.

Settings are read from ``config.attacks["membership"]`` (a free dict in the run config), so a YAML
config can set them; unknown keys are errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fedi2i.errors import ConfigError, RecordError

SETTINGS_KEY = "membership"


class SignalUnavailable(RecordError):
    """The record does not hold what a method needs (e.g. individual updates under secure aggregation)."""


@dataclass(frozen=True)
class Method:
    """One attack: what it scores and whether it needs the individual client updates."""

    name: str
    summary: str
    needs_individual_updates: bool
    signals: frozenset[str]  # signal families it reads (see collect.collect_signals)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("fedmia-loss", "FedMIA-I: log-loss on the target centre's model, one-tailed Gaussian test against "
           "the other centres' models, averaged over rounds", True, frozenset({"loss_target"})),
    Method("fedmia-grad", "FedMIA-II: cosine between the per-sample gradient at the global model and the "
           "target centre's update, Gaussian test against the other centres' updates, averaged over rounds",
           True, frozenset({"grad"})),
    Method("loss", "loss threshold on the target's model at the last recorded round", False,
           frozenset({"loss_target"})),
    Method("loss-global", "loss threshold on the final global model (same score for every centre)", False,
           frozenset({"loss_final"})),
    Method("loss-series", "mean log-loss over the recorded rounds on the target's models", False,
           frozenset({"loss_target"})),
    Method("grad-norm", "per-sample gradient norm on the target's model at the last recorded round", False,
           frozenset({"gradnorm"})),
    Method("grad-cosine", "cosine between the per-sample gradient at the global model and the target's "
           "update, averaged over rounds (no reference)", False, frozenset({"grad"})),
    Method("grad-diff", "loss drop from the global model to the target's model, averaged over rounds", False,
           frozenset({"loss_target", "loss_global"})),
)}


class MembershipSettings(BaseModel):
    """What to attack and how.

    ``rounds``: recorded rounds to use ("all" or a list). ``max_slices_per_patient``: candidate slices
    drawn per patient (neighbouring slices are near-duplicates, so a few per patient carry most of the
    information and keep the gradient signals affordable). ``sigma``: how FedMIA estimates the spread
    of the non-member reference with few reference centres: "pooled" (one variance per round, averaged
    over candidates; LiRA's fixed-variance fix for few shadow models), "per-sample", or "floored"
    (per-sample, floored at ``sigma_floor`` times the pooled value). ``bootstrap``: patient-clustered
    bootstrap resamples for the AUC confidence interval (0 turns it off). ``shuffle_labels``: a control
    that permutes membership among each target's candidate patients; AUC should then be about 0.5.
    ``exposure_rounds``: recorded rounds of the exposure-vs-round curve ("all", a list, or None for no
    curve). ``exposure_sizes``: training patients per centre of the smaller federations the audit trains
    for the exposure-vs-federation-size curve (empty: none; the full federation is its last point).
    """

    model_config = ConfigDict(extra="forbid")

    methods: list[str] = Field(default_factory=lambda: list(METHODS))
    rounds: list[int] | Literal["all"] = "all"
    max_slices_per_patient: int = Field(16, ge=1)
    seed: int = Field(0, ge=0)
    sigma: Literal["pooled", "per-sample", "floored"] = "pooled"
    sigma_floor: float = Field(0.5, gt=0.0)
    log_loss: bool = True
    batch_size: int = Field(64, ge=1)
    grad_chunk: int = Field(32, ge=1)
    bootstrap: int = Field(200, ge=0)
    shuffle_labels: bool = False
    threads: int | None = Field(None, ge=1)
    exposure_rounds: list[int] | Literal["all"] | None = None
    exposure_sizes: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
        if not value:
            raise ValueError("at least one method is needed")
        return list(dict.fromkeys(value))


def settings_from_config(attacks: dict[str, Any] | None, **overrides: Any) -> MembershipSettings:
    """Settings from ``config.attacks["membership"]`` plus explicit overrides (None values are ignored)."""
    raw = dict((attacks or {}).get(SETTINGS_KEY) or {})
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return MembershipSettings.model_validate(raw)
    except ValidationError as exc:
        lines = ["invalid membership attack settings (config key attacks.membership):"]
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "settings"
            msg = "unknown key (check the spelling)" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"  {loc}: {msg}")
        raise ConfigError("\n".join(lines)) from None
