"""Save `last.ckpt` when a fit is interrupted: SIGTERM (SLURM preemption), Ctrl-C, a NaN stop."""
from __future__ import annotations

import os
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import OnExceptionCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from text_ldm.callbacks.nonfinite_loss import NonFiniteLossError

INTERRUPTS = (SIGTERMException, KeyboardInterrupt, NonFiniteLossError)


class InterruptCheckpoint(OnExceptionCheckpoint):
    """Lightning's OnExceptionCheckpoint, narrowed to interrupts that happen mid-training.

    It writes where ModelCheckpoint keeps `last.ckpt`, so `ckpt_path=.../last.ckpt` (and
    `make demo`) resumes from the moment of the interrupt. Other exceptions, and ones raised
    before the first optimiser step (a bad config, missing data, a failed resume), save nothing:
    overwriting a good last.ckpt with untrained weights would lose work.
    """

    def __init__(self, dirpath: str | os.PathLike, filename: str = "last") -> None:
        super().__init__(dirpath, filename)
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

    def teardown(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        # The parent deletes its file after a successful fit; ours is last.ckpt, which must stay.
        pass
