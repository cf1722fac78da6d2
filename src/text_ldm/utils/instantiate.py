"""Build callbacks and loggers from their Hydra config groups (one entry per key)."""
from __future__ import annotations

import lightning as L
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
