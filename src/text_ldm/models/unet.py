"""Build the denoiser: diffusers UNet2DConditionModel sized by the `model` config group."""
from __future__ import annotations

import warnings
from typing import Any

from diffusers import UNet2DConditionModel
from diffusers.models.resnet import ResnetBlock2D
from torch import nn
from torch.nn import functional as F


class PatchConvIn(nn.Conv2d):
    """The UNet's input conv on p x p patches of the latent (space-to-depth, DiT's patchify without the flatten):
    (B, C, H, W) -> (B, C p², H/p, W/p) -> conv -> (B, width, H/p, W/p). Every UNet level then runs at 1/p the
    resolution, for p² less convolution work, and the state dict keeps diffusers' key (`conv_in.weight`)."""

    def __init__(self, latent_channels: int, out_channels: int, kernel_size: int, patch_size: int):
        super().__init__(latent_channels * patch_size ** 2, out_channels, kernel_size, padding=kernel_size // 2)
        self.patch_size = patch_size

    def forward(self, x):
        return super().forward(F.pixel_unshuffle(x, self.patch_size))


class PatchConvOut(nn.Conv2d):
    """The inverse of PatchConvIn at the output: (B, width, H/p, W/p) -> (B, C p², H/p, W/p) -> (B, C, H, W)."""

    def __init__(self, in_channels: int, latent_channels: int, kernel_size: int, patch_size: int):
        super().__init__(in_channels, latent_channels * patch_size ** 2, kernel_size, padding=kernel_size // 2)
        self.patch_size = patch_size

    def forward(self, x):
        return F.pixel_shuffle(super().forward(x), self.patch_size)


def unconditioned_widths(config: dict[str, Any]) -> list[int]:
    """Block widths at which the ResNets cannot see the timestep or pooled-text embedding.

    With diffusers' default `resnet_time_scale_shift`, the embedding is added per channel just before
    a GroupNorm; at one channel per group that norm subtracts each channel's mean, i.e. the whole
    embedding. `scale_shift` applies it after the norm instead, as a scale and a shift."""
    if config.get("resnet_time_scale_shift", "default") != "default":
        return []
    groups = config.get("norm_num_groups", 32)
    return [width for width in config.get("block_out_channels", ()) if width == groups]


def zero_init_time_projections(unet: UNet2DConditionModel) -> int:
    """Start every scale-shift ResNet's embedding projection at zero: norm(h) * (1 + 0) + 0.

    With `resnet_time_scale_shift: scale_shift` diffusers initialises `time_emb_proj` at random, so
    each channel starts multiplied by a random (1 + scale) before the model has learned anything;
    a zero start is the identity (as in ADM's and DiT's zero-initialised modulation). Returns the
    number of projections reset."""
    reset = 0
    for block in unet.modules():
        if isinstance(block, ResnetBlock2D) and block.time_embedding_norm == "scale_shift" \
                and block.time_emb_proj is not None:
            nn.init.zeros_(block.time_emb_proj.weight)
            nn.init.zeros_(block.time_emb_proj.bias)
            reset += 1
    return reset


def build_unet(config: dict[str, Any], latent_channels: int, latent_size: int,
               cross_attention_dim: int, zero_init_time_proj: bool = False) -> UNet2DConditionModel:
    """The latent shape and the text width come from the autoencoder and the text encoder, so they
    are never typed twice in configs and cannot disagree with them.

    `patch_size` p > 1 (not a diffusers option) runs the UNet on p x p patches of the latent: its convs in and
    out become PatchConvIn / PatchConvOut, so it still maps (B, C, H, W) to (B, C, H, W)."""
    config = dict(config)
    patch_size = int(config.pop("patch_size", 1))
    if patch_size < 1 or latent_size % patch_size:
        raise ValueError(f"model.unet.patch_size={patch_size} must be >= 1 and divide the latent size {latent_size}")
    for derived in ("in_channels", "out_channels", "sample_size", "cross_attention_dim"):
        if derived in config:
            raise ValueError(f"model.unet.{derived} is derived from the autoencoder / text encoder; remove it")
    if blind := unconditioned_widths(config):
        widths = ", ".join(map(str, blind))
        warnings.warn(f"model.unet: the {widths}-channel levels have one channel per GroupNorm group, which cancels the "
                      "timestep and text embedding there; set model.unet.resnet_time_scale_shift=scale_shift "
                      "or fewer norm_num_groups", stacklevel=2)
    unet = UNet2DConditionModel(in_channels=latent_channels, out_channels=latent_channels,
                                sample_size=latent_size, cross_attention_dim=cross_attention_dim,
                                **config)
    if patch_size > 1:  # the same widths and kernels as the convs diffusers built, on patches
        conv_in, conv_out = unet.conv_in, unet.conv_out
        unet.conv_in = PatchConvIn(latent_channels, conv_in.out_channels, conv_in.kernel_size[0], patch_size)
        unet.conv_out = PatchConvOut(conv_out.in_channels, latent_channels, conv_out.kernel_size[0], patch_size)
    if zero_init_time_proj and not zero_init_time_projections(unet):
        raise ValueError("model.zero_init_time_proj=true needs model.unet.resnet_time_scale_shift=scale_shift")
    return unet
