"""Build the denoiser: diffusers UNet2DConditionModel sized by the `model` config group."""
from __future__ import annotations

import warnings
from typing import Any

from diffusers import UNet2DConditionModel


def unconditioned_widths(config: dict[str, Any]) -> list[int]:
    """Block widths at which the ResNets cannot see the timestep or pooled-text embedding.

    With diffusers' default `resnet_time_scale_shift`, the embedding is added per channel just before
    a GroupNorm; at one channel per group that norm subtracts each channel's mean, i.e. the whole
    embedding. `scale_shift` applies it after the norm instead, as a scale and a shift."""
    if config.get("resnet_time_scale_shift", "default") != "default":
        return []
    groups = config.get("norm_num_groups", 32)
    return [width for width in config.get("block_out_channels", ()) if width == groups]


def build_unet(config: dict[str, Any], latent_channels: int, latent_size: int,
               cross_attention_dim: int) -> UNet2DConditionModel:
    """The latent shape and the text width come from the autoencoder and the text encoder, so they
    are never typed twice in configs and cannot disagree with them. Maps (B, C, h, w) to (B, C, h, w)."""
    for derived in ("in_channels", "out_channels", "sample_size", "cross_attention_dim"):
        if derived in config:
            raise ValueError(f"model.unet.{derived} is derived from the autoencoder / text encoder; remove it")
    if blind := unconditioned_widths(config):
        widths = ", ".join(map(str, blind))
        warnings.warn(f"model.unet: the {widths}-channel levels have one channel per GroupNorm group, which cancels the "
                      "timestep and text embedding there; set model.unet.resnet_time_scale_shift=scale_shift "
                      "or fewer norm_num_groups", stacklevel=2)
    return UNet2DConditionModel(in_channels=latent_channels, out_channels=latent_channels,
                                sample_size=latent_size, cross_attention_dim=cross_attention_dim, **config)
