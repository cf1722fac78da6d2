"""`callbacks.time_budget.minutes`: the run is shortened to fit, the LR schedule still ends with it, and
a resumed run keeps the budget. Time is faked (probe_callbacks.FakeTime: each batch "takes" 2.5 s), so
the plans are exact."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
from diffusers.optimization import get_cosine_schedule_with_warmup
from lightning.pytorch.utilities.exceptions import SIGTERMException

from conftest import ROOT, compose_config, tiny_train_overrides
from text_ldm.callbacks.time_budget import TrainingTimeBudget
from text_ldm.training import train
from text_ldm.utils.checkpoint_io import load_checkpoint
from text_ldm.utils.optim import warmup_cosine_schedule

# 32 images at batch 8: 4 steps per epoch; at 2.5 s a batch an epoch is 10 s, so 30 s hold 3 of the 6 epochs.
FAKE_TIME = ["+callbacks.fake_time._target_=probe_callbacks.FakeTime", "+callbacks.fake_time.seconds_per_batch=2.5",
             "+callbacks.time_budget.clock._target_=probe_callbacks.fake_now", "+callbacks.time_budget.clock._partial_=true"]
BUDGET = ["callbacks.time_budget.minutes=0.5", "trainer.max_epochs=6", "model/lr_scheduler=warmup_cosine",
          "model.lr_scheduler.num_warmup_steps=2", "trainer.limit_val_batches=0", "callbacks.model_checkpoint.monitor=null",
          "callbacks.image_logger.every_n_epochs=0"]


def _lrs(scheduler, steps: int) -> list[float]:
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


def _sgd():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def test_warmup_cosine_is_diffusers_schedule_with_a_movable_saved_end():
    ours, theirs = warmup_cosine_schedule(_sgd(), 10, 100), get_cosine_schedule_with_warmup(_sgd(), 10, 100)
    assert _lrs(ours, 100) == pytest.approx(_lrs(theirs, 100), abs=1e-12)

    moved = warmup_cosine_schedule(_sgd(), 10, 100)
    _lrs(moved, 30)
    moved.lr_lambdas[0].replan(60)
    assert _lrs(moved, 31)[-1] == pytest.approx(0.0, abs=1e-12)  # the LR at step 60: the schedule's new end
    resumed = warmup_cosine_schedule(_sgd(), 10, 100)  # as configure_optimizers builds it on resume
    resumed.load_state_dict(moved.state_dict())
    assert resumed.lr_lambdas[0].num_training_steps == 60


def test_bad_budgets_are_refused(tmp_path, toy_root, tiny_vq_dir):
    with pytest.raises(ValueError, match="minutes=0"):
        TrainingTimeBudget(minutes=0)
    with pytest.raises(ValueError, match="window"):
        TrainingTimeBudget(minutes=1, window=0)
    with pytest.raises(ValueError, match="ends_by=-5"):
        TrainingTimeBudget(minutes=1, ends_by=-5)
    with pytest.raises(ValueError, match="warn_below_steps=0"):
        TrainingTimeBudget(minutes=1, warn_below_steps=0)
    endless = _budget_cfg(tmp_path, toy_root, tiny_vq_dir, "endless", "trainer.max_epochs=-1", "trainer.max_steps=4")
    with pytest.raises(ValueError, match="set trainer.max_epochs"):
        train(endless)
    assert not (tmp_path / "endless" / "checkpoints" / "last.ckpt").exists()


def _budget_cfg(tmp_path, toy_root, tiny_vq_dir, run: str, *extra: str):
    cfg = compose_config("train", tiny_train_overrides(tmp_path, toy_root, tiny_vq_dir) + BUDGET + FAKE_TIME + list(extra))
    cfg.paths.output_dir = str(tmp_path / run)
    return cfg


def _end_state(path) -> tuple[int, int, float, dict]:
    checkpoint = load_checkpoint(path)
    schedule = checkpoint["lr_schedulers"][0]
    budget = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("TrainingTimeBudget"))
    return checkpoint["global_step"], schedule["lr_lambdas"][0]["num_training_steps"], schedule["_last_lr"][0], budget


def test_budget_shortens_the_run_and_the_schedule_ends_with_it(tmp_path, toy_root, tiny_vq_dir, caplog):
    with caplog.at_level("INFO"):
        train(_budget_cfg(tmp_path, toy_root, tiny_vq_dir, "straight"))
    step, schedule_end, last_lr, budget = _end_state(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    assert step == 12 and schedule_end == 12, "3 epochs of 4 steps fit in 30 s, not the configured 6"
    assert last_lr == 0.0  # the cosine reached its end: the run was not cut mid-schedule
    assert budget["planned_epochs"] == 3 and budget["used_s"] == pytest.approx(30.0)
    assert "3 of 6 epochs (12 steps)" in caplog.text and "trained 12 steps (3 of the 6 epochs) in 30 s" in caplog.text

    # Resuming a run the budget ended trains nothing more (the plan is in the checkpoint).
    again = _budget_cfg(tmp_path, toy_root, tiny_vq_dir, "straight")
    again.ckpt_path = str(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    train(again)
    assert load_checkpoint(again.ckpt_path)["global_step"] == 12

    # With the budget off it goes on to the configured 6 epochs, and the schedule's end moves back there.
    longer = _budget_cfg(tmp_path, toy_root, tiny_vq_dir, "straight", "callbacks.time_budget.minutes=null")
    longer.ckpt_path = again.ckpt_path
    with caplog.at_level("INFO"):
        train(longer)
    step, schedule_end, last_lr, _ = _end_state(longer.ckpt_path)
    assert (step, schedule_end, last_lr) == (24, 24, 0.0)
    assert "budget off: the saved plan of 3 epochs no longer holds" in caplog.text


def test_a_run_that_max_steps_ends_inside_the_budget_is_not_called_short(tmp_path, toy_root, tiny_vq_dir, caplog):
    """`experiment=demo`'s shape: 30 s hold 12 steps, but max_steps=10 ends the run first; it ran its whole length."""
    with caplog.at_level("INFO"):
        train(_budget_cfg(tmp_path, toy_root, tiny_vq_dir, "capped", "trainer.max_steps=10"))
    step, schedule_end, last_lr, _ = _end_state(tmp_path / "capped" / "checkpoints" / "last.ckpt")
    assert (step, schedule_end, last_lr) == (10, 10, 0.0)
    assert "(10 steps)" in caplog.text and "trains them all" not in caplog.text


def test_the_plan_may_end_mid_epoch_and_a_resumed_run_stops_there(tmp_path, toy_root, tiny_vq_dir, caplog):
    # 36 s: after epoch 0 (10 s, 4 steps) 26 s hold 10 more steps, so the run ends 2 steps into epoch 3
    with caplog.at_level("INFO"):
        train(_budget_cfg(tmp_path, toy_root, tiny_vq_dir, "partial", "callbacks.time_budget.minutes=0.6"))
    saved = tmp_path / "partial" / "checkpoints" / "last.ckpt"
    step, schedule_end, last_lr, budget = _end_state(saved)
    assert (step, schedule_end, last_lr) == (14, 14, 0.0)
    assert budget["planned_steps"] == 14 and budget["planned_epochs"] == 4 and budget["used_s"] == pytest.approx(35.0)
    assert "3.5 of 6 epochs (14 steps)" in caplog.text and "trained 14 steps (3.5 of the 6 epochs)" in caplog.text
    again = _budget_cfg(tmp_path, toy_root, tiny_vq_dir, "partial", "callbacks.time_budget.minutes=0.6")
    again.ckpt_path = str(saved)
    train(again)
    assert load_checkpoint(saved)["global_step"] == 14


def test_ends_by_cuts_the_budget_on_the_wall_clock(tmp_path, toy_root, tiny_vq_dir, caplog):
    """`make demo`'s deadline: 30 s of budget, but the wall clock says stop at 22 s. After epoch 0 (10 s) 12 s
    are left, 4 steps; after epoch 1 (20 s) 2 s, less than a step: the run ends at 8 steps, not the budget's 12."""
    wall = ["callbacks.time_budget.ends_by=22", "+callbacks.time_budget.wall_clock._target_=probe_callbacks.fake_now",
            "+callbacks.time_budget.wall_clock._partial_=true"]
    with caplog.at_level("INFO"):
        train(_budget_cfg(tmp_path, toy_root, tiny_vq_dir, "deadline", *wall))
    step, schedule_end, last_lr, budget = _end_state(tmp_path / "deadline" / "checkpoints" / "last.ckpt")
    assert (step, schedule_end, last_lr, budget["planned_epochs"]) == (8, 8, 0.0, 2)
    assert "ends by" in caplog.text and "trained 8 steps" in caplog.text


def test_the_plan_keeps_back_the_final_validation(tmp_path, toy_root, tiny_vq_dir):
    """36 s, 2.5 s a batch and 3 s a validation: epoch 0 takes 13 s for 4 steps. Counting the validation the run
    still makes where it stops, 36 - 13 - 3 = 20 s hold 6 more steps (10 in all), ending at 26 + 5 + 3 = 34 s;
    without it the plan was 11 steps, ending at 36.5 s."""
    cfg = _budget_cfg(tmp_path, toy_root, tiny_vq_dir, "validated", "callbacks.time_budget.minutes=0.6",
                      "trainer.limit_val_batches=1", "+callbacks.fake_time.seconds_per_validation=3.0")
    train(cfg)
    from probe_callbacks import FakeTime
    step, schedule_end, _, budget = _end_state(tmp_path / "validated" / "checkpoints" / "last.ckpt")
    assert (step, schedule_end) == (10, 10)
    assert FakeTime.now == pytest.approx(34.0) and FakeTime.now <= 36.0


def test_preempted_run_resumes_with_the_time_it_had_left(tmp_path, toy_root, tiny_vq_dir):
    first = _budget_cfg(tmp_path, toy_root, tiny_vq_dir, "preempted", "+callbacks.stop._target_=probe_callbacks.SigtermAtStep",
                        "+callbacks.stop.step=6")
    with pytest.raises(SIGTERMException):
        train(first)
    saved = tmp_path / "preempted" / "checkpoints" / "last.ckpt"
    assert load_checkpoint(saved)["global_step"] == 6
    resumed = _budget_cfg(tmp_path, toy_root, tiny_vq_dir, "preempted")
    resumed.ckpt_path = str(saved)
    train(resumed)
    step, schedule_end, last_lr, budget = _end_state(saved)
    # Epoch 0's 10 s came with the checkpoint; without them the resumed run would plan 4 epochs.
    assert (step, schedule_end, last_lr, budget["planned_epochs"]) == (12, 12, 0.0, 3)


@pytest.mark.parametrize("warn_below, warns", [(13, True), (12, False)])
def test_a_run_cut_short_of_its_recipes_steps_says_so(tmp_path, toy_root, tiny_vq_dir, warn_below, warns):
    """The budget ends the run at 12 steps (as in the test above): under a recipe's 13 it warns, at 12 it does not."""
    cfg = _budget_cfg(tmp_path, toy_root, tiny_vq_dir, "short", f"callbacks.time_budget.warn_below_steps={warn_below}")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        train(cfg)
    said = [str(w.message) for w in record if "warn_below_steps" in str(w.message)]
    assert bool(said) == warns
    if warns:
        assert "trained 12 steps, fewer than the 13" in said[0]


@pytest.mark.parametrize("schedule, warns", [("constant", False), ("diffusers_cosine", True)])
def test_warns_only_about_a_schedule_it_cannot_shorten(tmp_path, toy_root, tiny_vq_dir, schedule, warns):
    overrides = {"constant": ["model/lr_scheduler=constant"],
                 "diffusers_cosine": ["model.lr_scheduler._target_=diffusers.optimization.get_cosine_schedule_with_warmup"]}
    cfg = _budget_cfg(tmp_path, toy_root, tiny_vq_dir, schedule, *overrides[schedule])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        train(cfg)
    said = any("cannot be re-planned" in str(w.message) for w in record)
    assert said == warns


@pytest.mark.slow
def test_ddp_ranks_follow_rank_zeros_plan(tmp_path, toy_root, tiny_vq_dir):
    """Rank 1 runs 3x slower than rank 0 and on its own would stop after 1 epoch; a rank leaving the loop
    early would leave the other waiting in the gradient all-reduce, so both must follow rank 0's plan."""
    overrides = [o for o in tiny_train_overrides(tmp_path, toy_root, tiny_vq_dir) if not o.startswith("paths.output_dir")]
    run_dir = tmp_path / "ddp"
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides, *BUDGET, *FAKE_TIME, "callbacks.time_budget.minutes=0.25",
           "+callbacks.fake_time.rank_slowdown=2.0", "trainer.devices=2", "trainer.strategy=ddp", "trainer.max_epochs=4",
           f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    # 2 steps per epoch per rank at 2.5 s (rank 0): 5 s an epoch, so 15 s hold 3 of the 4 epochs.
    step, schedule_end, last_lr, budget = _end_state(run_dir / "checkpoints" / "last.ckpt")
    assert (step, schedule_end, last_lr, budget["planned_epochs"]) == (6, 6, 0.0, 3)
    assert "3 of 4 epochs" in result.stdout + result.stderr


def test_resumed_with_a_longer_run_the_schedule_ends_with_it(train_cfg, tmp_path, caplog):
    """No budget: a schedule whose end the config leaves to the trainer moves to the resumed run's length, not the
    first run's (whose end was saved), so the LR does not sit at 0 for the added steps."""
    overrides = ["model/lr_scheduler=warmup_cosine", "model.lr_scheduler.num_warmup_steps=1", "trainer.max_epochs=-1",
                 "callbacks.image_logger.every_n_epochs=0", "trainer.limit_val_batches=0"]
    first = compose_config("train", tiny_train_overrides(tmp_path, train_cfg.data.root, train_cfg.vae.pretrained)
                           + overrides + ["trainer.max_steps=3"])
    train(first)
    saved = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert _end_state(saved)[1] == 3
    longer = compose_config("train", tiny_train_overrides(tmp_path, train_cfg.data.root, train_cfg.vae.pretrained)
                            + overrides + ["trainer.max_steps=6", f"ckpt_path={saved}"])
    with caplog.at_level("INFO"):
        train(longer)
    step, schedule_end, last_lr, _ = _end_state(saved)
    assert (step, schedule_end, last_lr) == (6, 6, 0.0)
    assert "it now ends with this run, at step 6" in caplog.text


def test_a_run_the_budget_ended_mid_epoch_resumes_exactly_without_it(tmp_path, toy_root, tiny_vq_dir):
    """36 s end the run 2 steps into epoch 3 (constant LR, so the plan leaves the schedule alone); resumed with
    the budget off it trains the rest of that epoch and the last two, as a run without a budget does."""
    extra = ["model.lr_scheduler=null", "callbacks.time_budget.minutes=null"]
    train(_budget_cfg(tmp_path, toy_root, tiny_vq_dir, "straight", *extra))
    train(_budget_cfg(tmp_path, toy_root, tiny_vq_dir, "cut", "model.lr_scheduler=null", "callbacks.time_budget.minutes=0.6"))
    saved = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    assert load_checkpoint(saved)["global_step"] == 14
    resumed = _budget_cfg(tmp_path, toy_root, tiny_vq_dir, "cut", *extra)
    resumed.ckpt_path = str(saved)
    train(resumed)
    a, b = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.ckpt"), load_checkpoint(saved)
    assert a["global_step"] == b["global_step"] == 24
    for key in ("current_model_state", "state_dict"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), f"{key} differs"
