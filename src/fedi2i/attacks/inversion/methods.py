"""The attack registry: one entry point that runs a named method on an observation."""

from __future__ import annotations

from collections.abc import Collection

from fedi2i.attacks.inversion.base import Progress, Reconstruction
from fedi2i.attacks.inversion.dlg import dlg_attack
from fedi2i.attacks.inversion.i2i import i2i_attack
from fedi2i.attacks.inversion.inverting_gradients import ig_attack
from fedi2i.attacks.inversion.observation import Observation
from fedi2i.attacks.inversion.prior import Prior
from fedi2i.attacks.inversion.settings import METHODS, InversionSettings
from fedi2i.errors import ConfigError

_ATTACKS = {"dlg": dlg_attack, "ig": ig_attack, "i2i": i2i_attack}


def run_attack(obs: Observation, method: str, settings: InversionSettings, seed: int | None = None,
               progress: Progress | None = None, snapshot_every: int | None = None, prior: Prior | None = None,
               snapshot_at: Collection[int] = ()) -> Reconstruction:
    """Reconstruct the images behind ``obs`` with ``method`` (dlg, ig or i2i); reads nothing else.

    ``prior``: public slices the attacker holds (only the I2I attack uses them, as its ``init`` says);
    ``snapshot_at``: iterations at which to keep the current images (the budget curve).
    """
    if method not in _ATTACKS:
        raise ConfigError(f"unknown inversion method {method!r}; choose one of {', '.join(METHODS)}")
    attack = _ATTACKS[method]
    extra = {"prior": prior} if method == "i2i" else {}
    return attack(obs, settings.method(method), seed=settings.seed if seed is None else seed,  # type: ignore[operator]
                  mr_box=settings.mr_box, progress=progress, snapshot_every=snapshot_every, snapshot_at=snapshot_at,
                  **extra)
