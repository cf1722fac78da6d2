"""Optimiser and LR schedule from `_partial_: true` configs, in the form configure_optimizers returns."""
from __future__ import annotations

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
