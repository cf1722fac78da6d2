"""Text-to-image sampling loop with batched classifier-free guidance."""
from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from tqdm.auto import tqdm

from text_ldm.models.autoencoder import FrozenAutoencoder
from text_ldm.models.text_encoder import FrozenTextEncoder


def initial_noise(seeds: Sequence[int], latent_shape: Sequence[int], device, dtype) -> torch.Tensor:
    """(len(seeds), *latent_shape) standard normal noise; image i depends only on seeds[i] and is
    drawn on the CPU, so a seed gives the same start on every device and in every batch."""
    noise = [torch.randn(tuple(latent_shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(noise).to(device=device, dtype=dtype)


@torch.no_grad()
def generate(unet, scheduler: SchedulerMixin, text_encoder: FrozenTextEncoder, autoencoder: FrozenAutoencoder,
             prompts: Sequence[str], seeds: Sequence[int], latent_shape: Sequence[int], *, steps: int,
             guidance_scale: float = 3.0, negative_prompt: str = "", progress: bool = False) -> torch.Tensor:
    """Sample one image per prompt.

    prompts, seeds: B each. latent_shape: (C, h, w). Returns (B, 3, H, W) images in [0, 1].
    Guidance runs the conditional and unconditional halves in ONE UNet call at batch 2B;
    `negative_prompt` replaces the empty prompt in the unconditional half.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    param = next(unet.parameters())
    latents = initial_noise(seeds, latent_shape, param.device, param.dtype)
    cond = text_encoder(list(prompts)).to(param.dtype)
    use_cfg = guidance_scale != 1.0
    if use_cfg:
        uncond = text_encoder([negative_prompt] * len(prompts)).to(param.dtype)
        context = torch.cat([uncond, cond])
    else:
        context = cond
    # Stochastic samplers (DDPM, Euler ancestral) draw step noise from one generator seeded by the
    # batch's first seed; deterministic ones take no generator at all.
    step_kwargs = {}
    if "generator" in inspect.signature(scheduler.step).parameters:
        step_kwargs["generator"] = torch.Generator(device=param.device).manual_seed(int(seeds[0]) if len(seeds) else 0)
    scheduler.set_timesteps(steps, device=param.device)
    latents = latents * scheduler.init_noise_sigma
    for t in tqdm(scheduler.timesteps, desc="sampling", disable=not progress, leave=False):
        model_in = torch.cat([latents, latents]) if use_cfg else latents
        model_in = scheduler.scale_model_input(model_in, t)
        pred = unet(model_in, t, encoder_hidden_states=context).sample
        if use_cfg:
            pred_uncond, pred_cond = pred.chunk(2)
            pred = pred_uncond + guidance_scale * (pred_cond - pred_uncond)
        latents = scheduler.step(pred, t, latents, **step_kwargs).prev_sample
    images = autoencoder.decode(latents.to(next(autoencoder.parameters(), param).dtype))
    return ((images.float() + 1) / 2).clamp(0, 1)
