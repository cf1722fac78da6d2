"""Exact resume and kills: N steps straight == N/2, SIGKILL, resume N/2 (bit for bit), and a kill
in the middle of writing last.ckpt leaves the previous one loadable. Real subprocesses, real signals."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import ROOT, tiny_train_overrides
from text_ldm.utils.checkpoint_io import load_checkpoint

TESTS = ROOT / "tests"
STEPS, KILL_AT = 6, 3  # 32 images at batch 8 = 4 steps per epoch: the kill lands mid-epoch 0


def _train_cmd(tmp_path, toy_root, vq_dir, run: str, *extra: str) -> list[str]:
    overrides = [o for o in tiny_train_overrides(tmp_path, toy_root, vq_dir) if not o.startswith("paths.output_dir")]
    return [sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={tmp_path / run}", "num_threads=1",
            f"trainer.max_steps={STEPS}", "trainer.max_epochs=-1", "callbacks.image_logger.every_n_epochs=0",
            "callbacks.last_checkpoint.every_n_train_steps=1",
            "model/lr_scheduler=warmup_cosine", "model.lr_scheduler.num_warmup_steps=2", *extra]


def _spawn(cmd, tmp_path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=env)


def _assert_same(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        assert torch.equal(a[key], b[key]), f"{what}: {key} differs"


@pytest.mark.slow
def test_killed_and_resumed_run_matches_an_uninterrupted_one_bit_for_bit(tmp_path, toy_root, tiny_vq_dir):
    # Its own latent cache: two processes building one cache at once race on its final rename.
    straight = _spawn(_train_cmd(tmp_path, toy_root, tiny_vq_dir, "straight", f"paths.cache_dir={tmp_path / 'cache2'}"),
                      tmp_path)
    killed = _spawn(_train_cmd(tmp_path, toy_root, tiny_vq_dir, "killed", "+callbacks.kill._target_=probe_callbacks.SigkillAtStep",
                               f"+callbacks.kill.step={KILL_AT}"), tmp_path)
    killed_log = killed.communicate(timeout=600)[0]
    assert killed.returncode == -signal.SIGKILL, killed_log[-3000:]
    saved = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert load_checkpoint(saved)["global_step"] == KILL_AT
    state = load_checkpoint(saved)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert state == [{"epoch": 0, "batches": KILL_AT}], "the train loader's position was not saved"

    resumed = _spawn(_train_cmd(tmp_path, toy_root, tiny_vq_dir, "resumed", f"ckpt_path={saved}"), tmp_path)
    straight_log = straight.communicate(timeout=600)[0]
    resumed_log = resumed.communicate(timeout=600)[0]
    assert straight.returncode == 0, straight_log[-3000:]
    assert resumed.returncode == 0, resumed_log[-3000:]
    assert "not resumable" not in resumed_log  # Lightning's warning for loaders without state

    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == STEPS
    _assert_same(a["current_model_state"], b["current_model_state"], "raw weights")
    _assert_same(a["state_dict"], b["state_dict"], "EMA weights")
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        _assert_same(sa, sb, "AdamW moments")
    assert a["lr_schedulers"] == b["lr_schedulers"]
    # The resumed run trained only the remaining steps: its metrics start after the saved step.
    rows = [row for f in (tmp_path / "resumed" / "csv").rglob("metrics.csv") for row in csv.DictReader(f.open())]
    steps = [int(row["step"]) for row in rows if row.get("train/loss")]
    assert steps and min(steps) >= KILL_AT


SAVE_SCRIPT = textwrap.dedent("""
    import os, sys, time, torch
    from text_ldm.utils.checkpoint_io import AtomicCheckpointIO
    io = AtomicCheckpointIO()
    target = sys.argv[1]
    io.save_checkpoint({"state_dict": {"w": torch.zeros(4)}, "hyper_parameters": {}, "global_step": 1}, target)
    real_fsync = os.fsync
    def slow_fsync(fd):  # a slow disk: the bytes are written, the rename has not happened yet
        real_fsync(fd)
        print("writing", flush=True)
        time.sleep(120)
    os.fsync = slow_fsync
    io.save_checkpoint({"state_dict": {"w": torch.ones(1_000_000)}, "hyper_parameters": {}, "global_step": 2}, target)
""")


def test_sigkill_during_checkpoint_save_keeps_the_previous_last_ckpt(tmp_path):
    target = tmp_path / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", SAVE_SCRIPT, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        partial = [p for p in tmp_path.iterdir() if p.name != "last.ckpt"]
        assert partial, "the second save should be in flight in a temporary file"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    checkpoint = load_checkpoint(target)
    assert checkpoint["global_step"] == 1 and torch.equal(checkpoint["state_dict"]["w"], torch.zeros(4))
