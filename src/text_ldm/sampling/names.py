"""The sampler and precision names sample.py and evaluate.py accept, importable without torch or diffusers:
the command line is checked against them before the heavy imports."""
from __future__ import annotations

# name -> (diffusers scheduler class, default steps) for models trained with epsilon or v-prediction (DDPM betas).
DDPM_SAMPLERS: dict[str, tuple[str, int]] = {
    "ddpm": ("DDPMScheduler", 1000),
    "ddim": ("DDIMScheduler", 50),
    "pndm": ("PNDMScheduler", 50),
    "lms": ("LMSDiscreteScheduler", 50),
    "euler_a": ("EulerAncestralDiscreteScheduler", 30),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", 20),  # its default algorithm is DPM-Solver++ (2M)
    "unipc": ("UniPCMultistepScheduler", 20),
}
# ... and for flow matching models (sigma from 1 to 0, velocity prediction).
FLOW_SAMPLERS: dict[str, tuple[str, int]] = {
    "flow_euler": ("FlowMatchEulerDiscreteScheduler", 50),
    "flow_heun": ("FlowMatchHeunDiscreteScheduler", 25),  # second order: two UNet calls a step
    "flow_dpmpp_2m": ("DPMSolverMultistepScheduler", 20),  # DPM-Solver++ (2M) on the flow sigmas
}
SAMPLERS = {**DDPM_SAMPLERS, **FLOW_SAMPLERS}
PRECISIONS = ("fp32", "bf16", "fp16")


def check_sampler_name(name: str | None) -> list[str]:
    """[] for null (the checkpoint's) or a known sampler, else the message naming the choices."""
    return [] if name is None or name in SAMPLERS else [f"sampler={name!r} is unknown; choose one of {sorted(SAMPLERS)}"]
