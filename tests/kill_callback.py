"""Test-only Lightning callback, importable by a train.py subprocess (PYTHONPATH=tests). Kept apart
from conftest, whose import sets torch's thread count and so would change the run's numerics."""
from __future__ import annotations

import os
import signal

from lightning.pytorch.callbacks import Callback


class SigkillAtStep(Callback):
    """SIGKILLs its own process when optimiser step `step` is about to start, i.e. after the
    checkpoint of step `step` was written: no cleanup and no teardown, like the OOM killer."""

    def __init__(self, step: int):
        self.step = int(step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
