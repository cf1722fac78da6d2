"""`last.ckpt`: the state a run stopped in, written so that resuming from it continues exactly."""
from __future__ import annotations

import os
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint keeping one file, `last.ckpt`, rewritten at every epoch end (and every
    `every_n_train_steps`) whatever the validation loss did.

    Two reasons it is not the best-model ModelCheckpoint's `save_last`: since Lightning 2.6 that one writes
    last.ckpt only when a top-k file is written at the same step, so a run whose loss stopped improving left a
    stale last.ckpt; and a run that stops mid-epoch (`trainer.max_steps`, a time budget's plan) goes through
    Lightning's epoch end, whose checkpoint records the epoch as finished: the resumed run would start the next
    epoch's shuffle and never serve the rest of this one. So a mid-epoch stop is saved at its last batch's end,
    as `every_n_train_steps` would save it, and the epoch-end save at that same step is skipped (ModelCheckpoint
    never saves one step twice).
    """

    def __init__(self, dirpath: str | os.PathLike, every_n_train_steps: int | None = None) -> None:
        super().__init__(dirpath=dirpath, filename="last", monitor=None, save_top_k=1, save_last=False,
                         every_n_train_steps=every_n_train_steps, enable_version_counter=False)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if _save_at_batch_end(trainer) and not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))


def _save_at_batch_end(trainer: L.Trainer) -> bool:
    """Whether this batch's end is where last.ckpt must be written rather than the epoch's end: the fit ends
    after it mid-epoch, or it ends an epoch of a run with `trainer.max_steps` set, which Lightning resumes from
    an epoch-end checkpoint one epoch ahead (the next epoch's shuffle skipped, its end hooks run twice).
    Checkpoint callbacks run after the others, so a `should_stop` set in this batch's hooks is seen."""
    if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
        return trainer.max_steps != -1
    return trainer.should_stop or 0 < trainer.max_steps <= trainer.global_step
