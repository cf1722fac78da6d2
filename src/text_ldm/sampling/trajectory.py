"""Trajectories: predicted x0 every k steps, and the forward-noising strip, as strip PNGs and GIFs."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from text_ldm.models.autoencoder import FrozenAutoencoder
from text_ldm.models.components import DiffusionComponents
from text_ldm.sampling.pipeline import decode
from text_ldm.utils.atomic import atomic_path, atomic_save_png
from text_ldm.utils.grid import captioned_grid, to_pil


class X0Recorder:
    """An `on_step` callback for `generate` that keeps the predicted clean latents at steps 0, k, 2k, ...
    and at the last step run, so n steps give ceil(n / k) frames, plus one when (n - 1) % k != 0.
    `frames`: list of (t, (B, C, h, w) latents on the CPU)."""

    def __init__(self, every: int):
        if every < 1:
            raise ValueError(f"trajectory_every={every} must be >= 1")
        self.every = int(every)
        self.frames: list[tuple[int, torch.Tensor]] = []
        self._provisional = False  # the newest frame is only kept if no later step comes

    def __call__(self, i: int, t: torch.Tensor, x0: torch.Tensor) -> None:
        if self._provisional:
            self.frames.pop()
        self.frames.append((int(torch.as_tensor(t).round().item()), x0.detach().float().cpu()))
        self._provisional = i % self.every != 0

    def decoded(self, autoencoder: FrozenAutoencoder) -> list[tuple[int, torch.Tensor]]:
        """[(t, (B, 3, H, W) images in [0, 1])] per recorded step."""
        device = next(autoencoder.parameters(), torch.empty(0)).device
        return [(t, decode(autoencoder, x0.to(device)).cpu()) for t, x0 in self.frames]


def write_strip_and_gif(frames: Sequence[tuple[int, torch.Tensor]], out_dir: Path, stems: Sequence[str],
                        captions: Sequence[str], gif: bool = True, duration_ms: int = 200) -> list[Path]:
    """frames: [(t, (B, 3, H, W))]; stems, captions: B each. Per image b writes `<stems[b]>.png` (one
    row, t labelled) and, with `gif`, `<stems[b]>.gif`, one frame per entry (the last held 4x)."""
    paths = []
    for b, (stem, caption) in enumerate(zip(stems, captions)):
        row = torch.stack([images[b] for _, images in frames])
        label = f"{caption} | t = " + ", ".join(str(t) for t, _ in frames)
        png = out_dir / f"{stem}.png"
        atomic_save_png(captioned_grid([row], [label]), png)
        paths.append(png)
        if gif:
            pils = [to_pil(images[b]).resize((images.shape[-1] * 2, images.shape[-2] * 2), Image.NEAREST)
                    for _, images in frames]
            durations = [duration_ms] * (len(pils) - 1) + [duration_ms * 4]
            path = out_dir / f"{stem}.gif"
            with atomic_path(path) as tmp:
                pils[0].save(tmp, format="GIF", save_all=True, append_images=pils[1:], duration=durations, loop=0)
            paths.append(path)
    return paths


@torch.no_grad()
def forward_noise(model: DiffusionComponents, latents: torch.Tensor, timesteps: Sequence[int],
                  seed: int) -> list[tuple[int, torch.Tensor]]:
    """q(x_t | x_0) with the training schedule at each t (for flow matching, the t-th sigma of its
    table), decoded: [(t, (B, 3, H, W) in [0, 1])]. One noise draw (from `seed`) is shared by all t, so
    the strip shows one path getting noisier."""
    limit = int(model.noise_scheduler.config.num_train_timesteps)
    bad = [t for t in timesteps if not 0 <= int(t) < limit]
    if bad:
        raise ValueError(f"forward_noise_timesteps {bad} are outside [0, {limit - 1}]")
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(int(seed))).to(latents)
    out = []
    for t in timesteps:
        noisy, _ = model.forward_process(latents, noise, torch.full((latents.shape[0],), int(t), dtype=torch.long))
        out.append((int(t), decode(model.autoencoder, noisy).cpu()))
    return out
