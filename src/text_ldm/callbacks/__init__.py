"""Training callbacks. Helpers shared by the ones that write files live here."""
from __future__ import annotations

from pathlib import Path

import lightning as L


def shared_log_dir(trainer: L.Trainer) -> Path:
    """The run's log directory. Under DDP `trainer.log_dir` broadcasts rank 0's answer, a collective:
    every rank must call this, or rank 0 waits forever for the others (call it before any
    rank-zero-only work)."""
    return Path(trainer.log_dir or trainer.default_root_dir)
