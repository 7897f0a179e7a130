"""U-Net factory on MONAI's UNet: size and normalisation come from the config.

MONAI is imported when a network is built, not when this module is: ``import monai`` (which any
``monai.*`` import runs first) loads every MONAI submodule, and with them scikit-learn, matplotlib,
scikit-image, SciPy and nibabel, about 2 CPU-seconds on top of torch. MONAI has no switch to load one
network alone, so the SecAgg stages, the CLI and anything else that only needs this module's names do
not pay that cost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fedi2i.config import GROUPS, ModelConfig

if TYPE_CHECKING:
    from monai.networks.nets import UNet

_NORMS = {
    "batch": "batch",
    "instance": ("instance", {"affine": True}),
    "group": ("group", {"num_groups": GROUPS}),
}


def build_unet(config: ModelConfig) -> UNet:
    """2D MRI->CT U-Net: one input channel, one output channel (CT scaled to [-1, 1])."""
    from monai.networks.nets import UNet

    strides = config.strides or [2] * (len(config.channels) - 1)
    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=tuple(config.channels),
        strides=tuple(strides),
        num_res_units=config.num_res_units,
        norm=_NORMS[config.norm],
        dropout=config.dropout,
    )


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
