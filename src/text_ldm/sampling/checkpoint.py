"""Rebuild a LatentDiffusion model from a checkpoint file alone."""
from __future__ import annotations

from pathlib import Path

import torch

from text_ldm.lit.diffusion import LatentDiffusion
from text_ldm.utils.checkpoint_io import load_checkpoint


def load_diffusion(ckpt: str | Path, device: str | torch.device = "cpu", use_ema: bool = True,
                   vae_pretrained: str | None = None) -> LatentDiffusion:
    """The resolved config saved in the checkpoint rebuilds the model (frozen parts come from their
    own `pretrained` sources); the weights are then loaded strictly, and a mismatch (e.g. the text
    encoder or UNet config changed since training) raises a ValueError listing the keys.

    A checkpoint written with EMA holds the averaged weights under "state_dict" and the raw ones
    under "current_model_state"; `use_ema=False` picks the raw ones.

    The checkpoint does not hold the frozen autoencoder, only where it was loaded from at training time
    (an absolute path for a local directory). `vae_pretrained` points elsewhere: a moved checkout, or a
    local copy of a hub model."""
    checkpoint = load_checkpoint(ckpt)
    _locate_autoencoder(checkpoint["hyper_parameters"], ckpt, vae_pretrained)
    # compile speeds up training; a sampling run would pay a cold compile of minutes (about 145 s for
    # unet_base_ldm on an H200) and a recompile whenever the batch or the guidance doubling changes shapes.
    config = {**checkpoint["hyper_parameters"], "compile": False}
    try:
        model = LatentDiffusion(**config)
    except TypeError as err:
        raise ValueError(f"checkpoint {ckpt}: its saved config no longer builds a LatentDiffusion ({err})") from err
    try:
        model.on_load_checkpoint(checkpoint)  # re-inserts the frozen weights, checks every key
    except ValueError as err:
        raise ValueError(f"{ckpt}: {err}") from err
    key = "state_dict" if use_ema or "current_model_state" not in checkpoint else "current_model_state"
    model.load_state_dict(checkpoint[key])
    return model.to(device).eval()


def _locate_autoencoder(config: dict, ckpt: str | Path, vae_pretrained: str | None) -> None:
    autoencoder = config.get("autoencoder") or {}
    if vae_pretrained:
        config["autoencoder"] = {**autoencoder, "pretrained": str(vae_pretrained)}
        return
    saved = autoencoder.get("pretrained")
    # An absolute path that is gone is a moved or deleted checkout; diffusers would report it as a
    # failed hub download. A relative one may be a hub id, which only from_pretrained can tell.
    if saved and Path(saved).is_absolute() and not Path(saved).exists():
        raise FileNotFoundError(
            f"checkpoint {ckpt} was trained with its autoencoder at {saved}, which no longer exists (a moved or "
            "deleted checkout?). Point to it with vae_pretrained=DIR (the embedded default's is artifacts/toy_vq "
            "in any checkout of this project).")
