"""The parts of a text-to-image latent diffusion model, built once from config (training) or from a
checkpoint alone (sampling, evaluation, export), so neither path needs the other's code."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from hydra.utils import instantiate

from text_ldm.models.autoencoder import FrozenAutoencoder
from text_ldm.models.text_encoder import FrozenTextEncoder
from text_ldm.models.unet import build_unet
from text_ldm.utils.checkpoint_io import check_state_matches, load_checkpoint
from text_ldm.utils.config import plain

# epsilon / v_prediction: DDPM on the noise_scheduler betas; flow_matching: rectified flow (SD3) on flow_scheduler.
OBJECTIVES = ("epsilon", "v_prediction", "flow_matching")
TRAINING_SCHEDULERS = {cls.__name__: cls for cls in (DDPMScheduler, FlowMatchEulerDiscreteScheduler)}
# The checkpoint entry that rebuilds the components without the training module.
CHECKPOINT_KEY = "components"
UNET_PREFIX = "unet."


class DiffusionComponents:
    """unet: UNet2DConditionModel, (B, C, h, w) x (B,) x (B, L, D) -> (B, C, h, w).
    noise_scheduler: the training schedule, DDPMScheduler (betas, prediction_type) or, for flow matching,
    FlowMatchEulerDiscreteScheduler (shift); samplers are built from its config.
    text_encoder: FrozenTextEncoder, B prompts -> (B, L, D).
    autoencoder: FrozenAutoencoder, images (B, 3, H, W) in [-1, 1] <-> scaled latents (B, C, h, w).
    image_size: H = W.
    text_encoder_config / autoencoder_config: the Hydra configs they were loaded from (their `pretrained`
    references); the frozen weights never enter a checkpoint.
    sampling: the recipe's recommended {"sampler", "steps", "guidance_scale"}, which sample.py and
    evaluate.py use unless told otherwise (None: a checkpoint from before they were saved).
    """

    def __init__(self, unet: UNet2DConditionModel, noise_scheduler: SchedulerMixin, text_encoder: FrozenTextEncoder,
                 autoencoder: FrozenAutoencoder, image_size: int, text_encoder_config: dict,
                 autoencoder_config: dict, sampling: dict | None = None):
        self.unet, self.noise_scheduler = unet, noise_scheduler
        self.text_encoder, self.autoencoder = text_encoder, autoencoder
        self.image_size = int(image_size)
        self.text_encoder_config, self.autoencoder_config = dict(text_encoder_config), dict(autoencoder_config)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"prediction_type={self.objective!r}; choose one of {OBJECTIVES} (model.objective)")
        self.sampling = dict(sampling) if sampling else None

    @property
    def objective(self) -> str:
        """epsilon | v_prediction | flow_matching: what the UNet predicts."""
        if isinstance(self.noise_scheduler, FlowMatchEulerDiscreteScheduler):
            return "flow_matching"
        return str(self.noise_scheduler.config.prediction_type)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the latents the UNet denoises."""
        size = self.image_size // self.autoencoder.downsample_factor
        return (self.autoencoder.latent_channels, size, size)

    @classmethod
    def build(cls, unet: dict, text_encoder: dict, autoencoder: dict, noise_scheduler: dict,
              image_size: int, objective: str = "epsilon", flow_scheduler: dict | None = None,
              sampling: dict | None = None) -> "DiffusionComponents":
        """From the `model` config group: the UNet's in/out channels, sample size and cross-attention
        width are derived from the autoencoder and the text encoder; `objective` picks the schedule."""
        text_encoder, autoencoder = plain(text_encoder), plain(autoencoder)
        encoder, vae = instantiate(text_encoder), instantiate(autoencoder)
        network = _derived_unet(plain(unet), encoder, vae, image_size)
        schedule = training_scheduler(objective, plain(noise_scheduler), plain(flow_scheduler) or {})
        return cls(network, schedule, encoder, vae, image_size, text_encoder, autoencoder, plain(sampling))

    def checkpoint_entry(self) -> dict[str, Any]:
        """What a checkpoint carries to rebuild these components (plain types: weights_only loading)."""
        schedule = {"_class_name": type(self.noise_scheduler).__name__, **_plain_config(self.noise_scheduler.config)}
        return {"unet": _plain_config(self.unet.config), "noise_scheduler": schedule,
                "text_encoder": self.text_encoder_config, "autoencoder": self.autoencoder_config,
                "image_size": self.image_size, "sampling": self.sampling}

    def forward_process(self, latents: torch.Tensor, noise: torch.Tensor,
                        index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(x_t | x_0): latents and noise (B, C, h, w) mixed at training indices (B,) in [0, T), higher =
        noisier. Returns (x_t, the timesteps (B,) the UNet is given). DDPM: t = index. Flow matching:
        x_t = (1 - sigma) x_0 + sigma noise, sigma from the scheduler's (shifted) table, t = sigma T."""
        if self.objective != "flow_matching":
            return self.noise_scheduler.add_noise(latents, noise, index), index
        # A fresh table: a sampler's set_timesteps must never move the training one.
        table = FlowMatchEulerDiscreteScheduler.from_config(self.noise_scheduler.config)
        sigmas = table.sigmas.flip(0).to(latents.device, latents.dtype)[index]
        mixed = (1 - sigmas.view(-1, 1, 1, 1)) * latents + sigmas.view(-1, 1, 1, 1) * noise
        return mixed, sigmas * table.config.num_train_timesteps

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
            schedule = dict(entry["noise_scheduler"])
            scheduler = TRAINING_SCHEDULERS[schedule.pop("_class_name", "DDPMScheduler")].from_config(schedule)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"checkpoint {ckpt}: its saved UNet or scheduler config does not build ({err})") from err
        key = "state_dict" if use_ema or "current_model_state" not in checkpoint else "current_model_state"
        weights = {k: v for k, v in checkpoint[key].items() if k.startswith(UNET_PREFIX)}
        try:
            check_state_matches({UNET_PREFIX + k: v for k, v in unet.state_dict().items()}, weights)
        except ValueError as err:
            raise ValueError(f"{ckpt}: {err}") from err
        unet.load_state_dict({k[len(UNET_PREFIX):]: v for k, v in weights.items()})
        return cls(unet.eval(), scheduler, text_encoder, autoencoder, entry["image_size"], entry["text_encoder"],
                   autoencoder_config, entry.get("sampling"))

    def to(self, device: str | torch.device) -> "DiffusionComponents":
        for module in (self.unet, self.text_encoder, self.autoencoder):
            module.to(device)
        return self


def training_scheduler(objective: str, noise_scheduler: dict, flow_scheduler: dict) -> SchedulerMixin:
    """The training schedule of `objective`: DDPMScheduler(noise_scheduler) predicting epsilon or v, or
    FlowMatchEulerDiscreteScheduler(flow_scheduler) for flow matching."""
    if objective not in OBJECTIVES:
        raise ValueError(f"model.objective={objective!r}; choose one of {OBJECTIVES}")
    if noise_scheduler.get("prediction_type", objective) != objective:
        raise ValueError(f"model.noise_scheduler.prediction_type={noise_scheduler['prediction_type']!r} contradicts "
                         f"model.objective={objective!r}: set model.objective alone")
    if objective == "flow_matching":
        return FlowMatchEulerDiscreteScheduler(**flow_scheduler)
    return DDPMScheduler(**{**noise_scheduler, "prediction_type": objective})


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
