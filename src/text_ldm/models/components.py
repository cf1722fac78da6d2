"""The parts of a text-to-image latent diffusion model, built once from config (training) or from a
checkpoint alone (sampling, evaluation, export), so neither path needs the other's code."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from hydra.utils import instantiate

from text_ldm.models.autoencoder import FrozenAutoencoder
from text_ldm.models.text_encoder import FrozenTextEncoder
from text_ldm.models.unet import build_unet
from text_ldm.utils.checkpoint_io import check_state_matches, load_checkpoint
from text_ldm.utils.config import plain

PREDICTION_TYPES = ("epsilon", "v_prediction")
# The checkpoint entry that rebuilds the components without the training module.
CHECKPOINT_KEY = "components"
UNET_PREFIX = "unet."


class DiffusionComponents:
    """unet: UNet2DConditionModel, (B, C, h, w) x (B,) x (B, L, D) -> (B, C, h, w).
    noise_scheduler: the training DDPMScheduler (betas, prediction_type); samplers are built from its config.
    text_encoder: FrozenTextEncoder, B prompts -> (B, L, D).
    autoencoder: FrozenAutoencoder, images (B, 3, H, W) in [-1, 1] <-> scaled latents (B, C, h, w).
    image_size: H = W.
    text_encoder_config / autoencoder_config: the Hydra configs they were loaded from (their `pretrained`
    references); the frozen weights never enter a checkpoint.
    """

    def __init__(self, unet: UNet2DConditionModel, noise_scheduler: DDPMScheduler, text_encoder: FrozenTextEncoder,
                 autoencoder: FrozenAutoencoder, image_size: int, text_encoder_config: dict,
                 autoencoder_config: dict):
        self.unet, self.noise_scheduler = unet, noise_scheduler
        self.text_encoder, self.autoencoder = text_encoder, autoencoder
        self.image_size = int(image_size)
        self.text_encoder_config, self.autoencoder_config = dict(text_encoder_config), dict(autoencoder_config)
        if self.noise_scheduler.config.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"model.noise_scheduler.prediction_type={self.noise_scheduler.config.prediction_type!r}; "
                             f"choose one of {PREDICTION_TYPES}")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the latents the UNet denoises."""
        size = self.image_size // self.autoencoder.downsample_factor
        return (self.autoencoder.latent_channels, size, size)

    @classmethod
    def build(cls, unet: dict, text_encoder: dict, autoencoder: dict, noise_scheduler: dict,
              image_size: int) -> "DiffusionComponents":
        """From the `model` config group: the UNet's in/out channels, sample size and cross-attention
        width are derived from the autoencoder and the text encoder."""
        text_encoder, autoencoder = plain(text_encoder), plain(autoencoder)
        encoder, vae = instantiate(text_encoder), instantiate(autoencoder)
        network = _derived_unet(plain(unet), encoder, vae, image_size)
        return cls(network, DDPMScheduler(**plain(noise_scheduler)), encoder, vae, image_size, text_encoder,
                   autoencoder)

    def checkpoint_entry(self) -> dict[str, Any]:
        """What a checkpoint carries to rebuild these components (plain types: weights_only loading)."""
        return {"unet": _plain_config(self.unet.config), "noise_scheduler": _plain_config(self.noise_scheduler.config),
                "text_encoder": self.text_encoder_config, "autoencoder": self.autoencoder_config,
                "image_size": self.image_size}

    @classmethod
    def from_checkpoint(cls, ckpt: str | os.PathLike, use_ema: bool = True,
                        vae_pretrained: str | None = None) -> "DiffusionComponents":
        """Rebuild from a training checkpoint: the UNet from its saved diffusers config, loaded strictly
        with the EMA weights ("state_dict") or, with `use_ema=False`, the raw ones ("current_model_state");
        the frozen parts from their `pretrained` references. `vae_pretrained` points to the autoencoder's
        new place (a moved checkout, a local copy of a hub model). Mismatched weights raise a ValueError
        listing the keys."""
        checkpoint = load_checkpoint(ckpt)
        entry = checkpoint.get(CHECKPOINT_KEY) or _entry_from_hyperparameters(checkpoint["hyper_parameters"])
        autoencoder_config = _locate_autoencoder(entry["autoencoder"], ckpt, vae_pretrained)
        text_encoder, autoencoder = instantiate(entry["text_encoder"]), instantiate(autoencoder_config)
        try:
            if "unet" in entry:
                unet = UNet2DConditionModel.from_config(entry["unet"])
            else:  # an older checkpoint: the UNet is derived from its model config, as in training
                unet = _derived_unet(entry["unet_model_config"], text_encoder, autoencoder, entry["image_size"])
            scheduler = DDPMScheduler.from_config(entry["noise_scheduler"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"checkpoint {ckpt}: its saved UNet or scheduler config does not build ({err})") from err
        key = "state_dict" if use_ema or "current_model_state" not in checkpoint else "current_model_state"
        weights = {k: v for k, v in checkpoint[key].items() if k.startswith(UNET_PREFIX)}
        try:
            check_state_matches({UNET_PREFIX + k: v for k, v in unet.state_dict().items()}, weights)
        except ValueError as err:
            raise ValueError(f"{ckpt}: {err}") from err
        unet.load_state_dict({k[len(UNET_PREFIX):]: v for k, v in weights.items()})
        return cls(unet.eval(), scheduler, text_encoder, autoencoder, entry["image_size"], entry["text_encoder"],
                   autoencoder_config)

    def to(self, device: str | torch.device) -> "DiffusionComponents":
        for module in (self.unet, self.text_encoder, self.autoencoder):
            module.to(device)
        return self


def _derived_unet(config: dict, text_encoder: FrozenTextEncoder, autoencoder: FrozenAutoencoder,
                  image_size: int) -> UNet2DConditionModel:
    """build_unet with the latent shape and text width taken from the encoders."""
    factor = autoencoder.downsample_factor
    if image_size % factor:
        raise ValueError(f"image_size={image_size} is not divisible by the autoencoder's factor {factor}")
    return build_unet(config, autoencoder.latent_channels, image_size // factor, text_encoder.embed_dim)


def _entry_from_hyperparameters(hparams: dict) -> dict:
    """Checkpoints written before the components entry existed: their model config rebuilds the UNet."""
    try:
        return {"unet_model_config": hparams["unet"], "noise_scheduler": hparams["noise_scheduler"],
                "text_encoder": hparams["text_encoder"], "autoencoder": hparams["autoencoder"],
                "image_size": hparams["image_size"]}
    except KeyError as err:
        raise ValueError(f"this checkpoint's config has no {err}: it is not a text-to-image diffusion checkpoint "
                         "(an autoencoder's?)") from None


def _plain_config(config) -> dict:
    """A diffusers FrozenDict config -> a dict of lists and scalars, minus the private `_use_default_values`."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dict(config).items() if k != "_use_default_values"}


def _locate_autoencoder(config: dict, ckpt: str | os.PathLike, vae_pretrained: str | None) -> dict:
    if vae_pretrained:
        return {**config, "pretrained": str(vae_pretrained)}
    saved = config.get("pretrained")
    # An absolute path that is gone is a moved or deleted checkout; diffusers would report it as a
    # failed hub download. A relative one may be a hub id, which only from_pretrained can tell.
    if saved and Path(saved).is_absolute() and not Path(saved).exists():
        raise FileNotFoundError(
            f"checkpoint {ckpt} was trained with its autoencoder at {saved}, which no longer exists (a moved or "
            "deleted checkout?). Point to it with vae_pretrained=DIR (the embedded default's is artifacts/toy_vq "
            "in any checkout of this project).")
    return config
