"""Build the denoiser: diffusers UNet2DConditionModel sized by the `model` config group."""
from __future__ import annotations

from typing import Any

from diffusers import UNet2DConditionModel


def build_unet(config: dict[str, Any], latent_channels: int, latent_size: int,
               cross_attention_dim: int) -> UNet2DConditionModel:
    """The latent shape and the text width come from the autoencoder and the text encoder, so they
    are never typed twice in configs and cannot disagree with them."""
    for derived in ("in_channels", "out_channels", "sample_size", "cross_attention_dim"):
        if derived in config:
            raise ValueError(f"model.unet.{derived} is derived from the autoencoder / text encoder; remove it")
    return UNet2DConditionModel(in_channels=latent_channels, out_channels=latent_channels,
                                sample_size=latent_size, cross_attention_dim=cross_attention_dim,
                                **config)
