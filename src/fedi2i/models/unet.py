"""U-Net factory on MONAI's UNet: size and normalisation come from the config."""

from __future__ import annotations

import torch
from monai.networks.nets import UNet

from fedi2i.config import ModelConfig

_NORMS = {
    "batch": "batch",
    "instance": ("instance", {"affine": True}),
    "group": ("group", {"num_groups": 4}),
}


def build_unet(config: ModelConfig) -> UNet:
    """2D MRI->CT U-Net: one input channel, one output channel (CT scaled to [-1, 1])."""
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
