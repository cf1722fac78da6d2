"""Which checkpoint a run resumes from: only the one `ckpt_path` names, a fresh run never overwrites a
folder's last.ckpt, `ckpt_path=last` stays within the run or its task, and a bad path is one line."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, compose_config, tiny_train_overrides

TESTS = ROOT / "tests"
# Printed on every fresh run before: misleading (nothing was resumed) or noise with no action to take.
NOISE = ["was called without a model", "there is no last checkpoint available", "Restoring states from the checkpoint",
         "could not find the monitored key", "litlogger", "LeafSpec"]


def _train(tmp_path, toy_root, vq_dir, run: str, *extra: str) -> subprocess.CompletedProcess:
    overrides = [o for o in tiny_train_overrides(tmp_path, toy_root, vq_dir) if not o.startswith("paths.output_dir")]
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={tmp_path / run}", "num_threads=1",
           "callbacks.image_logger.every_n_epochs=0", *extra]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr[-3000:]
    assert len(lines) == 2 and lines[0].startswith("error: ") and "HYDRA_FULL_ERROR" in lines[1], result.stderr[-3000:]
    return lines[0]


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_fresh_run_is_quiet_and_a_second_into_its_folder_is_refused(tmp_path, toy_root, tiny_vq_dir):
    first = _train(tmp_path, toy_root, tiny_vq_dir, "run", "trainer.max_steps=2")  # shorter than the 4-step epoch
    assert first.returncode == 0, first.stderr[-3000:]
    output = first.stdout + first.stderr
    assert not [n for n in NOISE if n in output], output[-5000:]
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    before, mtime = _digest(last), last.stat().st_mtime_ns

    again = _train(tmp_path, toy_root, tiny_vq_dir, "run", "trainer.max_steps=8")
    error = _one_line_error(again)
    assert f"{tmp_path / 'run'} already holds" in error and f"resume with ckpt_path={last}" in error
    assert "hydra.run.dir" in error
    assert _digest(last) == before and last.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("kind", ["corrupt", "truncated", "directory"])
def test_a_bad_ckpt_path_is_one_line(tmp_path, toy_root, tiny_vq_dir, kind):
    bad = tmp_path / "bad.ckpt"
    if kind == "directory":
        bad.mkdir()
    elif kind == "corrupt":
        bad.write_bytes(os.urandom(4096))
    else:
        torch.save({"state_dict": {"w": torch.zeros(10_000)}, "hyper_parameters": {}}, tmp_path / "whole.ckpt")
        bad.write_bytes((tmp_path / "whole.ckpt").read_bytes()[:20_000])
    error = _one_line_error(_train(tmp_path, toy_root, tiny_vq_dir, "run", f"ckpt_path={bad}"))
    assert str(bad) in error
    assert ("is a directory" if kind == "directory" else "checkpoint") in error and "Traceback" not in error


def _fake_run(run_dir, mtime: int, mode: str = "RUN", debug: str | None = None):
    """A run folder as Hydra leaves it: checkpoints/last.ckpt and .hydra/hydra.yaml with the run's mode and choices."""
    import yaml

    last = run_dir / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "hyper_parameters": {}}, last)
    os.utime(last, (mtime, mtime))
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"mode": mode, "runtime": {"choices": {"debug": debug}}}}))
    return last


def test_ckpt_path_last_is_this_run_folder_else_the_task_newest_single_run(tmp_path, caplog):
    from text_ldm.training import resolve_ckpt_path

    task = tmp_path / "logs" / "train"
    cfg = compose_config("train", [f"paths.root_dir={tmp_path}", f"paths.output_dir={task / 'runs' / 'new'}",
                                   "ckpt_path=last"])
    with pytest.raises(FileNotFoundError, match="no checkpoints/last.ckpt in .* nor in a run of train"):
        resolve_ckpt_path(cfg)
    older = _fake_run(task / "runs" / "a", 1000)
    newer = _fake_run(task / "runs" / "b", 2000)
    _fake_run(task / "multiruns" / "t" / "0", 5000)  # a sweep job
    _fake_run(task / "runs" / "swept", 4000, mode="MULTIRUN")  # a sweep job with a custom hydra.sweep.dir
    _fake_run(task / "runs" / "smoke", 3000, debug="profile")
    with caplog.at_level("INFO"):
        assert resolve_ckpt_path(cfg) == str(newer)
    assert f"resuming the newest run of train, {newer}" in caplog.text

    cfg.paths.output_dir = str(task / "runs" / "a")  # resuming in a run folder that has its own last.ckpt
    with caplog.at_level("INFO"):
        assert resolve_ckpt_path(cfg) == str(older)
    assert f"this run folder's {older}" in caplog.text


def test_debug_fast_writes_no_checkpoint(tmp_path, toy_root, tiny_vq_dir):
    from text_ldm.training import train

    train(compose_config("train", [*tiny_train_overrides(tmp_path, toy_root, tiny_vq_dir), "debug=fast"]))
    assert not list(tmp_path.rglob("*.ckpt"))
