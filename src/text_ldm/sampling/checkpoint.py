"""Rebuild a LatentDiffusion model from a checkpoint file alone."""
from __future__ import annotations

from pathlib import Path

import torch

from text_ldm.lit.diffusion import LatentDiffusion
from text_ldm.utils.checkpoint_io import load_checkpoint


def load_diffusion(ckpt: str | Path, device: str | torch.device = "cpu") -> LatentDiffusion:
    """The resolved config saved in the checkpoint rebuilds the model (frozen parts come from their
    own `pretrained` sources); the weights are then loaded strictly, and a mismatch lists the keys."""
    checkpoint = load_checkpoint(ckpt)
    model = LatentDiffusion(**checkpoint["hyper_parameters"])
    model.on_load_checkpoint(checkpoint)
    result = model.load_state_dict(checkpoint["state_dict"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"checkpoint {ckpt} does not match the model its config builds: "
                         f"missing {result.missing_keys[:10]} unexpected {result.unexpected_keys[:10]}")
    return model.to(device).eval()
