"""Rebuild a LatentDiffusion model from a checkpoint file alone."""
from __future__ import annotations

from pathlib import Path

import torch

from text_ldm.lit.diffusion import LatentDiffusion
from text_ldm.utils.checkpoint_io import load_checkpoint


def load_diffusion(ckpt: str | Path, device: str | torch.device = "cpu", use_ema: bool = True) -> LatentDiffusion:
    """The resolved config saved in the checkpoint rebuilds the model (frozen parts come from their
    own `pretrained` sources); the weights are then loaded strictly, and a mismatch lists the keys.

    A checkpoint written with EMA holds the averaged weights under "state_dict" and the raw ones
    under "current_model_state"; `use_ema=False` picks the raw ones."""
    checkpoint = load_checkpoint(ckpt)
    model = LatentDiffusion(**checkpoint["hyper_parameters"])
    model.on_load_checkpoint(checkpoint)
    key = "state_dict" if use_ema or "current_model_state" not in checkpoint else "current_model_state"
    result = model.load_state_dict(checkpoint[key], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"checkpoint {ckpt} does not match the model its config builds: "
                         f"missing {result.missing_keys[:10]} unexpected {result.unexpected_keys[:10]}")
    return model.to(device).eval()
