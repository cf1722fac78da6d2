"""Fault injection: NaN loss, SIGTERM mid-training, a full disk. Real training runs, real signals."""
from __future__ import annotations

import errno
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import open_dict
from PIL import Image

from conftest import ROOT, compose_config, tiny_train_overrides
from text_ldm.callbacks.nonfinite_loss import NonFiniteLossError
from text_ldm.training import train
from text_ldm.utils.checkpoint_io import AtomicCheckpointIO, load_checkpoint


class InjectNaN(Callback):
    """Test-only: corrupts one batch's latents, as a bad cache or an fp16 overflow would."""

    def __init__(self, at_batch: int):
        self.at_batch = at_batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.at_batch:
            batch["latent"][0, 0, 0, 0] = float("nan")


def _finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_nan_loss_stops_with_step_and_lr_and_keeps_finite_weights(train_cfg, tmp_path):
    with open_dict(train_cfg):
        train_cfg.callbacks.inject = {"_target_": "test_faults.InjectNaN", "at_batch": 2}
    lr = train_cfg.model.optimizer.lr
    with pytest.raises(NonFiniteLossError, match=rf"loss is nan at global step 2 \(lr {lr:.3g}\)") as err:
        train(train_cfg)
    assert "trainer.detect_anomaly=true" in str(err.value)
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 2
    assert _finite(checkpoint["state_dict"])


def test_failure_before_training_saves_nothing(train_cfg, tmp_path):
    train_cfg.data.root = str(tmp_path / "missing")
    with pytest.raises(Exception):
        train(train_cfg)
    assert not list(tmp_path.rglob("*.ckpt"))


def test_sigterm_saves_a_checkpoint_before_exit(tmp_path, toy_root, tiny_vq_dir):
    """What SLURM sends before preemption: the job writes last.ckpt mid-epoch and exits 143."""
    run_dir = tmp_path / "run"
    overrides = [o for o in tiny_train_overrides(tmp_path, toy_root, tiny_vq_dir) if not o.startswith("paths.output_dir")]
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides, "trainer.max_epochs=1000",
           "callbacks.image_logger.every_n_epochs=0", "callbacks.last_checkpoint=null",
           f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoints = run_dir / "checkpoints"
    deadline = time.time() + 300
    while not list(checkpoints.glob("epoch*.ckpt")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    first_epoch_end = load_checkpoint(next(checkpoints.glob("epoch*.ckpt")))["global_step"]
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "stopped by SIGTERM" in stderr
    saved = load_checkpoint(checkpoints / "last.ckpt")
    assert saved["global_step"] > first_epoch_end
    assert _finite(saved["state_dict"])


def _fail_after(n_ok: int, real):
    """A writer that works n_ok times, then fills the disk halfway through the next write."""
    calls = {"n": 0}

    def write(obj, target, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= n_ok:
            return real(obj, target, *args, **kwargs)
        handle = target if hasattr(target, "write") else open(target, "wb")
        handle.write(b"\0" * 1024)
        raise OSError(errno.ENOSPC, "No space left on device")

    return write


def test_disk_full_during_checkpoint_save_keeps_the_previous_one(train_cfg, tmp_path, monkeypatch):
    train_cfg.trainer.max_epochs = 2
    train_cfg.callbacks.image_logger = None
    # Each epoch end writes the best checkpoint and last.ckpt: the third save (epoch 2) fails.
    monkeypatch.setattr(torch, "save", _fail_after(2, torch.save))
    with pytest.raises(OSError, match="no space left on the device while writing .*ckpt; nothing was replaced"):
        train(train_cfg)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert load_checkpoint(checkpoints / "last.ckpt")["global_step"] == 4
    assert not [p for p in checkpoints.iterdir() if ".tmp-" in p.name]


def test_disk_full_while_writing_samples_keeps_earlier_images(tmp_path, monkeypatch):
    from text_ldm.utils.atomic import atomic_save_png

    images = [Image.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(3)]
    atomic_save_png(images[0], tmp_path / "0000_00.png")
    atomic_save_png(images[1], tmp_path / "grid.png")
    monkeypatch.setattr(Image.Image, "save", _fail_after(0, Image.Image.save))
    with pytest.raises(OSError, match="grid.png; nothing was replaced"):
        atomic_save_png(images[2], tmp_path / "grid.png")
    assert Image.open(tmp_path / "grid.png").getpixel((0, 0)) == (40, 0, 0)
    assert Image.open(tmp_path / "0000_00.png").getpixel((0, 0)) == (0, 0, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0000_00.png", "grid.png"]


def test_cli_reports_a_user_error_in_one_line(tmp_path):
    missing = tmp_path / "nope.ckpt"
    result = subprocess.run([sys.executable, str(ROOT / "sample.py"), f"ckpt={missing}", "prompt=a face",
                             f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert f"error: ckpt={missing} does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_sampler_is_refused_before_the_checkpoint_loads():
    from text_ldm.sampling.app import run

    with pytest.raises(ValueError, match="sampler='nope' is unknown; choose one of .*'flow_euler'"):
        run(compose_config("sample", ["ckpt=/nonexistent.ckpt", "prompt=a face", "sampler=nope"]))


def test_resume_from_an_incompatible_config_lists_the_keys(train_cfg, tmp_path):
    train_cfg.callbacks.image_logger = None
    train(train_cfg)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    other = compose_config("train", [*tiny_train_overrides(tmp_path, train_cfg.data.root, train_cfg.vae.pretrained),
                                     "model.unet.block_out_channels=[16,16]", f"ckpt_path={last}",
                                     f"paths.output_dir={tmp_path / 'other'}"])
    with pytest.raises(ValueError, match=r"does not match the model its config builds \(\d+ mismatched keys\): "
                                         r".*unet\.conv_in\.weight: checkpoint \(8, 3, 3, 3\) vs model \(16, 3, 3, 3\)"
                                         r".*trained with a different config \(unet\.block_out_channels: \[8, 16\] -> "
                                         r"\[16, 16\]\).*make clean-demo"):
        train(other)

    # Same shapes, another lr and noise offset: the weights load, and the run is told which change applies and
    # that the lr does not (Lightning restores the optimiser's param groups from the checkpoint).
    from hydra.utils import instantiate

    from text_ldm.utils.checkpoint_io import load_checkpoint

    relearned = instantiate(compose_config("train", [*tiny_train_overrides(tmp_path, train_cfg.data.root,
                                                                            train_cfg.vae.pretrained),
                                                     "model.optimizer.lr=0.5", "model.noise_offset=0.05"]).model)
    with pytest.warns(UserWarning) as record:
        relearned.on_load_checkpoint(load_checkpoint(last))
    said = [str(w.message) for w in record]
    assert any(m.endswith("differs from the checkpoint's: noise_offset: 0.0 -> 0.05") for m in said), said
    assert any(re.search(r"overrides are ignored: optimizer\.lr: 0\.0001 -> 0\.5 \(a fresh run", m) for m in said), said
