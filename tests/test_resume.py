"""Exact resume: a run stopped (SIGKILL, SIGTERM, a NaN, max_steps mid-epoch or at an epoch end, max_epochs) and resumed trains
what an uninterrupted one does, bit for bit; a kill in the middle of writing last.ckpt leaves the previous one
loadable. Real subprocesses, real signals."""
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
# 32 images at batch 8 = 4 steps per epoch, 2 epochs. A fixed schedule length: runs stopped early share it.
STEPS, KILL_AT = 8, 3


def _train_cmd(tmp_path, toy_root, vq_dir, run: str, *extra: str) -> list[str]:
    overrides = [o for o in tiny_train_overrides(tmp_path, toy_root, vq_dir) if not o.startswith("paths.output_dir")]
    return [sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={tmp_path / run}", "num_threads=1",
            "trainer.max_epochs=2", "callbacks.image_logger.every_n_epochs=0", "model/lr_scheduler=warmup_cosine",
            "model.lr_scheduler.num_warmup_steps=2", f"model.lr_scheduler.num_training_steps={STEPS}", *extra]


def _spawn(cmd, tmp_path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=env)


def _run(cmd, tmp_path, returncode: int = 0) -> str:
    proc = _spawn(cmd, tmp_path)
    log = proc.communicate(timeout=600)[0]
    assert proc.returncode == returncode, log[-3000:]
    return log


def _assert_same(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        assert torch.equal(a[key], b[key]), f"{what}: {key} differs"


def _losses(run_dir) -> dict[int, str]:
    rows = [row for f in (run_dir / "csv").rglob("metrics.csv") for row in csv.DictReader(f.open())]
    return {int(row["step"]): row["train/loss"] for row in rows if row.get("train/loss")}


def _assert_resumed_matches(straight, first, resumed) -> None:
    """The first part and its resumption trained what the straight run did: same losses at every step, the
    same weights, EMA, AdamW moments and schedule at the end, bit for bit."""
    a = load_checkpoint(straight / "checkpoints" / "last.ckpt")
    b = load_checkpoint(resumed / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == STEPS
    _assert_same(a["current_model_state"], b["current_model_state"], "raw weights")
    _assert_same(a["state_dict"], b["state_dict"], "EMA weights")
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        _assert_same(sa, sb, "AdamW moments")
    assert a["lr_schedulers"] == b["lr_schedulers"]
    expected, before, after = _losses(straight), _losses(first), _losses(resumed)
    assert before and after and max(before) < min(after), "the resumed run trained only the remaining steps"
    assert {**before, **after} == expected


@pytest.fixture(scope="module")
def straight(tmp_path_factory, toy_root, tiny_vq_dir):
    """Two epochs, uninterrupted."""
    tmp_path = tmp_path_factory.mktemp("straight")
    _run(_train_cmd(tmp_path, toy_root, tiny_vq_dir, "run"), tmp_path)
    return tmp_path / "run"


@pytest.mark.slow
def test_killed_and_resumed_run_matches_an_uninterrupted_one_bit_for_bit(tmp_path, toy_root, tiny_vq_dir, straight):
    killed = _train_cmd(tmp_path, toy_root, tiny_vq_dir, "killed", "callbacks.last_checkpoint.every_n_train_steps=1",
                        "+callbacks.kill._target_=probe_callbacks.SigkillAtStep", f"+callbacks.kill.step={KILL_AT}")
    _run(killed, tmp_path, returncode=-signal.SIGKILL)
    saved = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert load_checkpoint(saved)["global_step"] == KILL_AT
    state = load_checkpoint(saved)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert state == [{"epoch": 0, "batches": KILL_AT}], "the train loader's position was not saved"

    resumed_log = _run(_train_cmd(tmp_path, toy_root, tiny_vq_dir, "resumed", f"ckpt_path={saved}"), tmp_path)
    assert "not resumable" not in resumed_log  # Lightning's warning for loaders without state
    _assert_resumed_matches(straight, tmp_path / "killed", tmp_path / "resumed")


@pytest.mark.slow
@pytest.mark.parametrize("stop, resume, returncode", [
    (["trainer.max_steps=3"], [f"trainer.max_steps={STEPS}"], 0),  # mid-epoch: the rest of epoch 0 is to come
    (["trainer.max_steps=4"], [f"trainer.max_steps={STEPS}"], 0),  # at epoch 0's end, under max_steps
    (["trainer.max_epochs=1"], [], 0),  # at epoch 0's end, epochs only
    (["+callbacks.stop._target_=probe_callbacks.SigtermSignalAtStep", "+callbacks.stop.step=3"], [], 143),
    (["+callbacks.stop._target_=probe_callbacks.NaNAtStep", "+callbacks.stop.step=3"], [], 1),  # stopped before step 3
], ids=["max_steps_mid_epoch", "max_steps_at_epoch_end", "max_epochs", "sigterm", "nan"])
def test_a_stopped_run_resumes_exactly(tmp_path, toy_root, tiny_vq_dir, straight, stop, resume, returncode):
    _run(_train_cmd(tmp_path, toy_root, tiny_vq_dir, "run", *stop), tmp_path, returncode)
    saved = tmp_path / "run" / "checkpoints" / "last.ckpt"
    _run(_train_cmd(tmp_path, toy_root, tiny_vq_dir, "resumed", *resume, f"ckpt_path={saved}"), tmp_path)
    _assert_resumed_matches(straight, tmp_path / "run", tmp_path / "resumed")


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


def test_a_seeded_run_does_not_depend_on_whether_its_latents_were_cached(train_cfg, tmp_path):
    from text_ldm.training import train

    train_cfg.trainer.max_steps = 2
    train_cfg.callbacks.image_logger = None
    weights = []
    for run in ("cold", "warm"):  # the first builds the latent cache, the second reads it
        train_cfg.paths.output_dir = str(tmp_path / run)
        train(train_cfg)
        weights.append(load_checkpoint(tmp_path / run / "checkpoints" / "last.ckpt")["current_model_state"])
    _assert_same(*weights, "raw weights")
