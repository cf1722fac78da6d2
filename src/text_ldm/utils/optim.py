"""Optimiser and LR schedule from `_partial_: true` configs, in the form configure_optimizers returns,
and the re-plannable warmup + cosine schedule."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from hydra.utils import instantiate

# Schedule arguments that mean "the whole run": left null in configs, filled from the trainer.
TOTAL_STEP_KEYS = ("num_training_steps", "total_steps", "T_max")


def configure_from_partials(params: Iterable[torch.nn.Parameter], optimizer: dict | None,
                            lr_scheduler: dict | None = None, total_steps: Callable[[], int] | None = None) -> Any:
    """optimizer / lr_scheduler: configs whose instantiation yields a partial missing `params` /
    `optimizer`. The schedule steps every optimiser step. A null `num_training_steps` (or
    `total_steps`, `T_max`) in the schedule is filled with `total_steps()` (the trainer's
    estimated optimiser steps), so a cosine decay ends where training does."""
    if optimizer is None:
        raise ValueError("model.optimizer is not set; training needs one")
    opt = instantiate(optimizer)(params=params)
    if lr_scheduler is None:
        return opt
    lr_scheduler = dict(lr_scheduler)
    for key in TOTAL_STEP_KEYS:
        if key in lr_scheduler and lr_scheduler[key] is None:
            if total_steps is None:
                raise ValueError(f"model.lr_scheduler.{key} is null and no trainer is attached; set it to a number")
            lr_scheduler[key] = int(total_steps())
    scheduler = instantiate(lr_scheduler)(optimizer=opt)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class WarmupCosine:
    """The LR multiplier of diffusers' `get_cosine_schedule_with_warmup` (linear warmup, then a half
    cosine to 0 at `num_training_steps`), as an object rather than a closure: LambdaLR saves a callable
    object's attributes in its state_dict, so the total survives a resume, and `replan` can move the
    end when the run's length changes mid-way (callbacks/time_budget.py)."""

    def __init__(self, num_warmup_steps: int, num_training_steps: int, num_cycles: float = 0.5):
        self.num_warmup_steps, self.num_cycles = int(num_warmup_steps), float(num_cycles)
        self.num_training_steps = int(num_training_steps)

    def replan(self, num_training_steps: int) -> None:
        self.num_training_steps = int(num_training_steps)

    def __call__(self, step: int) -> float:
        if step < self.num_warmup_steps:
            return step / max(1, self.num_warmup_steps)
        progress = (step - self.num_warmup_steps) / max(1, self.num_training_steps - self.num_warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * self.num_cycles * 2.0 * progress)))


def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, num_warmup_steps: int, num_training_steps: int,
                           num_cycles: float = 0.5) -> torch.optim.lr_scheduler.LambdaLR:
    """diffusers' warmup + cosine schedule, re-plannable and resumable (see WarmupCosine)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(num_warmup_steps, num_training_steps, num_cycles))
