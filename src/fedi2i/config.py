"""Run configuration: YAML files validated by pydantic (unknown keys are errors, not silently ignored)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedi2i.errors import ConfigError
from fedi2i.fl.secagg import SecAggConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Where the images are, which centres train and which stay unseen, and how slices are prepared."""

    root: Path | None = None  # None: the built-in dataset in the cache (built on first use)
    source: Literal["head", "phantom"] = "head"  # what `data build` makes when root is missing
    centre_mapping: Path | None = None
    train_centres: list[str] = Field(default_factory=lambda: ["A", "B", "C", "D"])
    unseen_centres: list[str] = Field(default_factory=lambda: ["E"])
    n_centres: int = 5
    patients_per_centre: int = 12
    image_size: int = 64
    slice_stride: int = 1
    min_mask_fraction: float = 0.05  # slices with less body than this are left out
    mr_percentiles: tuple[float, float] = (0.5, 99.5)
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    skip_bad: bool = False


class ModelConfig(_Strict):
    """U-Net size and normalisation (MONAI UNet)."""

    channels: list[int] = Field(default_factory=lambda: [16, 32, 64, 128])
    strides: list[int] | None = None  # default: 2 between consecutive levels
    num_res_units: int = 0
    norm: Literal["batch", "instance", "group"] = "batch"
    dropout: float = 0.0

    @model_validator(mode="after")
    def _strides_match(self) -> "ModelConfig":
        if self.strides is not None and len(self.strides) != len(self.channels) - 1:
            raise ValueError("model.strides needs len(channels) - 1 entries")
        return self


class TrainConfig(_Strict):
    """Local optimisation, shared by centralised training and each federated client."""

    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.0
    loss: Literal["l1", "mse"] = "l1"
    optimizer: Literal["adam", "sgd"] = "adam"
    local_epochs: int = 1
    local_steps: int | None = None  # if set: this many optimiser steps per round instead of epochs (FedSGD: 1)
    rounds: int = 10
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    threads: int | None = None  # torch threads; None leaves torch's default


class FederationConfig(_Strict):
    """Server side: which rule aggregates, how clients are sampled, what the curious server records."""

    strategy: Literal["fedavg", "fedprox", "fedmedian", "trimmed", "krum", "multikrum", "bulyan"] = "fedavg"
    fedprox_mu: float = 0.01
    trimmed_beta: float = 0.2
    krum_f: int = 1
    multikrum_m: int | None = None
    bulyan_f: int = 1
    clients_per_round: int | None = None  # None: every training centre every round
    min_clients: int = 1
    record_rounds: list[int] | Literal["all", "none"] = "all"
    record_fp16: bool = False
    eval_every: int = 5


class DPConfig(_Strict):
    """Differential privacy on client updates: clip each update, add Gaussian noise (DP-FedAvg)."""

    enabled: bool = False
    mode: Literal["update", "dpsgd"] = "update"
    clip: float = 1.0
    noise_multiplier: float = 0.5
    delta: float = 1e-5


class Config(_Strict):
    """One fedi2i run."""

    name: str = "run"
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    secagg: SecAggConfig = Field(default_factory=SecAggConfig)
    dp: DPConfig = Field(default_factory=DPConfig)
    attacks: dict[str, Any] = Field(default_factory=dict)  # attack settings, validated by each attack

    @model_validator(mode="after")
    def _secagg_needs_sum_rule(self) -> "Config":
        if self.secagg.enabled and self.federation.strategy not in ("fedavg", "fedprox"):
            raise ValueError(
                f"secure aggregation cannot be combined with strategy {self.federation.strategy!r}: it shows "
                "the server only the sum of the updates, while robust rules (median, trimmed mean, Krum, "
                "Bulyan) need every individual update; use fedavg or fedprox with secagg")
        return self

    @field_validator("seed")
    @classmethod
    def _seed_non_negative(cls, v: int) -> int:
        if v < 0:
            raise ValueError("seed must be >= 0")
        return v


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = "unknown key (check the spelling)" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> Config:
    """Validate a plain dict; every problem is reported with its dotted key."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def preset_path(name: str) -> Path:
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(known)}")
    return path


def load_config(path_or_preset: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Load a YAML file (or a preset name such as ``quick``) and apply dotted-key overrides."""
    path = Path(path_or_preset)
    if not path.suffix:
        path = preset_path(str(path_or_preset))
    if not path.exists():
        raise ConfigError(f"config file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    return config_from_dict(raw, source=str(path))


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``raw["a"]["b"] = value`` for ``key="a.b"``, creating levels as needed."""
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {key}: {part} is not a section")
    node[leaf] = value


def dump_config(config: Config, path: Path) -> None:
    """Write the exact configuration a run used, next to its results."""
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
