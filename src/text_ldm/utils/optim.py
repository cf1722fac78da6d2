"""Optimiser and LR schedule from `_partial_: true` configs, in the form configure_optimizers returns."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from hydra.utils import instantiate


def configure_from_partials(params: Iterable[torch.nn.Parameter], optimizer: dict | None,
                            lr_scheduler: dict | None = None) -> Any:
    """optimizer / lr_scheduler: configs whose instantiation yields a partial missing `params` /
    `optimizer`. The schedule steps every optimiser step."""
    if optimizer is None:
        raise ValueError("model.optimizer is not set; training needs one")
    opt = instantiate(optimizer)(params=params)
    if lr_scheduler is None:
        return opt
    scheduler = instantiate(lr_scheduler)(optimizer=opt)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
