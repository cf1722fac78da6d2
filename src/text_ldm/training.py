"""`train.py`'s body: compose data, model, callbacks, loggers and trainer from the config, then fit."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from text_ldm.utils.checkpoint_io import AtomicCheckpointIO
from text_ldm.utils.instantiate import instantiate_callbacks, instantiate_loggers, without_logger_only_callbacks


# The frozen text encoder and autoencoder are in eval mode on purpose.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


def describe_batch(cfg: DictConfig, trainer: L.Trainer) -> str:
    """The effective batch size and learning rate, stated once: nothing is rescaled silently."""
    per_device = cfg.data.batch_size
    accumulate = trainer.accumulate_grad_batches
    effective = per_device * trainer.world_size * accumulate
    lr = OmegaConf.select(cfg, "model.optimizer.lr")
    return (f"batch: {per_device} per device x {trainer.world_size} device(s) x {accumulate} accumulation "
            f"= {effective} effective; lr {lr} as configured (no automatic LR scaling)")


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Trainable and frozen parameter counts, logged with the hyper-parameters."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"params/trainable": trainable, "params/frozen": total - trainable}


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """`ckpt_path=last`: the newest `last.ckpt` under this task's log directory (every run of
    `task_name`, single or multirun), since each new run writes into a fresh directory where
    Lightning's own "last" would find nothing. A path is checked and returned as is."""
    ckpt = cfg.get("ckpt_path")
    if ckpt in (None, "best"):
        return ckpt
    if ckpt != "last":
        if not os.path.isfile(ckpt):
            raise FileNotFoundError(f"ckpt_path={ckpt} does not exist; give a last.ckpt path or ckpt_path=last")
        return ckpt
    root = Path(cfg.paths.log_dir) / cfg.task_name
    candidates = sorted(root.rglob("checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(f"ckpt_path=last: no checkpoints/last.ckpt under {root}; train first or give a path")
    rank_zero_info(f"resuming from {candidates[-1]}")
    return str(candidates[-1])


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit cfg.model on cfg.data. Returns the final callback metrics as floats."""
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    loggers = instantiate_loggers(cfg.get("logger"))
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    if not loggers:
        callbacks = without_logger_only_callbacks(callbacks)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                     plugins=[AtomicCheckpointIO()])
    # Before fit: callbacks (EMA) copy the module in their setup, and must copy the cast one.
    if hasattr(model, "cast_frozen"):
        model.cast_frozen(trainer.precision)
    rank_zero_info(describe_batch(cfg, trainer))
    counts = parameter_counts(model)
    rank_zero_info(f"parameters: {counts['params/trainable']:,} trainable, {counts['params/frozen']:,} frozen")
    try:
        for logger in trainer.loggers:
            logger.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), **counts})
        trainer.fit(model, datamodule=datamodule, ckpt_path=resolve_ckpt_path(cfg))
    finally:
        _finish_loggers(trainer)
    best = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
    rank_zero_info(f"checkpoints: {os.path.dirname(best) or trainer.default_root_dir}")
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def _finish_loggers(trainer: L.Trainer) -> None:
    """One W&B run per job: a Hydra multirun calls train() again in the same process, and an
    unfinished run would swallow the next job's metrics."""
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger" and trainer.is_global_zero:
            import wandb

            if wandb.run is not None:
                wandb.finish()
