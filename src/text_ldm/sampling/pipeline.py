"""Text-to-image (and image-to-image) sampling with text_ldm's components: the frozen encoders in,
the denoising loop of `diffusers_pipeline` (the one exported pipelines run), images out."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from tqdm.auto import tqdm

from text_ldm.models.autoencoder import FrozenAutoencoder
from text_ldm.models.text_encoder import FrozenTextEncoder
from text_ldm.sampling.diffusers_pipeline import denoise, initial_latents, seeded_noise, step_options
from text_ldm.sampling.guidance import Guidance
from text_ldm.sampling.schedulers import is_flow_sampler

# on_step(i, t, x0): i-th step done, x0 = the model's prediction of the clean latents (B, C, h, w).
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


def predict_x0(model_in: torch.Tensor, pred: torch.Tensor, t: torch.Tensor, scheduler: SchedulerMixin) -> torch.Tensor:
    """Clean-latent estimate from the (scale_model_input-ed) UNet input x_t and its output, for the
    scheduler's prediction_type. Every DDPM-family sampler's scaled input is in the variance-preserving
    parametrisation, so alphas_cumprod[t] applies to all of them (sigma samplers up to rounding t).
    A flow sampler's x_t = (1 - sigma) x0 + sigma noise with sigma = t / T, and pred = noise - x0."""
    if is_flow_sampler(scheduler):
        return model_in - (torch.as_tensor(t, dtype=model_in.dtype) / scheduler.config.num_train_timesteps) * pred
    alpha = scheduler.alphas_cumprod.to(model_in.device)[int(torch.as_tensor(t).round().item())].to(model_in.dtype)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (model_in - (1 - alpha).sqrt() * pred) / alpha.sqrt()
    if kind == "v_prediction":
        return alpha.sqrt() * model_in - (1 - alpha).sqrt() * pred
    if kind == "sample":
        return pred
    raise ValueError(f"prediction_type={kind!r} is not supported; use epsilon, v_prediction or sample")


@torch.no_grad()
def generate(unet, scheduler: SchedulerMixin, text_encoder: FrozenTextEncoder, autoencoder: FrozenAutoencoder,
             prompts: Sequence[str], seeds: Sequence[int], latent_shape: Sequence[int], *, steps: int,
             guidance_scale: float = 3.0, guidance_rescale: float = 0.0,
             guidance_interval: Sequence[float] | None = None, negative_prompt: str = "",
             progress: bool | Callable[[Iterable], Iterable] = False,
             prompt_embeds: torch.Tensor | None = None, init_latents: torch.Tensor | None = None,
             strength: float = 1.0, batched_cfg: bool = True, on_step: StepCallback | None = None,
             eta: float = 0.0) -> torch.Tensor:
    """Sample one image per prompt.

    prompts, seeds: B each. latent_shape: (C, h, w). Returns (B, 3, H, W) images in [0, 1].
    - Guidance runs the conditional and unconditional halves in ONE UNet call at batch 2B
      (`batched_cfg=False`: two calls at batch B, as the seed scripts do; same result).
      `negative_prompt` replaces the empty prompt in the unconditional half. `guidance_rescale` and
      `guidance_interval` are described in `Guidance` (sampling/guidance.py). When the conditioning
      equals the negative prompt's (the empty prompt with the default negative), guidance changes
      nothing, so each step runs the conditional half alone.
    - prompt_embeds: (B, L, D) conditioning to use instead of encoding `prompts` (prompt mixing).
    - init_latents: (B, C, h, w) scaled latents of input images (img2img). They are noised to the
      step where `strength` of the schedule is left and denoised from there. strength=1 ignores
      them (pure text-to-image from the seed's noise); strength=0 returns their decoding.
    - eta (DDIM only): the share of each step's variance drawn as fresh noise (Song et al. 2021, eq. 16);
      0 is deterministic DDIM, 1 DDPM's posterior variance.
    - The UNet may run in bf16/fp16; latents and scheduler arithmetic stay in float32.
    - progress: True for a bar over this call's steps, or a wrapper of the timesteps (`progress.StepBar`:
      one bar over the steps of many calls).
    The loop itself is `diffusers_pipeline.denoise`.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    guidance = Guidance(guidance_scale, guidance_rescale, None if guidance_interval is None else tuple(guidance_interval))
    device = next(unet.parameters()).device
    noise = seeded_noise(seeds, latent_shape, device)
    step_kwargs = step_options(scheduler, seeds, device, eta)
    latents, timesteps = initial_latents(scheduler, noise, steps, init_latents, strength)
    cond = (text_encoder(list(prompts)) if prompt_embeds is None else prompt_embeds).to(device)
    uncond = text_encoder([negative_prompt] * len(prompts)).to(device) if guidance.enabled else None
    hook = None if on_step is None else (lambda i, t, x, pred: on_step(i, t, predict_x0(x, pred, t, scheduler)))
    latents = denoise(unet, scheduler, latents, timesteps, cond, uncond, guidance_scale=guidance.scale,
                      guidance_rescale=guidance.rescale, guidance_interval=guidance.interval, batched_cfg=batched_cfg,
                      step_kwargs=step_kwargs, on_step=hook,
                      progress=progress if callable(progress)
                      else lambda steps: tqdm(steps, desc="sampling", disable=not progress, leave=False))
    return decode(autoencoder, latents)


@torch.no_grad()
def decode(autoencoder: FrozenAutoencoder, latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) scaled latents -> (B, 3, H, W) images in [0, 1], in the autoencoder's dtype."""
    dtype = next(autoencoder.parameters(), torch.empty(0)).dtype
    return ((autoencoder.decode(latents.to(dtype)).float() + 1) / 2).clamp(0, 1)
