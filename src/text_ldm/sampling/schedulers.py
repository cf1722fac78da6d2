"""Samplers: diffusers schedulers built from the training noise scheduler's config."""
from __future__ import annotations

from typing import Any

from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       LMSDiscreteScheduler, PNDMScheduler, UniPCMultistepScheduler)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

SAMPLERS: dict[str, type[SchedulerMixin]] = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "pndm": PNDMScheduler,
    "lms": LMSDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,  # its default algorithm is DPM-Solver++ (2M)
    "unipc": UniPCMultistepScheduler,
}


def make_sampler(name: str, train_scheduler_config: dict[str, Any], **overrides: Any) -> SchedulerMixin:
    """A fresh sampler of kind `name` that shares the training betas (the model only knows those)."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler={name!r} is unknown; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[name].from_config(dict(train_scheduler_config), **overrides)
