"""Build callbacks and loggers from their Hydra config groups (one entry per key)."""
from __future__ import annotations

import importlib.util
import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

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
    check_loggers(config)
    return _instantiate_group(config, "logger")


def check_loggers(config: DictConfig | None) -> None:
    """Refuse, in one line, a logger that cannot start: called before the data and model are built, too."""
    for name, conf in (config or {}).items():
        if isinstance(conf, DictConfig) and str(conf.get("_target_", "")).endswith("WandbLogger"):
            check_wandb_ready(name, bool(conf.get("offline")))


def check_wandb_ready(name: str, offline: bool, environ: Mapping[str, str] = os.environ,
                      home: Path | None = None) -> None:
    """ValueError before a W&B logger is built that cannot start: wandb not installed, or online with no API key
    (wandb would fail at its first call with a traceback, or wait at a login prompt)."""
    if importlib.util.find_spec("wandb") is None:
        raise ValueError(f"logger.{name}: the wandb package is not installed: pip install -e '.[wandb]'")
    if offline or environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return
    host = urlparse(environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    if environ.get("WANDB_API_KEY") or _netrc_has(host, environ, home or Path.home()):
        return
    raise ValueError(f"logger.{name}: no W&B API key (WANDB_API_KEY, or a ~/.netrc entry for {host}): run "
                     f"`wandb login`, or log offline with WANDB_MODE=offline or logger.{name}.offline=true")


def _netrc_has(host: str | None, environ: Mapping[str, str], home: Path) -> bool:
    paths = [Path(environ["NETRC"])] if environ.get("NETRC") else [home / ".netrc", home / "_netrc"]
    for path in paths:
        try:
            if path.is_file() and netrc.netrc(path).authenticators(host):
                return True
        except (netrc.NetrcParseError, OSError):
            return True  # a file this parser refuses: wandb's own reader judges it
    return False


def without_logger_only_callbacks(callbacks: list[L.Callback]) -> list[L.Callback]:
    """Drop the callbacks that refuse to run without a logger (`logger=none`), saying which: Lightning's
    LearningRateMonitor raises at the first training step otherwise, after data and model are built."""
    dropped = [c for c in callbacks if isinstance(c, LearningRateMonitor)]
    if dropped:
        rank_zero_info(f"logger=none: {', '.join(type(c).__name__ for c in dropped)} is off (it needs a logger)")
    return [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
