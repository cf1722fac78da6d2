"""Classifier-free guidance: how the unconditional and conditional noise predictions are combined."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from text_ldm.sampling.checks import guidance_problems
from text_ldm.sampling.diffusers_pipeline import guided_prediction


@dataclass(frozen=True)
class Guidance:
    """scale: w in uncond + w (cond - uncond); 1 turns guidance off (one UNet pass per step).
    rescale: phi of Lin et al. 2023, sec. 3.4 (diffusers' `guidance_rescale`): pull the guided prediction's
      per-sample std back towards the conditional one's, against the over-saturation a large w brings.
    interval: (t_lo, t_hi) in training timesteps (0 = clean, 999 = pure noise): guide only while
      t_lo <= t <= t_hi and use the conditional prediction alone elsewhere, as in Kynkaanniemi et al. 2024
      ("Applying guidance in a limited interval"); the steps outside skip the unconditional pass.
    """

    scale: float = 3.0
    rescale: float = 0.0
    interval: tuple[float, float] | None = None

    def __post_init__(self):
        problems = guidance_problems(self.scale, self.rescale, self.interval)
        if problems:
            raise ValueError("; ".join(problems))
        if self.interval is not None:
            object.__setattr__(self, "interval", (float(self.interval[0]), float(self.interval[1])))

    @classmethod
    def from_settings(cls, cfg, settings: dict) -> "Guidance":
        """From resolve_sampling's settings (the scale and interval, the user's or the checkpoint's) and a
        sample.py / evaluate.py config's guidance_rescale."""
        interval = settings.get("guidance_interval")
        return cls(float(settings["guidance_scale"]), float(cfg.get("guidance_rescale", 0.0) or 0.0),
                   None if interval is None else tuple(interval))

    @property
    def enabled(self) -> bool:
        return self.scale != 1.0

    def applies(self, t) -> bool:
        """Whether step t (a scheduler timestep) is guided."""
        if not self.enabled:
            return False
        return self.interval is None or self.interval[0] <= float(t) <= self.interval[1]

    def combine(self, pred_uncond: torch.Tensor, pred_cond: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) each -> the guided prediction (B, C, h, w)."""
        return guided_prediction(pred_uncond, pred_cond, self.scale, self.rescale)

    def describe(self) -> str:
        """'9.0', or '9.0 (rescale 0.7, t in [0, 800])' when the extras are on."""
        extras = ([f"rescale {self.rescale:g}"] if self.rescale else []) + \
            ([f"t in [{self.interval[0]:g}, {self.interval[1]:g}]"] if self.interval else [])
        return f"{self.scale:g}" + (f" ({', '.join(extras)})" if extras else "")

    def as_dict(self) -> dict:
        """For samples.jsonl / metrics.json."""
        return {"guidance_scale": self.scale, "guidance_rescale": self.rescale,
                "guidance_interval": None if self.interval is None else list(self.interval)}
