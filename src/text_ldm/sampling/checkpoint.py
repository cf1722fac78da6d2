"""Rebuild a LatentDiffusion model from a checkpoint file alone."""
from __future__ import annotations

from pathlib import Path

import torch

from text_ldm.lit.diffusion import LatentDiffusion
from text_ldm.utils.checkpoint_io import load_checkpoint


def state_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> list[str]:
    """Human-readable differences between two state dicts: missing, unexpected, and shape-mismatched keys."""
    problems = [f"missing {k}" for k in expected if k not in found]
    problems += [f"unexpected {k}" for k in found if k not in expected]
    problems += [f"{k}: checkpoint {tuple(found[k].shape)} vs model {tuple(v.shape)}"
                 for k, v in expected.items() if k in found and tuple(found[k].shape) != tuple(v.shape)]
    return problems


def load_diffusion(ckpt: str | Path, device: str | torch.device = "cpu", use_ema: bool = True) -> LatentDiffusion:
    """The resolved config saved in the checkpoint rebuilds the model (frozen parts come from their
    own `pretrained` sources); the weights are then loaded strictly, and a mismatch (e.g. the text
    encoder or UNet config changed since training) raises a ValueError listing the keys.

    A checkpoint written with EMA holds the averaged weights under "state_dict" and the raw ones
    under "current_model_state"; `use_ema=False` picks the raw ones."""
    checkpoint = load_checkpoint(ckpt)
    try:
        model = LatentDiffusion(**checkpoint["hyper_parameters"])
    except TypeError as err:
        raise ValueError(f"checkpoint {ckpt}: its saved config no longer builds a LatentDiffusion ({err})") from err
    model.on_load_checkpoint(checkpoint)
    key = "state_dict" if use_ema or "current_model_state" not in checkpoint else "current_model_state"
    problems = state_mismatch(model.state_dict(), checkpoint[key])
    if problems:
        shown = "; ".join(problems[:12]) + (f"; ... {len(problems) - 12} more" if len(problems) > 12 else "")
        raise ValueError(f"checkpoint {ckpt} does not match the model its config builds "
                         f"({len(problems)} mismatched keys): {shown}")
    model.load_state_dict(checkpoint[key])
    return model.to(device).eval()
