"""Run configuration: YAML files validated by pydantic (unknown keys are errors, not silently ignored)."""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
import math
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedi2i.errors import ConfigError
from fedi2i.io import write_text
from fedi2i.secagg_settings import SecAggConfig

GROUPS = 4  # GroupNorm groups of the U-Net (models.unet)
Positive = Annotated[int, Field(ge=1)]
Percent = Annotated[float, Field(ge=0.0, le=100.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Where the images are, which centres train and which stay unseen, and how slices are prepared."""

    root: Path | None = None  # None: the built-in dataset in the cache (built on first use)
    source: Literal["head", "phantom"] = "head"  # what `data build` makes when root is missing
    centre_mapping: Path | None = None
    train_centres: list[str] = Field(default_factory=lambda: ["A", "B", "C", "D"], min_length=1)
    unseen_centres: list[str] = Field(default_factory=lambda: ["E"])
    n_centres: int = Field(5, ge=1)
    patients_per_centre: int = Field(12, ge=1)
    image_size: int = Field(64, ge=8)
    # model grid: in-plane pixel size and field of view in mm (set one; default: a 240 mm field of view)
    fov_mm: float | None = Field(None, gt=0)
    spacing_mm: float | None = Field(None, gt=0)
    slice_stride: int = Field(1, ge=1)
    min_mask_fraction: float = Field(0.05, ge=0.0, lt=1.0)  # slices with less body than this are left out
    mr_percentiles: tuple[Percent, Percent] = (0.5, 99.5)
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    # patients per training centre kept out of training, validation and test: same-centre non-members that
    # give the membership AUC its power (docs/membership.md); the fractions above split the other patients
    holdout_patients: int = Field(0, ge=0)
    # at most this many training patients per centre (the first by ID): the exposure curve's federation sizes
    train_patients: int | None = Field(None, ge=1)
    skip_bad: bool = False

    @model_validator(mode="after")
    def _centres_and_fractions(self) -> "DataConfig":
        for key in ("train_centres", "unseen_centres"):
            names = getattr(self, key)
            if len(set(names)) != len(names):
                raise ValueError(f"data.{key} lists a centre twice: {names}")
        both = sorted(set(self.train_centres) & set(self.unseen_centres))
        if both:
            raise ValueError(f"centre(s) {', '.join(both)} are in both data.train_centres and data.unseen_centres; "
                             "an unseen centre must not train")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("data.val_fraction + data.test_fraction must leave patients to train on (sum < 1)")
        low, high = self.mr_percentiles
        if not low < high:
            raise ValueError(f"data.mr_percentiles must be (low, high) with low < high, got {self.mr_percentiles}")
        if self.fov_mm is not None and self.spacing_mm is not None \
                and abs(self.fov_mm - self.spacing_mm * self.image_size) > 1e-6 * self.fov_mm:
            raise ValueError(f"data.fov_mm ({self.fov_mm}) must equal data.spacing_mm x data.image_size "
                             f"({self.spacing_mm} x {self.image_size}); set only one of them")
        return self


class ModelConfig(_Strict):
    """U-Net size and normalisation (MONAI UNet)."""

    channels: list[Positive] = Field(default_factory=lambda: [16, 32, 64, 128], min_length=2)
    strides: list[Positive] | None = None  # default: 2 between consecutive levels
    num_res_units: int = Field(0, ge=0)
    norm: Literal["batch", "instance", "group"] = "batch"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _strides_match(self) -> "ModelConfig":
        if self.strides is not None and len(self.strides) != len(self.channels) - 1:
            raise ValueError("model.strides needs len(channels) - 1 entries")
        if self.norm == "group" and any(c % GROUPS for c in self.channels):
            raise ValueError(f"model.norm group uses {GROUPS} groups: every entry of model.channels must be a "
                             f"multiple of {GROUPS}, got {self.channels}")
        return self

    @property
    def downsampling(self) -> int:
        """How much the U-Net shrinks an image at its deepest level (image sizes must be a multiple)."""
        return math.prod(self.strides or [2] * (len(self.channels) - 1))


class TrainConfig(_Strict):
    """Local optimisation, shared by centralised training and each federated client."""

    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-3, gt=0.0, allow_inf_nan=False)
    weight_decay: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    loss: Literal["l1", "mse"] = "l1"
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    momentum: float = Field(0.0, ge=0.0, lt=1.0)  # SGD only
    # loss weights per voxel (docs/recipe.md): CT > 250 HU, outside the body mask; 1, 1 = the plain loss
    bone_weight: float = Field(1.0, ge=1.0, allow_inf_nan=False)
    background_weight: float = Field(1.0, ge=0.0, le=1.0)
    edge_weight: float = Field(0.0, ge=0.0, allow_inf_nan=False)  # L1 between image gradients of sCT and CT
    augment: list[Literal["flip", "gamma"]] = Field(default_factory=list)  # left-right flip; MRI gamma
    channels_last: bool = False
    local_epochs: int = Field(1, ge=1)
    # if set: this many optimiser steps per round instead of epochs (FedSGD: 1)
    local_steps: int | None = Field(None, ge=1)
    rounds: int = Field(10, ge=1)
    lr_schedule: Literal["constant", "cosine", "onecycle"] = "cosine"
    threads: int | None = Field(None, ge=1)  # torch threads; None leaves torch's default


class FederationConfig(_Strict):
    """Server side: which rule aggregates, how clients are sampled, what the curious server records."""

    strategy: Literal["fedavg", "fedprox", "fedmedian", "trimmed", "krum", "multikrum", "bulyan"] = "fedavg"
    fedprox_mu: float = Field(0.01, ge=0.0, allow_inf_nan=False)
    trimmed_beta: float = Field(0.2, ge=0.0, lt=0.5)
    krum_f: int = Field(1, ge=0)
    multikrum_m: int | None = Field(None, ge=1)
    bulyan_f: int = Field(1, ge=0)
    clients_per_round: int | None = Field(None, ge=1)  # None: every training centre every round
    min_clients: int = Field(1, ge=1)
    record_rounds: list[Annotated[int, Field(ge=0)]] | Literal["all", "none"] = "all"
    record_fp16: bool = False
    eval_every: int = Field(5, ge=0)  # 0: no validation during training


class DPConfig(_Strict):
    """Differential privacy on client updates: clip each update, add Gaussian noise (DP-FedAvg)."""

    enabled: bool = False
    mode: Literal["update", "dpsgd"] = "update"
    clip: float = Field(1.0, gt=0.0, allow_inf_nan=False)
    noise_multiplier: float = Field(0.5, ge=0.0, allow_inf_nan=False)
    delta: float = Field(1e-5, gt=0.0, lt=1.0)


class AttacksConfig(_Strict):
    """The attack sections; each is validated in full by its attack, the section names here.

    Read like a dict (``config.attacks.get("inversion")``) so the attacks need not know the model.
    """

    inversion: dict[str, Any] | None = None
    membership: dict[str, Any] | None = None
    poison: dict[str, Any] | None = None
    audit: dict[str, Any] | None = None

    def get(self, key: str, default: Any = None) -> Any:
        value = getattr(self, key, None) if key in type(self).model_fields else None
        return default if value is None else value

    def __getitem__(self, key: str) -> Any:
        if key not in type(self).model_fields:
            raise KeyError(key)
        return self.get(key, {})

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None


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
    attacks: AttacksConfig = Field(default_factory=AttacksConfig)  # each section validated by its attack
    # DP noise and SecAgg rounding dither from the run seed instead of the OS CSPRNG: tests and benchmarks
    # only (a server that knows the seed replays them); the run's metrics and the audit report flag it
    reproducible_secrets: bool = False

    @model_validator(mode="after")
    def _secagg_needs_sum_rule(self) -> "Config":
        if self.secagg.enabled and self.federation.strategy not in ("fedavg", "fedprox"):
            raise ValueError(
                f"secure aggregation cannot be combined with strategy {self.federation.strategy!r}: it shows "
                "the server only the sum of the updates, while robust rules (median, trimmed mean, Krum, "
                "Bulyan) need every individual update; use fedavg or fedprox with secagg")
        return self

    @model_validator(mode="after")
    def _fits_the_federation(self) -> "Config":
        size, down = self.data.image_size, self.model.downsampling
        if size % down:
            raise ValueError(f"data.image_size {size} must be a multiple of {down}, the U-Net's downsampling "
                             f"(the product of model.strides); try {max(down, size // down * down)}")
        n_train = len(self.data.train_centres)
        rounds = self.federation.record_rounds
        if isinstance(rounds, list) and any(r >= self.train.rounds for r in rounds):
            outside = sorted(r for r in rounds if r >= self.train.rounds)
            raise ValueError(f"federation.record_rounds {outside} are outside the run: rounds are numbered "
                             f"0 to {self.train.rounds - 1} (train.rounds={self.train.rounds})")
        if self.federation.min_clients > n_train:
            raise ValueError(f"federation.min_clients {self.federation.min_clients} is more than the "
                             f"{n_train} training centre(s)")
        poison = self.attacks.get("poison") or {}
        n_mal = poison.get("n_malicious") if isinstance(poison, dict) else None
        if isinstance(n_mal, list) and any(isinstance(n, int) and n >= n_train for n in n_mal):
            raise ValueError(f"attacks.poison.n_malicious {n_mal} must stay below the {n_train} training "
                             "centres: at least one centre has to be honest")
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
        msg = msg.removeprefix("Value error, ")
        lines.append(f"  {loc}: {msg}" if loc and not msg.startswith(loc.split(".")[0] + ".") else f"  {msg}")
    return "\n".join(lines)


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> Config:
    """Validate a plain dict; every problem is reported with its dotted key."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def _presets() -> Traversable:
    """Presets ship inside the package (package data), so an installed wheel finds them too."""
    return resources.files("fedi2i") / "presets"


def preset_names() -> list[str]:
    """The presets shipped with the package (``quick``, ``tiny``, ...)."""
    return sorted(entry.name.removesuffix(".yaml") for entry in _presets().iterdir()
                  if entry.name.endswith(".yaml"))


def preset_path(name: str) -> Path:
    """The preset's YAML file inside the installed package."""
    if name not in preset_names():
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(preset_names())}")
    return Path(str(_presets() / f"{name}.yaml"))


def load_config(path_or_preset: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Load a YAML file (or a preset name such as ``quick``) and apply dotted-key overrides."""
    path = Path(path_or_preset)
    if not path.suffix and not path.exists():
        path = preset_path(str(path_or_preset))
    if not path.exists():
        raise ConfigError(f"config file {path} not found")
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; give a YAML file or a preset name")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 YAML") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    return config_from_dict(raw, source=str(path))


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``raw["a"]["b"] = value`` for ``key="a.b"``, creating levels as needed."""
    node = raw
    *parents, leaf = key.split(".")
    if not all(key.split(".")):
        raise ConfigError(f"cannot set {key!r}: a key is dotted names such as train.rounds")
    for part in parents:
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {key}: {part} is not a section")
    node[leaf] = value


def dump_config(config: Config, path: Path) -> None:
    """Write the exact configuration a run used, next to its results."""
    write_text(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


# Settings that do not change what a run computes: its label, where the data lies (its content is
# checked by the data layer), the attack settings (read by later commands) and torch's thread count.
NOT_RESULT_SHAPING = ("name", "attacks", "data.root", "train.threads")


def result_fields(config: Config, skip: tuple[str, ...] = NOT_RESULT_SHAPING) -> dict[str, Any]:
    """The config as flat dotted keys, minus ``skip`` (keys and whole sections): what a resumed run must keep."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
            return
        key = prefix[:-1]
        if not any(key == k or key.startswith(k + ".") for k in skip):
            flat[key] = node

    walk(config.model_dump(mode="json"), "")
    return flat
