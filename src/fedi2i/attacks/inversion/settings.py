"""Settings of the gradient inversion attacks, read from ``config.attacks["inversion"]``.

Two parts: the threat grid (which victim settings and defences to measure) and, per method, the
optimisation budget and priors. Iteration counts are small by default so a CPU audit finishes; the
benchmark and a GPU audit raise them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedi2i.config import Config
from fedi2i.errors import ConfigError

Method = Literal["dlg", "ig", "i2i"]
Defence = Literal["none", "secagg", "dp", "dpsgd"]
Stage = Literal["early", "trained"]
METHODS: tuple[str, ...] = ("dlg", "ig", "i2i")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Nested dict update: ``{"i2i": {"lr": 0.1}}`` changes one field of the method, not all of them."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DLGSettings(_Strict):
    """Deep Leakage from Gradients (Zhu et al. 2019): L2 gradient matching with L-BFGS."""

    iterations: int = Field(60, ge=1)
    lr: float = Field(1.0, gt=0)
    history_size: int = Field(50, ge=1)


class IGSettings(_Strict):
    """Inverting Gradients (Geiping et al. 2020): cosine + TV, signed Adam, box, restarts, lr decay."""

    iterations: int = Field(300, ge=1)
    lr: float = Field(0.1, gt=0)
    tv_weight: float = Field(1e-2, ge=0)
    restarts: int = Field(1, ge=1)


class I2ISettings(_Strict):
    """The image-to-image attack: recovers the MRI and the CT (see ``i2i.py`` for the method)."""

    levels: int = Field(5, ge=1)  # coarse-to-fine pyramid: H / 2**(levels-1) ... H / 2 (sizes >= 4 px)
    level_iterations: int = Field(25, ge=0)  # L-BFGS steps per coarse level
    iterations: int = Field(300, ge=0)  # Adam steps at full resolution
    lr: float = Field(0.03, gt=0)
    tv_weight: float = Field(0.05, ge=0)
    ct_tv_weight: float = Field(0.05, ge=0)  # TV prior on the CT
    bn_weight: float = Field(10.0, ge=0)  # weight of the leaked BatchNorm statistics in the match
    norm_weight: float = Field(0.1, ge=0)  # weight of the update-norm term (the scale a cosine ignores)
    tau_start: float = Field(0.1, gt=0)  # L1 sign relaxation tanh(r / tau), annealed geometrically
    tau_end: float = Field(0.005, gt=0)
    ct_init_hu: float = -500.0  # L1: where the CT unknown starts (between air and soft tissue)
    restarts: int = Field(1, ge=1)
    # Where the search starts (priors the server may hold, ``prior.py``): "random" (noise), "atlas" (the mean
    # of the attacker's public slices, solved coarse-to-fine), "population" (per image, the public slice that
    # best explains the update, out of ``population`` candidates; each restart draws its own candidates)
    init: Literal["random", "atlas", "population"] = "random"
    population: int = Field(32, ge=1)  # candidates per image
    population_evaluations: int = Field(64, ge=1)  # at most this many update replays per restart's selection


class InversionSettings(_Strict):
    """Threat grid and attack budgets.

    The main table is methods x batch_sizes x defences at the base setting (first entry of
    ``local_steps`` and ``stages``, first client). The other axes (more local steps, a trained model,
    other clients) are run for ``axis_methods`` only, one axis at a time, to keep the grid affordable.
    """

    methods: list[Method] = Field(default_factory=lambda: ["dlg", "ig", "i2i"])
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 4, 8])
    defences: list[Defence] = Field(default_factory=lambda: ["none", "secagg", "dp"])
    local_steps: list[int] = Field(default_factory=lambda: [1, 5])
    stages: list[Stage] = Field(default_factory=lambda: ["early", "trained"])
    clients: list[str] | None = None  # None: the first training centre
    axis_methods: list[Method] = Field(default_factory=lambda: ["i2i"])
    axis_batch_sizes: list[int] | None = None  # batch sizes on those axes (None: batch_sizes)
    victim_optimizer: Literal["sgd", "adam"] = "sgd"
    victim_lr: float | None = Field(None, gt=0)  # None: config.train.lr
    trained_rounds: int = Field(3, ge=1)  # rounds of the base run trained when none is given
    dp_clip: float | None = Field(None, gt=0)  # None: config.dp.clip
    dp_noise_multiplier: float | None = Field(None, ge=0)  # None: config.dp.noise_multiplier
    dp_delta: float = Field(1e-5, gt=0, lt=1)
    mr_box: tuple[float, float] = (-0.1, 1.5)  # what the percentile normalisation allows for the MRI
    seed: int = Field(0, ge=0)
    figures: bool = True
    dlg: DLGSettings = Field(default_factory=DLGSettings)
    ig: IGSettings = Field(default_factory=IGSettings)
    i2i: I2ISettings = Field(default_factory=I2ISettings)

    @model_validator(mode="after")
    def _check(self) -> "InversionSettings":
        if not self.methods or not self.batch_sizes or not self.defences or not self.local_steps or not self.stages:
            raise ValueError("methods, batch_sizes, defences, local_steps and stages each need at least one entry")
        if min(self.batch_sizes + (self.axis_batch_sizes or [])) < 1 or min(self.local_steps) < 1:
            raise ValueError("batch sizes and local steps must be >= 1")
        if self.mr_box[0] >= self.mr_box[1]:
            raise ValueError("mr_box must be (low, high) with low < high")
        return self

    def method(self, name: str) -> DLGSettings | IGSettings | I2ISettings:
        return {"dlg": self.dlg, "ig": self.ig, "i2i": self.i2i}[name]

    def with_iterations(self, iterations: int) -> "InversionSettings":
        """Same settings with every method's iteration budget set to ``iterations``."""
        update = {m: getattr(self, m).model_copy(update={"iterations": iterations}) for m in METHODS}
        return self.model_copy(update=update)

    @classmethod
    def from_config(cls, config: Config, overrides: dict[str, Any] | None = None) -> "InversionSettings":
        """Read ``config.attacks["inversion"]`` (defaults for what it leaves out)."""
        raw = _merge(dict(config.attacks.get("inversion") or {}), overrides or {})
        try:
            settings = cls.model_validate(raw)
        except ValidationError as exc:
            lines = ["invalid attacks.inversion settings:"]
            for err in exc.errors():
                loc = ".".join(str(p) for p in err["loc"])
                msg = "unknown key (check the spelling)" if err["type"] == "extra_forbidden" else err["msg"]
                lines.append(f"  {loc}: {msg}")
            raise ConfigError("\n".join(lines)) from None
        unknown = [c for c in settings.clients or [] if c not in config.data.train_centres]
        if unknown:
            raise ConfigError(f"attacks.inversion.clients: {', '.join(unknown)} are not training centres "
                              f"(training centres: {', '.join(config.data.train_centres)})")
        return settings
