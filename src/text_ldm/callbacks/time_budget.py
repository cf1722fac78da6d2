"""Fit training into a wall-time budget without cutting the LR schedule short."""
from __future__ import annotations

import math
import time
from collections.abc import Callable

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from text_ldm.utils.optim import TOTAL_STEP_KEYS


class TrainingTimeBudget(Callback):
    """Trains for at most about `minutes` of wall time (null: off), by re-planning the run's length.

    At each epoch end rank 0 measures the seconds per optimiser step over the last `window` epochs
    (validation, previews and checkpoints included), works out how many more steps fit in the time left,
    and broadcasts the plan; every rank then lowers `max_epochs` to the epochs it touches (never above the
    configured ones), stops at the plan's last step (mid-epoch if need be, through `trainer.should_stop`,
    which still validates and checkpoints there) and moves the end of a re-plannable LR schedule
    (`utils/optim.WarmupCosine`) to that step. A slow machine so gets a shorter schedule that still decays
    to its end, where Lightning's `max_time` would stop mid-schedule with the LR still high. The time used
    (up to the save), the plan and the recent timings are saved in the checkpoint: a killed and resumed run
    keeps the same budget, and a run the budget ended is not trained further on resume (unless resumed with
    the budget off or changed: then the schedule's end moves back to the configured epochs).

    `ends_by` (Unix time, optional) also ends the budget at that moment of the wall clock, whichever comes
    first: `make demo` sets it from the moment make started, so the install and the data's time come out of
    the training's and a fast hour trains longer than a slow one. It is not saved: a resumed run takes the one
    it is given. The plan keeps back the last validation's time, as the run still validates where it stops.
    `warn_below_steps` (optional): the steps a recipe needs for the quality it was measured at; a run the
    budget ends short of them warns at its end, so a slow machine's user learns why the samples are weaker.
    `clock` (intervals) and `wall_clock` (for `ends_by`) are for tests.
    """

    def __init__(self, minutes: float | None = None, window: int = 3, ends_by: float | None = None,
                 warn_below_steps: int | None = None, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time):
        if minutes is not None and not minutes > 0:
            raise ValueError(f"callbacks.time_budget.minutes={minutes} must be > 0 (or null: no budget)")
        if window < 1:
            raise ValueError(f"callbacks.time_budget.window={window} must be >= 1 epoch")
        if ends_by is not None and not float(ends_by) > 0:
            raise ValueError(f"callbacks.time_budget.ends_by={ends_by} must be a Unix time (seconds) or null")
        if warn_below_steps is not None and not int(warn_below_steps) >= 1:
            raise ValueError(f"callbacks.time_budget.warn_below_steps={warn_below_steps} must be >= 1 (or null)")
        self.warn_below_steps = None if warn_below_steps is None else int(warn_below_steps)
        self.budget_s = None if minutes is None else 60.0 * float(minutes)
        self.window, self.clock, self.wall_clock = int(window), clock, wall_clock
        self.ends_by = None if ends_by is None else float(ends_by)
        self.validation_s = 0.0  # the last validation's wall time during fit
        self._validation_start: float | None = None
        self.used_s = 0.0  # training seconds so far, earlier (killed) runs of this job included
        self.recent: list[list[float]] = []  # [seconds, optimiser steps] of the last `window` epochs
        self.planned_epochs: int | None = None  # the epochs the plan touches (its last one may be partial)
        self.planned_steps: int | None = None
        self._saved_budget_s = self.budget_s  # the budget the checkpoint's plan was made under
        self._mark: tuple[float, int] | None = None
        self._configured_epochs: int | None = None
        self._warned_schedule = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        epochs = trainer.fit_loop.max_epochs
        if stage == "fit" and self.budget_s is not None and (epochs is None or epochs < 0):
            raise ValueError("callbacks.time_budget plans epochs: set trainer.max_epochs (the most the run may take)")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._configured_epochs = trainer.fit_loop.max_epochs
        if self.planned_epochs is not None and self._saved_budget_s != self.budget_s:
            self._drop_saved_plan(trainer)
        if self.planned_steps is None:
            self._end_schedule_with_the_run(trainer)
        if self.budget_s is None:
            return
        if self.ends_by is not None and self.ends_by <= self.wall_clock():
            rank_zero_warn(f"time budget: callbacks.time_budget.ends_by has passed ({self.wall_clock() - self.ends_by:.0f} s "
                           "ago): the run stops at its first epoch end")
        if self.planned_epochs is not None:  # resumed: the saved plan holds (the schedule's end was saved too)
            trainer.fit_loop.max_epochs = min(self._configured_epochs, self.planned_epochs)
            if self.planned_steps is None:  # a checkpoint from before plans were made in steps
                self.planned_steps = self.planned_epochs * _steps_per_epoch(trainer)
            self._stop_at_plan(trainer)
        self._mark = (self.clock(), trainer.global_step)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validation_start = None if trainer.sanity_checking else self.clock()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._validation_start is not None:
            self.validation_s, self._validation_start = self.clock() - self._validation_start, None

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        self._stop_at_plan(trainer)

    def _stop_at_plan(self, trainer: L.Trainer) -> None:
        if self.budget_s is not None and self.planned_steps is not None and trainer.global_step >= self.planned_steps:
            trainer.should_stop = True

    def _drop_saved_plan(self, trainer: L.Trainer) -> None:
        """Resumed with the budget off or changed: the run may go on to the configured epochs again (the next
        epoch end re-plans under a new budget), so the LR schedule's end moves back to theirs."""
        saved, self.planned_epochs, self.planned_steps = self.planned_epochs, None, None
        if self.budget_s is None:
            self.used_s, self.recent = 0.0, []
        if saved < self._configured_epochs:
            last_step = self._configured_epochs * _steps_per_epoch(trainer)
            self._replan_schedules(trainer, last_step)
            rank_zero_info(f"time budget {'off' if self.budget_s is None else f'now {self.budget_s / 60:g} min'}: the "
                           f"saved plan of {saved} epochs no longer holds; the LR schedule ends at step {last_step} again")

    def _end_schedule_with_the_run(self, trainer: L.Trainer) -> None:
        """No plan in force: a schedule whose end the config leaves to the trainer (null) ends where this run does.
        Resumed with another `trainer.max_steps` or `max_epochs`, its saved end was the earlier run's, and past it
        the LR would stay at 0."""
        config = (getattr(trainer.lightning_module, "hparams", None) or {}).get("lr_scheduler")
        if not hasattr(config, "keys") or not any(key in config and config[key] is None for key in TOTAL_STEP_KEYS):
            return
        last_step = int(trainer.estimated_stepping_batches)
        ends = {fn.num_training_steps for c in trainer.lr_scheduler_configs
                for fn in getattr(c.scheduler, "lr_lambdas", []) if hasattr(fn, "replan")}
        if ends and ends != {last_step}:
            self._replan_schedules(trainer, last_step)
            rank_zero_info(f"LR schedule: the checkpoint's ended at step {max(ends)}, the earlier run's length; "
                           f"it now ends with this run, at step {last_step}")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.budget_s is None or self._mark is None:
            return
        now, (then, step_then) = self.clock(), self._mark
        self._mark = (now, trainer.global_step)
        self.used_s += now - then
        self.recent = (self.recent + [[now - then, trainer.global_step - step_then]])[-self.window:]
        if trainer.should_stop:  # the plan's end (or another stop): nothing left to plan
            return
        steps_per_epoch, step = _steps_per_epoch(trainer), trainer.global_step
        seconds, steps = map(sum, zip(*self.recent))
        step_s = seconds / max(steps, 1)
        more = max(0, math.floor(self._seconds_left() / step_s)) if step_s > 0 else 0
        last_step = min(self._full_steps(trainer), step + more)
        last_step = trainer.strategy.broadcast(max(step, last_step), src=0)
        if last_step == self.planned_steps:
            return
        self.planned_steps, self.planned_epochs = last_step, math.ceil(last_step / steps_per_epoch)
        trainer.fit_loop.max_epochs = self.planned_epochs
        self._stop_at_plan(trainer)
        replanned = self._replan_schedules(trainer, last_step)
        rank_zero_info(
            f"{self._label()}: {self.used_s:.0f} s used, about {step_s * steps_per_epoch:.0f} s "
            f"an epoch -> {last_step / steps_per_epoch:.3g} of {self._configured_epochs} epochs ({last_step} steps)"
            + (f"; the LR schedule now ends at step {last_step}" if replanned else ""))

    def _full_steps(self, trainer: L.Trainer) -> int:
        """The run's length without the budget: its configured epochs, or `trainer.max_steps` where that ends first."""
        steps = self._configured_epochs * _steps_per_epoch(trainer)
        return min(steps, trainer.max_steps) if trainer.max_steps > 0 else steps

    def _label(self) -> str:
        ends = "" if self.ends_by is None else time.strftime(", ends by %H:%M:%S", time.localtime(self.ends_by))
        return f"time budget {self.budget_s / 60:g} min{ends}"

    def _seconds_left(self) -> float:
        """Training seconds the plan may still spend: the budget's, or fewer where `ends_by` comes first,
        less the final validation's (the run validates where it stops)."""
        left = self.budget_s - self.used_s
        if self.ends_by is not None:
            left = min(left, self.ends_by - self.wall_clock())
        return left - self.validation_s

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.budget_s is not None and self.planned_steps is not None and self.planned_steps < self._full_steps(trainer):
            rank_zero_info(f"{self._label()}: trained {trainer.global_step} steps "
                           f"({trainer.global_step / _steps_per_epoch(trainer):.3g} of the {self._configured_epochs} "
                           f"epochs) in {self.used_s:.0f} s; callbacks.time_budget.minutes=null trains them all")
            if self.warn_below_steps is not None and trainer.global_step < self.warn_below_steps:
                rank_zero_warn(f"{self._label()}: the run trained {trainer.global_step} steps, fewer than the "
                               f"{self.warn_below_steps} its recipe's quality was measured at "
                               f"(callbacks.time_budget.warn_below_steps): expect samples that follow their prompts "
                               "less well. Give it more minutes (callbacks.time_budget.minutes; make demo: DEMO_MINUTES)")

    def _replan_schedules(self, trainer: L.Trainer, last_step: int) -> bool:
        replanned = False
        for config in trainer.lr_scheduler_configs:
            lambdas = [fn for fn in getattr(config.scheduler, "lr_lambdas", []) if hasattr(fn, "replan")]
            for fn in lambdas:
                fn.replan(last_step)
            replanned |= bool(lambdas)
            if not lambdas and not self._warned_schedule and _schedule_has_an_end(trainer.lightning_module):
                self._warned_schedule = True
                rank_zero_warn(f"time budget: {type(config.scheduler).__name__} cannot be re-planned; if it depends on the "
                               "run's length it will not end where the shortened run does (warmup_cosine can)")
        return replanned

    def state_dict(self) -> dict:
        # time since the last epoch end counts too: a run preempted mid-epoch resumes with the time it really used
        used_s = self.used_s + (self.clock() - self._mark[0] if self._mark is not None else 0.0)
        return {"budget_s": self.budget_s, "used_s": used_s, "recent": self.recent,
                "planned_epochs": self.planned_epochs, "planned_steps": self.planned_steps}

    def load_state_dict(self, state_dict: dict) -> None:
        self.used_s = float(state_dict.get("used_s", 0.0))
        self.recent = [list(r) for r in state_dict.get("recent", [])]
        self.planned_epochs = state_dict.get("planned_epochs")
        self.planned_steps = state_dict.get("planned_steps")
        self._saved_budget_s = state_dict.get("budget_s")


def _schedule_has_an_end(module: L.LightningModule) -> bool:
    """Whether the module's LR schedule config names a run length (a constant one does not); unknown: yes."""
    config = (getattr(module, "hparams", None) or {}).get("lr_scheduler")
    return not hasattr(config, "keys") or any(key in config for key in TOTAL_STEP_KEYS)


def _steps_per_epoch(trainer: L.Trainer) -> int:
    """Optimiser steps per epoch: Lightning also steps on an epoch's last, incomplete accumulation."""
    return math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
