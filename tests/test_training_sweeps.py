"""W&B offline, Hydra multirun and the Optuna sweep, on the real entry point and tiny sizes."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT, compose_config, tiny_train_overrides
from text_ldm.training import train


def test_wandb_offline_logs_metrics_config_and_sample_grids(tmp_path, toy_root, tiny_vq_dir, monkeypatch):
    pytest.importorskip("wandb")
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("WANDB_MODE", "offline")  # and nothing else
    overrides = [o for o in tiny_train_overrides(tmp_path, toy_root, tiny_vq_dir) if not o.startswith("logger=")]
    train_cfg = compose_config("train", [*overrides, "logger=[csv,wandb]"])
    train(train_cfg)
    import wandb

    assert wandb.run is None, "the W&B run was left open: a multirun would log into it"
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list((runs[0] / "files" / "media" / "images").rglob("samples_*.png")), "no sample grid logged"
    rows = list(csv.DictReader(next((tmp_path / "run" / "csv").rglob("metrics.csv")).open()))
    values = [[r[k] for r in rows if r.get(k)][-1] for k in ("train/loss", "val/loss")]  # the CSV logger's copy
    log_file = next(runs[0].glob("run-*.wandb"))
    for _ in range(60):  # W&B's service process may still be flushing its transaction log
        log = log_file.read_bytes()
        if all(v.encode() in log for v in values):
            break
        time.sleep(0.5)
    for value in values:
        assert value.encode() in log, f"the logged value {value} is missing from the W&B run"
    for key in (b"train/loss", b"val/loss", b"lr-AdamW", b"params/trainable", b"noise_scheduler", b"snr_gamma"):
        assert key in log, f"{key.decode()} missing from the W&B run"


@pytest.mark.slow
def test_multirun_two_jobs_separate_folders(tmp_path, toy_root, tiny_vq_dir):
    overrides = [o for o in tiny_train_overrides(tmp_path, toy_root, tiny_vq_dir) if not o.startswith("paths.output_dir")]
    sweep_dir = tmp_path / "sweep"
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", *overrides, "model.optimizer.lr=1e-4,3e-4",
           "callbacks.image_logger.every_n_epochs=0", "trainer.limit_train_batches=2", f"hydra.sweep.dir={sweep_dir}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    for job, lr in (("0", "0.0001"), ("1", "0.0003")):
        assert (sweep_dir / job / "checkpoints" / "last.ckpt").is_file()
        assert f"model.optimizer.lr={lr}" in (sweep_dir / job / ".hydra" / "overrides.yaml").read_text()


@pytest.mark.slow
def test_optuna_sweep_runs_two_trials(tmp_path, toy_root, tiny_vq_dir):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    overrides = [o for o in tiny_train_overrides(tmp_path, toy_root, tiny_vq_dir) if not o.startswith("paths.output_dir")]
    sweep_dir = tmp_path / "optuna"
    cmd = [sys.executable, str(ROOT / "train.py"), "hparams_search=optuna", *overrides, "hydra.sweeper.n_trials=2",
           "hydra.sweeper.sampler.n_startup_trials=2", "callbacks.image_logger.every_n_epochs=0",
           "trainer.limit_train_batches=2", f"hydra.sweep.dir={sweep_dir}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    results = (sweep_dir / "optimization_results.yaml").read_text()
    assert "best_params" in results and "model.optimizer.lr" in results and "best_value" in results
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()) == ["0", "1"]


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=8", "trainer.num_nodes=2"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (8, 8, 2)


def test_wandb_without_a_key_or_offline_mode_is_refused_with_the_ways_out(tmp_path):
    pytest.importorskip("wandb")
    from text_ldm.utils.instantiate import check_wandb_ready

    with pytest.raises(ValueError, match=r"logger\.wandb: no W&B API key .*`wandb login`.*WANDB_MODE=offline or "
                                         r"logger\.wandb\.offline=true"):
        check_wandb_ready("wandb", offline=False, environ={}, home=tmp_path)
    check_wandb_ready("wandb", offline=True, environ={}, home=tmp_path)
    check_wandb_ready("wandb", offline=False, environ={"WANDB_MODE": "offline"}, home=tmp_path)
    check_wandb_ready("wandb", offline=False, environ={"WANDB_API_KEY": "k" * 40}, home=tmp_path)
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    check_wandb_ready("wandb", offline=False, environ={}, home=tmp_path)

    # The entry point: one line, before any data or model is built.
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k not in ("HYDRA_FULL_ERROR", "NETRC")}
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "logger=wandb", f"paths.root_dir={tmp_path}",
                             f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path, env={**env, "HOME": str(tmp_path / "home")})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 2 and lines[0].startswith("error: logger.wandb: no W&B API key"), \
        result.stderr[-3000:]
