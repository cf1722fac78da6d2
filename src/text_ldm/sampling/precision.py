"""Inference precision: which dtype the UNet runs in (`precision=fp32|bf16|fp16`)."""
from __future__ import annotations

from contextlib import contextmanager

import torch

from text_ldm.sampling.names import PRECISIONS

DTYPES = dict(zip(PRECISIONS, (torch.float32, torch.bfloat16, torch.float16)))


def resolve(precision: str) -> torch.dtype:
    if precision not in DTYPES:
        raise ValueError(f"precision={precision!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[precision]


def apply(model, precision: str) -> None:
    """Cast the UNet only. The text encoder runs once per prompt (memoised) and the autoencoder once
    per image, so they stay float32, where a VQ decoder's codebook distances are safe; the sampling
    loop keeps latents and scheduler arithmetic in float32 and casts only the UNet's input."""
    dtype, unet = resolve(precision), model.unet
    if next(unet.parameters()).dtype == dtype:
        return
    if unet._keep_in_fp32_modules:
        unet.to(dtype)
    else:  # diffusers' to(dtype) warns about modules "that should be kept in float32" even when there are none
        torch.nn.Module.to(unet, dtype)


@contextmanager
def explained(precision: str, device: str | torch.device):
    """Turn a dtype-not-implemented error from a kernel into one line that says what to do."""
    try:
        yield
    except (RuntimeError, NotImplementedError) as err:
        text = str(err)
        if precision != "fp32" and ("Half" in text or "BFloat16" in text or "not implemented" in text):
            raise RuntimeError(f"precision={precision} is not supported on {device} by an op of this model "
                               f"({text.splitlines()[0]}); use precision=fp32 (or bf16 on CPU)") from err
        raise
