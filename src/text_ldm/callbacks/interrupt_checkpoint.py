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
        self._batch_step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_step = trainer.global_step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._batch_step = trainer.global_step

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, INTERRUPTS) or self._start_step is None:
            return
        if trainer.global_step <= self._start_step:
            return
        if self._inside_an_untaken_step(trainer):
            _rewind_to_batch_start(trainer, pl_module)
        trainer.save_checkpoint(self.ckpt_path)
        rank_zero_info(f"{type(exception).__name__} at global step {trainer.global_step}: saved {self.ckpt_path}; "
                       f"resume with ckpt_path={self.ckpt_path}")

    def _inside_an_untaken_step(self, trainer: L.Trainer) -> bool:
        """Raised inside a batch (Lightning counts it fetched, not processed) before its optimiser step."""
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        return progress.ready > progress.processed and trainer.global_step == self._batch_step


def _rewind_to_batch_start(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
    """Make the checkpoint the state at the start of the batch in flight (a NaN stops before backward, so the
    weights and optimiser are still there): the resumed run serves that batch again, with the same random
    draws, where the loader's count and the RNG would otherwise have moved past it. The process is ending."""
    loaders = trainer.train_dataloader
    for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
        if hasattr(loader, "unserve_last"):
            loader.unserve_last()
    if hasattr(pl_module, "restore_batch_start_rng"):
        pl_module.restore_batch_start_rng()
    # Lightning counts a resumed batch as stepped once more for the loggers' step, as for a checkpoint taken at a
    # batch's end before that count is bumped; this one is taken before the batch's step, so it comes out ahead.
    epoch_loop = trainer.fit_loop.epoch_loop
    if getattr(epoch_loop, "_batches_that_stepped", 0) > 0 and not epoch_loop._should_accumulate():
        epoch_loop._batches_that_stepped -= 1
