"""Samplers: diffusers schedulers built from the training noise scheduler's config, one family per objective."""
from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import diffusers
from diffusers import DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from text_ldm.sampling import names


def _classes(table: Mapping[str, tuple[str, int]]) -> dict[str, tuple[type[SchedulerMixin], int]]:
    return {name: (getattr(diffusers, cls), steps) for name, (cls, steps) in table.items()}


# name -> (scheduler class, default steps); the names and steps live in names.py.
DDPM_SAMPLERS = _classes(names.DDPM_SAMPLERS)
FLOW_SAMPLERS = _classes(names.FLOW_SAMPLERS)
SAMPLERS = {**DDPM_SAMPLERS, **FLOW_SAMPLERS}


def is_flow_config(train_scheduler_config: Mapping[str, Any]) -> bool:
    """A flow-matching training scheduler (FlowMatchEulerDiscreteScheduler) has a `shift`, a DDPM one betas."""
    return "shift" in train_scheduler_config and "beta_schedule" not in train_scheduler_config


def is_flow_sampler(scheduler: SchedulerMixin) -> bool:
    return type(scheduler).__name__.startswith("FlowMatch") or bool(scheduler.config.get("use_flow_sigmas"))


def family(train_scheduler_config: Mapping[str, Any]) -> dict[str, tuple[type[SchedulerMixin], int]]:
    return FLOW_SAMPLERS if is_flow_config(train_scheduler_config) else DDPM_SAMPLERS


def default_steps(name: str) -> int:
    if name not in SAMPLERS:
        raise ValueError(f"sampler={name!r} is unknown; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[name][1]


def make_sampler(name: str, train_scheduler_config: Mapping[str, Any], **overrides: Any) -> SchedulerMixin:
    """A fresh sampler of kind `name` that shares the training schedule (betas, or the flow shift): the
    model only knows that one. A sampler of the other objective's family is refused."""
    available = family(train_scheduler_config)
    if name not in available:
        objective = "flow-matching" if available is FLOW_SAMPLERS else "epsilon / v-prediction"
        known = "unknown" if name not in SAMPLERS else f"not for this {objective} model"
        raise ValueError(f"sampler={name!r} is {known}; choose one of {sorted(available)}")
    cls = available[name][0]
    config = dict(train_scheduler_config)
    if available is DDPM_SAMPLERS:
        return cls.from_config(config, **overrides)
    steps, shift = config["num_train_timesteps"], config["shift"]
    if cls is DPMSolverMultistepScheduler:
        return cls(num_train_timesteps=steps, use_flow_sigmas=True, prediction_type="flow_prediction",
                   flow_shift=shift, **overrides)
    return cls(num_train_timesteps=steps, shift=shift, **overrides)  # Heun knows only these two


def recommended_sampling(objective: str, sampling: Mapping[str, Any] | None) -> dict[str, Any]:
    """{"sampler", "steps", "guidance_scale", "guidance_interval"}: nulls become the objective's default
    sampler (DDIM, or Euler for flow matching), that sampler's default steps, guidance 3 and guidance at
    every step (interval None). A checkpoint saved without them gets exactly that: the settings sample.py
    used before checkpoints carried any."""
    given = {k: v for k, v in (sampling or {}).items() if v is not None}
    name = str(given.get("sampler", "flow_euler" if objective == "flow_matching" else "ddim"))
    return {"sampler": name, "steps": int(given.get("steps", default_steps(name))),
            "guidance_scale": float(given.get("guidance_scale", 3.0)),
            "guidance_interval": _interval(given.get("guidance_interval"))}


def _interval(bounds: Sequence[float] | None) -> list[float] | None:
    """A guidance interval as plain floats (what a checkpoint stores), None for every step."""
    return None if bounds is None else [float(b) for b in bounds]


def takes_eta(scheduler: SchedulerMixin) -> bool:
    return "eta" in inspect.signature(scheduler.step).parameters


def resolve_sampling(objective: str, recommended: Mapping[str, Any] | None, sampler: str | None = None,
                     steps: int | None = None, guidance_scale: float | None = None,
                     guidance_interval: Sequence[float] | None = None) -> tuple[dict[str, Any], str]:
    """What sample.py / evaluate.py run: each of sampler, steps, guidance_scale and guidance_interval as
    the user gave it, else the checkpoint's recommendation (steps: the recommended ones only for the
    recommended sampler, otherwise the chosen sampler's default). Returns (the settings, a line saying
    where each came from)."""
    rec = recommended_sampling(objective, recommended)
    chosen = {"sampler": sampler or rec["sampler"],
              "guidance_scale": float(guidance_scale if guidance_scale is not None else rec["guidance_scale"]),
              "guidance_interval": rec["guidance_interval"] if guidance_interval is None
              else _interval(guidance_interval)}
    if steps is not None:
        chosen["steps"] = int(steps)
    else:
        chosen["steps"] = rec["steps"] if chosen["sampler"] == rec["sampler"] else default_steps(chosen["sampler"])
    source = {"sampler": "" if sampler else " (checkpoint)",
              "steps": "" if steps is not None else (" (checkpoint)" if chosen["sampler"] == rec["sampler"]
                                                    else " (sampler default)"),
              "guidance_scale": "" if guidance_scale is not None else " (checkpoint)",
              "guidance_interval": "" if guidance_interval is not None else " (checkpoint)"}
    shown = dict(chosen, guidance_interval="every step" if chosen["guidance_interval"] is None
                 else "[{:g}, {:g}]".format(*chosen["guidance_interval"]))
    return chosen, "sampling: " + ", ".join(f"{key}={shown[key]}{source[key]}" for key in source)
