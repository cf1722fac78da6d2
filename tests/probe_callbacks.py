"""Test-only Lightning callbacks, importable by a train.py subprocess (PYTHONPATH=tests). Kept apart
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


class RecordRank(Callback):
    """Writes, per rank, the latents' fingerprints it trained on and its final raw weights to
    `{out_dir}/rank{R}.pt`, so a test can compare what the DDP ranks saw and ended with."""

    def __init__(self, out_dir: str):
        self.out_dir, self.seen, self.state = out_dir, [], {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen += [float(x.double().sum()) for x in batch["latent"]]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # the raw weights after this step (EMA swaps the averaged ones in at validation and at the end)
        self.state = {k: v.detach().cpu().clone() for k, v in pl_module.unet.state_dict().items()}

    def on_train_end(self, trainer, pl_module):
        import torch

        os.makedirs(self.out_dir, exist_ok=True)
        torch.save({"seen": self.seen, "unet": self.state}, os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt"))
