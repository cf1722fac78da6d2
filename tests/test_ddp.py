"""`python train.py trainer.accelerator=cpu trainer.devices=2 trainer.strategy=ddp` on 2 CPU processes."""
from __future__ import annotations

import os
import subprocess
import sys

import torch

from conftest import ROOT, tiny_train_overrides


def test_ddp_on_two_cpu_processes(tmp_path, toy_root, tiny_vq_dir):
    overrides = [o for o in tiny_train_overrides(tmp_path, toy_root, tiny_vq_dir) if not o.startswith("paths.output_dir")]
    run_dir, probe = tmp_path / "run", tmp_path / "probe"
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides, "trainer.devices=2", "trainer.strategy=ddp",
           "trainer.max_epochs=2", "callbacks.image_logger.every_n_epochs=1", f"hydra.run.dir={run_dir}",
           "+callbacks.record._target_=probe_callbacks.RecordRank", f"+callbacks.record.out_dir={probe}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, result.stderr[-4000:]
    assert "2 device(s)" in output
    # The frozen text encoder and autoencoder carry no trainable parameters: DDP never waits on them.
    assert "find_unused_parameters" not in output and "unused parameters" not in output
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # 32 training images, 8 per device, 2 devices: 2 optimiser steps per epoch.
    assert checkpoint["global_step"] == 4
    assert len(list(tmp_path.rglob("last.ckpt"))) == 1, "the second rank wrote its own output directory"
    # The image logger samples on rank 0 only; trainer.log_dir is a collective, so asking for it on
    # rank 0 alone used to hang the run at the first grid.
    assert sorted(p.name for p in run_dir.rglob("images/samples_step*.png")) == ["samples_step000002.png",
                                                                                "samples_step000004.png"]

    ranks = [torch.load(probe / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for epoch in range(2):  # each epoch, the ranks' shards are disjoint and cover 32 images
        shards = [set(r["seen"][epoch * 16:(epoch + 1) * 16]) for r in ranks]
        assert len(shards[0]) == len(shards[1]) == 16 and not shards[0] & shards[1]
    assert ranks[0]["seen"][:16] != ranks[0]["seen"][16:], "the shuffle order did not change between epochs"
    # SharedTextMemo: both ranks' memos hold every training caption either rank drew, with the same
    # embedding (validation and preview prompts stay with the rank that encoded them)
    drawn = set(ranks[0]["captions"]) | set(ranks[1]["captions"])
    assert set(ranks[0]["captions"]) != set(ranks[1]["captions"])
    assert drawn <= ranks[0]["memo"].keys() and drawn <= ranks[1]["memo"].keys()
    for caption in drawn:
        assert torch.equal(ranks[0]["memo"][caption], ranks[1]["memo"][caption])
    assert ranks[0]["encoded"] + ranks[1]["encoded"] < len(ranks[0]["memo"]) + len(ranks[1]["memo"])
    assert ranks[0]["unet"].keys() == ranks[1]["unet"].keys()
    for key, value in ranks[0]["unet"].items():
        assert torch.equal(value, ranks[1]["unet"][key]), f"{key} differs across ranks"
