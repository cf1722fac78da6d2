"""Stop training at the first NaN/Inf loss, before it reaches the weights."""
from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class NonFiniteLossError(FloatingPointError):
    """The training loss was NaN or Inf; the message names the step and the learning rate."""


class NonFiniteLossGuard(Callback):
    """Checks the loss before backward, so the optimiser never applies a NaN step and the
    interrupt checkpoint (if any) holds finite weights. Under DDP every rank stops together:
    one rank raising alone would leave the others waiting in the gradient all-reduce."""

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):
            return
        lrs = [group["lr"] for opt in trainer.optimizers for group in opt.param_groups]
        lr = f"{lrs[0]:.3g}" if lrs else "unknown"
        raise NonFiniteLossError(
            f"training loss is {loss.item() if bad else 'non-finite on another rank'} at global step "
            f"{trainer.global_step} (lr {lr}); stopped before the update. Lower model.optimizer.lr, clip "
            f"gradients (trainer.gradient_clip_val=1.0), or rerun with trainer.detect_anomaly=true to find "
            f"the operation that produced it.")
