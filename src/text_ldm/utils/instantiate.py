"""Build callbacks and loggers from their Hydra config groups (one entry per key)."""
from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities import rank_zero_info
from hydra.utils import instantiate
from omegaconf import DictConfig


def _instantiate_group(group: DictConfig | None, kind: str) -> list:
    objects = []
    for name, conf in (group or {}).items():
        if conf is None:  # lets an experiment switch one entry off with `callbacks.name: null`
            continue
        if not isinstance(conf, DictConfig) or "_target_" not in conf:
            raise ValueError(f"{kind} entry '{name}' has no _target_: {conf}")
        objects.append(instantiate(conf))
    return objects


def instantiate_callbacks(config: DictConfig | None) -> list[L.Callback]:
    return _instantiate_group(config, "callbacks")


def instantiate_loggers(config: DictConfig | None) -> list:
    return _instantiate_group(config, "logger")


def without_logger_only_callbacks(callbacks: list[L.Callback]) -> list[L.Callback]:
    """Drop the callbacks that refuse to run without a logger (`logger=none`), saying which: Lightning's
    LearningRateMonitor raises at the first training step otherwise, after data and model are built."""
    dropped = [c for c in callbacks if isinstance(c, LearningRateMonitor)]
    if dropped:
        rank_zero_info(f"logger=none: {', '.join(type(c).__name__ for c in dropped)} is off (it needs a logger)")
    return [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
