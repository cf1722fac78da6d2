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
    """Writes, per rank, the latents' fingerprints it trained on, the captions it drew, its text memo and
    final raw weights to `{out_dir}/rank{R}.pt`, so a test can compare what the DDP ranks saw and ended with."""

    def __init__(self, out_dir: str):
        self.out_dir, self.seen, self.state = out_dir, [], {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen += [float(x.double().sum()) for x in batch["latent"]]
        self.captions = getattr(self, "captions", set()) | set(batch["caption"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # the raw weights after this step (EMA swaps the averaged ones in at validation and at the end)
        self.state = {k: v.detach().cpu().clone() for k, v in pl_module.unet.state_dict().items()}

    def on_train_end(self, trainer, pl_module):
        import torch

        os.makedirs(self.out_dir, exist_ok=True)
        encoder = pl_module.text_encoder
        torch.save({"seen": self.seen, "unet": self.state, "captions": sorted(self.captions),
                    "memo": {k: v.clone() for k, v in encoder._cache.items()}, "encoded": encoder.prompts_encoded},
                   os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt"))


class SigtermAtStep(Callback):
    """Raises Lightning's SIGTERMException (what a SLURM preemption turns into) when optimiser step `step`
    is about to start, in-process: the interrupt checkpoint is written, then the fit raises."""

    def __init__(self, step: int):
        self.step = int(step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if trainer.global_step == self.step:
            raise SIGTERMException()


class FakeTime(Callback):
    """A deterministic wall clock for TrainingTimeBudget: every training batch of this process "takes"
    `seconds_per_batch` (times `1 + rank * rank_slowdown`, to give DDP ranks different speeds). Add it as
    a callback and give the budget `clock: {_target_: probe_callbacks.fake_now, _partial_: true}`."""

    now = 0.0

    def __init__(self, seconds_per_batch: float, rank_slowdown: float = 0.0, seconds_per_validation: float = 0.0):
        FakeTime.now = 0.0
        self.seconds_per_batch, self.rank_slowdown = float(seconds_per_batch), float(rank_slowdown)
        self.seconds_per_validation = float(seconds_per_validation)

    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking:  # after the budget's own hook has read the clock
            FakeTime.now += self.seconds_per_validation

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        FakeTime.now += self.seconds_per_batch * (1 + trainer.global_rank * self.rank_slowdown)


def fake_now() -> float:
    return FakeTime.now


class SigtermSignalAtStep(Callback):
    """Sends its own process a real SIGTERM when optimiser step `step` has just ended: Lightning's handler
    notes it and stops the loop after that batch, as it would for a scheduler's preemption notice."""

    def __init__(self, step: int):
        self.step = int(step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class NaNAtStep(Callback):
    """Corrupts one latent of the batch of optimiser step `step`, once per process (a transient fault): the
    NaN guard stops the run before that step."""

    def __init__(self, step: int):
        self.step = int(step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            batch["latent"][0, 0, 0, 0] = float("nan")
