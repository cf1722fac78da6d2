"""`python train.py trainer.accelerator=cpu trainer.devices=2 trainer.strategy=ddp` on 2 CPU processes."""
from __future__ import annotations

import subprocess
import sys

import torch

from conftest import ROOT, tiny_train_overrides


def test_ddp_on_two_cpu_processes(tmp_path, toy_root, tiny_vq_dir):
    overrides = [o for o in tiny_train_overrides(tmp_path, toy_root, tiny_vq_dir) if not o.startswith("paths.output_dir")]
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides, "trainer.devices=2", "trainer.strategy=ddp",
           "trainer.max_epochs=2", "callbacks.image_logger.every_n_epochs=0", f"hydra.run.dir={run_dir}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "2 device(s)" in result.stdout + result.stderr
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # 32 training images, 8 per device, 2 devices: 2 optimiser steps per epoch.
    assert checkpoint["global_step"] == 4
    assert len(list(tmp_path.rglob("last.ckpt"))) == 1, "the second rank wrote its own output directory"
