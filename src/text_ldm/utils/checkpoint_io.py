"""Checkpoint writing that a kill cannot half-finish, and safe checkpoint reading."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from text_ldm.utils.atomic import atomic_path
from text_ldm.utils.cli import check_checkpoint_file


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file in the target directory, fsyncs, then renames over the target:
    a job killed mid-save leaves the previous `last.ckpt` intact."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        # Resuming (`ckpt_path=`) never unpickles arbitrary objects: tensors, containers and
        # primitives only, whatever torch's default or TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says.
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


def load_checkpoint(path: str | os.PathLike, mmap: bool = False) -> dict[str, Any]:
    """torch.load with weights_only=True; a one-line error when `path` is missing, a directory or not a checkpoint.
    `mmap=True` reads the structure without the tensors' bytes: a cheap check of a multi-GB file."""
    path = Path(path)
    check_checkpoint_file(path)
    if mmap and not zipfile.is_zipfile(path):  # torch's own message for this case speaks of save options
        raise ValueError(f"{path} is not a text_ldm training checkpoint: not a whole torch.save archive (truncated, corrupt, "
                         "or another kind of file)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises several types for non-checkpoint files, some with long messages
        reason = (str(err).strip().splitlines() or [""])[0]
        raise ValueError(f"{path} is not a text_ldm training checkpoint ({type(err).__name__}: {reason})") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise ValueError(f"{path} is not a text_ldm training checkpoint (no state_dict / hyper_parameters)")
    return checkpoint


def state_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> list[str]:
    """Human-readable differences between two state dicts: missing, unexpected, and shape-mismatched keys."""
    problems = [f"missing {k}" for k in expected if k not in found]
    problems += [f"unexpected {k}" for k in found if k not in expected]
    problems += [f"{k}: checkpoint {tuple(found[k].shape)} vs model {tuple(v.shape)}"
                 for k, v in expected.items() if k in found and tuple(found[k].shape) != tuple(v.shape)]
    return problems


def check_state_matches(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], hint: str = "") -> None:
    """ValueError listing (up to 12 of) the mismatched keys, e.g. a checkpoint whose UNet or text
    encoder config differs from the model it is loaded into; `hint` is appended."""
    problems = state_mismatch(expected, found)
    if problems:
        shown = "; ".join(problems[:12]) + (f"; ... {len(problems) - 12} more" if len(problems) > 12 else "")
        raise ValueError(f"this checkpoint does not match the model its config builds ({len(problems)} mismatched "
                         f"keys): {shown}{hint}")


def config_changes(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """`key: saved -> current` for every leaf that differs between two nested hyperparameter dicts."""
    changes = []
    for key in sorted(set(saved) | set(current), key=str):
        old, new = saved.get(key, "<unset>"), current.get(key, "<unset>")
        if isinstance(old, dict) and isinstance(new, dict):
            changes += config_changes(old, new, f"{prefix}{key}.")
        elif old != new:
            changes.append(f"{prefix}{key}: {old} -> {new}")
    return changes
