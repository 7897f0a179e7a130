"""Settings of the poisoning study, read from ``config.attacks["poison"]`` (every key has a default).

Noise levels are named (``low``, ``medium``, ``high`` by default) and each attack gives its own value for
every name in the sweep, so one sweep runs every attack at comparable "levels" while each attack keeps
its natural unit: image units and HU for data noise, multiples of the honest update's RMS for update
noise, a multiplication factor for scaled and sign-flipped updates.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedi2i.config import Config
from fedi2i.errors import ConfigError

AttackName = Literal["data_noise", "update_noise", "update_replace", "scale", "sign_flip"]
RuleName = Literal["fedavg", "fedmedian", "trimmed", "krum", "multikrum", "bulyan"]
ATTACK_UNITS = {
    "data_noise": "Gaussian noise std on the centre's training MRI (normalised units) and CT (HU)",
    "update_noise": "update + N(0, (level * RMS(update))^2)",
    "update_replace": "update replaced by N(0, (level * RMS(update))^2)",
    "scale": "update * level",
    "sign_flip": "update * -level",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataNoiseLevel(_Strict):
    """Noise std added to a malicious centre's training slices; 0 leaves that modality clean."""

    mr: float = Field(0.0, ge=0)  # normalised MRI units (the body spans about [0, 1])
    ct_hu: float = Field(0.0, ge=0)  # HU (the CT tensor spans 4024 HU as [-1, 1])


def _default_data_noise() -> dict[str, DataNoiseLevel]:
    # low sits at the scale of the scanners' own noise (a few % of the MRI range, tens of HU): the
    # stealthy case; high buries the anatomy.
    return {"low": DataNoiseLevel(mr=0.03, ct_hu=30.0), "medium": DataNoiseLevel(mr=0.2, ct_hu=200.0),
            "high": DataNoiseLevel(mr=1.5, ct_hu=1500.0)}


class RuleParams(_Strict):
    """Parameters of the robust rules; ``auto`` takes the largest f the number of centres admits."""

    trimmed_beta: float = 0.25
    krum_f: int | Literal["auto"] = "auto"
    multikrum_m: int | None = None
    bulyan_f: int | Literal["auto"] = "auto"


class DetectorSettings(_Strict):
    """Server-side monitor of individual updates (see detector.py for the score)."""

    alpha: float = Field(0.3, gt=0, le=1)  # weight of the newest round in the running (EWMA) score
    threshold: float = Field(3.0, gt=0)  # a centre is flagged while its running score exceeds this
    scale_floor: float = Field(0.25, gt=0)  # smallest robust spread of a (log) feature: tolerates ~2x
    weights_only: bool = True  # leave BatchNorm running statistics (scanner fingerprints) out of the score


class PoisonSettings(_Strict):
    """The poisoning matrix: attacks x levels x number of malicious centres x aggregation rules.

    ``seeds``: every replicated cell runs once per training seed (the matrix's own run, then ``seeds - 1``
    more), clean and attacked runs paired by seed, so a study verdict reads a 95 % interval over seeds.
    ``replicate``: which cells: ``deciding`` (the cells the verdicts read: each rule's no-attack baseline,
    every attack at its highest level with a malicious minority, and the stealth attack at its lowest level
    with the fewest malicious centres, for FedAvg and FedMedian) or ``all``. ``seeds: 1`` runs the matrix
    once, and the verdicts fall back to a conservative single-run rule.
    """

    seed: int = Field(0, ge=0)
    seeds: int = Field(3, ge=1)
    replicate: Literal["deciding", "all"] = "deciding"
    attacks: list[AttackName] = Field(default_factory=lambda: ["data_noise"])
    levels: list[str] = Field(default_factory=lambda: ["low", "medium", "high"])
    n_malicious: list[int] = Field(default_factory=lambda: [1, 2])
    malicious: list[str] | Literal["largest", "smallest"] = "largest"
    rules: list[RuleName] = Field(default_factory=lambda: ["fedavg", "fedmedian"])
    baseline: bool = True  # one no-attack run per rule
    rounds: int | None = Field(8, ge=1)  # None keeps config.train.rounds
    local_steps: int | None = Field(None, ge=1)  # None keeps config.train.local_steps
    eval_every: int | None = Field(2, ge=1)  # validation curve every this many rounds; None keeps the config's
    clip_ct: bool = True  # noisy CT is clipped to [-1024, 3000] HU, as the data loader clips real files
    data_noise: dict[str, DataNoiseLevel] = Field(default_factory=_default_data_noise)
    update_noise: dict[str, float] = Field(default_factory=lambda: {"low": 0.5, "medium": 3.0, "high": 30.0})
    update_replace: dict[str, float] = Field(default_factory=lambda: {"low": 1.0, "medium": 5.0, "high": 50.0})
    scale: dict[str, float] = Field(default_factory=lambda: {"low": 2.0, "medium": 10.0, "high": 100.0})
    sign_flip: dict[str, float] = Field(default_factory=lambda: {"low": 1.0, "medium": 4.0, "high": 20.0})
    rule_params: RuleParams = Field(default_factory=RuleParams)
    detector: DetectorSettings = Field(default_factory=DetectorSettings)

    @field_validator("levels", "attacks", "rules", "n_malicious")
    @classmethod
    def _non_empty_unique(cls, v: list[Any]) -> list[Any]:
        if not v:
            raise ValueError("must list at least one entry")
        if len(set(v)) != len(v):
            raise ValueError(f"has duplicates: {v}")
        return v

    @field_validator("n_malicious")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(n < 1 for n in v):
            raise ValueError("numbers of malicious centres must be >= 1 (the baseline is the 0 case)")
        return v

    @model_validator(mode="after")
    def _levels_defined(self) -> "PoisonSettings":
        for attack in self.attacks:
            table = getattr(self, attack)
            missing = [lv for lv in self.levels if lv not in table]
            if missing:
                raise ValueError(f"attack {attack} has no value for level(s) {missing}; set "
                                 f"attacks.poison.{attack}.<level> (unit: {ATTACK_UNITS[attack]})")
        if isinstance(self.malicious, list) and len(self.malicious) < max(self.n_malicious):
            raise ValueError(f"malicious lists {len(self.malicious)} centre(s) but n_malicious asks for "
                             f"{max(self.n_malicious)}; list more IDs or use 'largest'/'smallest'")
        return self

    def strength(self, attack: str, level: str) -> dict[str, float]:
        """The numbers behind a named level of an attack, e.g. {"mr": 0.2, "ct_hu": 200}."""
        value = getattr(self, attack)[level]
        if attack == "data_noise":
            return value.model_dump()
        key = "sigma" if attack in ("update_noise", "update_replace") else "factor"
        return {key: float(value)}


def load_poison_settings(config: Config) -> PoisonSettings:
    """Validate ``config.attacks["poison"]``; each problem names its key."""
    raw = config.attacks.get("poison", {}) or {}
    try:
        return PoisonSettings.model_validate(raw)
    except ValidationError as exc:
        lines = ["invalid attacks.poison settings:"]
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            msg = "unknown key (check the spelling)" if err["type"] == "extra_forbidden" else err["msg"]
            msg = msg.removeprefix("Value error, ")
            lines.append(f"  attacks.poison{'.' + loc if loc else ''}: {msg}")
        raise ConfigError("\n".join(lines)) from None
