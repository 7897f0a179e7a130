"""What a malicious centre does: noise on its own training data, or a doctored update.

Both kinds plug into :class:`fedi2i.training.RunOptions` (``data_transforms`` / ``update_transforms``),
so the honest centres, the engine and the server are the unchanged production code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from fedi2i.seeding import hash_seed
from fedi2i.data.slices import HU_RANGE, SliceSet
from fedi2i.errors import ConfigError
from fedi2i.fl.client import UpdateTransform

DataTransform = Callable[[SliceSet], SliceSet]
UPDATE_ATTACKS = ("update_noise", "update_replace", "scale", "sign_flip")
HU_TO_UNIT = 2.0 / HU_RANGE  # the CT tensor maps 4024 HU onto [-1, 1]


def select_malicious(spec: Sequence[str] | str, n: int, sizes: Mapping[str, int]) -> list[str]:
    """The ``n`` malicious centres: the first n listed IDs, or the n largest/smallest by training slices.

    Ties in size are broken by centre ID so the choice is stable.
    """
    centres = sorted(sizes)
    if n < 1 or n >= len(centres):
        raise ConfigError(f"cannot make {n} of {len(centres)} training centres malicious: at least one "
                          "must stay honest (set attacks.poison.n_malicious)")
    if isinstance(spec, str):
        if spec not in ("largest", "smallest"):
            raise ConfigError(f"attacks.poison.malicious must be 'largest', 'smallest' or a list of IDs, got {spec!r}")
        sign = -1 if spec == "largest" else 1
        return sorted(centres, key=lambda c: (sign * sizes[c], c))[:n]
    unknown = [c for c in spec if c not in sizes]
    if unknown:
        raise ConfigError(f"malicious centre(s) {unknown} are not training centres {centres}")
    return list(spec[:n])


def noisy_slices(slices: SliceSet, mr_sigma: float, ct_sigma_hu: float, seed: int, clip_ct: bool = True) -> SliceSet:
    """A copy of ``slices`` with Gaussian noise on the MRI and/or CT; the input is never modified.

    The CT noise is given in HU and converted to the tensor's unit; with ``clip_ct`` the result is clipped
    back to [-1024, 3000] HU, as the data loader would clip a noisy file (so strong noise also biases the
    air and bone values, as real corrupted data would). Mask, patients and indices are shared, not copied.
    """
    gen = torch.Generator().manual_seed(seed)
    mr, ct = slices.mr, slices.ct
    if mr_sigma > 0:
        mr = mr + mr_sigma * torch.randn(mr.shape, generator=gen)
    if ct_sigma_hu > 0:
        ct = ct + ct_sigma_hu * HU_TO_UNIT * torch.randn(ct.shape, generator=gen)
        if clip_ct:
            ct = ct.clamp(-1.0, 1.0)
    return SliceSet(mr, ct, slices.mask, slices.patient, slices.slice_index, slices.centre)


def data_noise_transform(mr_sigma: float, ct_sigma_hu: float, seed: int, centre: str,
                         clip_ct: bool = True) -> DataTransform:
    """Transform for ``RunOptions.data_transforms[centre]``: noise drawn once, seeded per centre."""
    centre_seed = hash_seed(seed, 7001, *map(ord, centre))

    def transform(slices: SliceSet) -> SliceSet:
        return noisy_slices(slices, mr_sigma, ct_sigma_hu, centre_seed, clip_ct)

    return transform


def update_transform(attack: str, strength: Mapping[str, float]) -> UpdateTransform:
    """Transform for ``RunOptions.update_transforms[centre]``.

    Noise is scaled by the RMS of the centre's own honest update (a parameter-count-free unit: level 1
    is noise as large as the update itself). The client's per-round generator draws it, so the same
    seed gives the same attack.
    """
    if attack in ("update_noise", "update_replace"):
        sigma = float(strength["sigma"])
        replace = attack == "update_replace"

        def noise(delta: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
            rms = delta.pow(2).mean().sqrt()
            drawn = sigma * rms * torch.randn(delta.shape, generator=gen, dtype=delta.dtype)
            return drawn if replace else delta + drawn

        return noise
    if attack in ("scale", "sign_flip"):
        factor = float(strength["factor"]) * (-1.0 if attack == "sign_flip" else 1.0)

        def scaled(delta: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
            return delta * factor

        return scaled
    raise ConfigError(f"{attack!r} is not an update attack; choose one of {', '.join(UPDATE_ATTACKS)}")


def attack_options(attack: str, strength: Mapping[str, float], malicious: Sequence[str], seed: int,
                   clip_ct: bool = True) -> tuple[dict[str, DataTransform], dict[str, UpdateTransform]]:
    """The data and update transforms that make ``malicious`` centres run ``attack`` at ``strength``."""
    if attack == "none":
        return {}, {}
    if attack == "data_noise":
        return ({c: data_noise_transform(strength.get("mr", 0.0), strength.get("ct_hu", 0.0), seed, c, clip_ct)
                 for c in malicious}, {})
    return {}, {c: update_transform(attack, strength) for c in malicious}
