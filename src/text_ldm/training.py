"""`train.py`'s body: compose data, model, callbacks, loggers and trainer from the config, then fit."""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import lightning as L
import torch
import yaml
from hydra.utils import instantiate
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import LambdaCallback
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from text_ldm.utils.checkpoint_io import AtomicCheckpointIO, load_checkpoint
from text_ldm.utils.cpu import usable_cores
from text_ldm.utils.instantiate import (check_loggers, instantiate_callbacks, instantiate_loggers,
                                       without_logger_only_callbacks)


# The frozen text encoder and autoencoder are in eval mode on purpose.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
# Lightning's own pytree helper uses torch's deprecated LeafSpec: nothing a user of train.py can act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)


class _DropLitLoggerTip(logging.Filter):
    """Lightning advertises its cloud logger on every run that uses another one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡 Tip: For seamless cloud logging")


for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(_DropLitLoggerTip())


def describe_batch(cfg: DictConfig, trainer: L.Trainer) -> str:
    """The effective batch size and learning rate, stated once: nothing is rescaled silently."""
    per_device = cfg.data.batch_size
    accumulate = trainer.accumulate_grad_batches
    effective = per_device * trainer.world_size * accumulate
    lr = OmegaConf.select(cfg, "model.optimizer.lr")
    return (f"batch: {per_device} per device x {trainer.world_size} device(s) x {accumulate} accumulation "
            f"= {effective} effective; lr {lr} as configured (no automatic LR scaling)")


def oversubscription_hint(processes: int, threads: int, cores: int) -> str | None:
    """A line for CPU training whose processes x threads exceed the cores: each thread then waits for a core,
    and a step slows down instead of speeding up. None when they fit."""
    if processes * threads <= cores:
        return None
    return (f"hint: {processes} CPU process{'es' if processes > 1 else ''} x {threads} threads on {cores} cores "
            f"oversubscribe them; set num_threads={max(1, cores // processes)}")


def _hint_cpu_threads(trainer: L.Trainer, *_) -> None:
    # At train start: the threads are final there (Lightning's launcher may have set them for its processes).
    if isinstance(trainer.accelerator, CPUAccelerator):
        hint = oversubscription_hint(trainer.num_devices, torch.get_num_threads(), usable_cores())
        if hint:
            rank_zero_info(hint)


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Trainable and frozen parameter counts, logged with the hyper-parameters."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"params/trainable": trainable, "params/frozen": total - trainable}


def run_last_ckpt(cfg: DictConfig) -> Path:
    """Where this run writes its last.ckpt."""
    dirs = [OmegaConf.select(cfg, f"callbacks.{name}.dirpath")
            for name in ("last_checkpoint", "interrupt_checkpoint", "model_checkpoint")]
    return Path(next((d for d in dirs if d), None) or Path(cfg.paths.output_dir) / "checkpoints") / "last.ckpt"


def _is_plain_run(run_dir: Path, root: Path) -> bool:
    """Whether a run folder is a single, non-debug run: "last" must not pick up a sweep job or a smoke test."""
    if "multiruns" in run_dir.relative_to(root).parts:
        return False
    meta = run_dir / ".hydra" / "hydra.yaml"
    if not meta.is_file():
        return True
    hydra_cfg = (yaml.safe_load(meta.read_text()) or {}).get("hydra", {})
    return hydra_cfg.get("mode") != "MULTIRUN" and not (hydra_cfg.get("runtime", {}).get("choices", {}).get("debug"))


def _find_last(cfg: DictConfig) -> Path:
    """`ckpt_path=last`: this run folder's last.ckpt, else the newest of this task's single non-debug runs."""
    own = run_last_ckpt(cfg)
    if own.is_file():
        rank_zero_info(f"ckpt_path=last: resuming this run folder's {own}")
        return own
    root = Path(cfg.paths.log_dir) / cfg.task_name
    candidates = sorted((p for p in root.rglob("checkpoints/last.ckpt") if _is_plain_run(p.parent.parent, root)),
                        key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(f"ckpt_path=last: no checkpoints/last.ckpt in {own.parent} nor in a run of "
                                f"{cfg.task_name} under {root} (multirun and debug runs do not count); "
                                "train first or give a path")
    rank_zero_info(f"ckpt_path=last: resuming the newest run of {cfg.task_name}, {candidates[-1]}")
    return candidates[-1]


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """The checkpoint to resume from, checked before anything is built. A run resumes only when `ckpt_path`
    says so; a fresh one refuses a folder that already holds a last.ckpt, which it would overwrite."""
    ckpt = cfg.get("ckpt_path")
    if ckpt is None:
        own = run_last_ckpt(cfg)
        if own.is_file() and not cfg.trainer.get("fast_dev_run"):
            raise ValueError(f"{own.parent.parent} already holds {own}: resume with ckpt_path={own}, "
                             "or choose another hydra.run.dir")
        return None
    if ckpt == "best":
        return ckpt
    path = _find_last(cfg) if ckpt == "last" else Path(ckpt)
    if path.is_dir():
        inside = next((p for p in (path / "checkpoints" / "last.ckpt", path / "last.ckpt") if p.is_file()), None)
        raise ValueError(f"ckpt_path={ckpt} is a directory; give a checkpoint file"
                         + (f", e.g. ckpt_path={inside}" if inside else " (a run's checkpoints/last.ckpt)"))
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt} does not exist; give a last.ckpt path or ckpt_path=last")
    load_checkpoint(path, mmap=True)  # a corrupt or foreign file: one line now, not a traceback from the trainer
    return str(path)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit cfg.model on cfg.data. Returns the final callback metrics as floats."""
    ckpt_path = resolve_ckpt_path(cfg)
    check_loggers(cfg.get("logger"))
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
    callbacks.append(LambdaCallback(on_train_start=_hint_cpu_threads))
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
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    finally:
        _finish_loggers(trainer)
    saved = [os.path.dirname(p) for p in (run_last_ckpt(cfg), getattr(trainer.checkpoint_callback, "best_model_path", ""))
             if p and os.path.isfile(p)]
    rank_zero_info(f"checkpoints: {saved[0]}" if saved else "checkpoints: none written")
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def _finish_loggers(trainer: L.Trainer) -> None:
    """One W&B run per job: a Hydra multirun calls train() again in the same process, and an
    unfinished run would swallow the next job's metrics."""
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger" and trainer.is_global_zero:
            import wandb

            if wandb.run is not None:
                wandb.finish()
