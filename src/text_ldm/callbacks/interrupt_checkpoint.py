"""Save `last.ckpt` when a fit is interrupted: SIGTERM (SLURM preemption), Ctrl-C, a NaN stop."""
from __future__ import annotations

import os

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from text_ldm.callbacks.nonfinite_loss import NonFiniteLossError

INTERRUPTS = (SIGTERMException, KeyboardInterrupt, NonFiniteLossError)


class InterruptCheckpoint(Callback):
    """Writes `last.ckpt` where ModelCheckpoint keeps it when a fit is interrupted mid-training, so
    `ckpt_path=.../last.ckpt` (and `make demo`) resumes from the moment of the interrupt.

    A plain Callback, not Lightning's OnExceptionCheckpoint: the trainer turns `fit(ckpt_path=None)` into
    "last" whenever one of those is present, so every fresh run into a used folder would resume silently.
    Other exceptions, and ones raised before the first optimiser step (a bad config, missing data, a failed
    resume), save nothing: overwriting a good last.ckpt with untrained weights would lose work.
    """

    def __init__(self, dirpath: str | os.PathLike, filename: str = "last") -> None:
        if not filename:
            raise ValueError("callbacks.interrupt_checkpoint.filename must not be empty")
        self.ckpt_path = os.path.join(dirpath, f"{filename}.ckpt")
        self._start_step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_step = trainer.global_step

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, INTERRUPTS) or self._start_step is None:
            return
        if trainer.global_step <= self._start_step:
            return
        trainer.save_checkpoint(self.ckpt_path)
        rank_zero_info(f"{type(exception).__name__} at global step {trainer.global_step}: saved {self.ckpt_path}; "
                       f"resume with ckpt_path={self.ckpt_path}")
