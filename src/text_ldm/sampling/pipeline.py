"""Text-to-image (and image-to-image) sampling loop with classifier-free guidance."""
from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from tqdm.auto import tqdm

from text_ldm.models.autoencoder import FrozenAutoencoder
from text_ldm.models.text_encoder import FrozenTextEncoder
from text_ldm.sampling.guidance import Guidance

# on_step(i, t, x0): i-th step done, x0 = the model's prediction of the clean latents (B, C, h, w).
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


def initial_noise(seeds: Sequence[int], latent_shape: Sequence[int], device, dtype) -> torch.Tensor:
    """(len(seeds), *latent_shape) standard normal noise; image i depends only on seeds[i] and is
    drawn on the CPU, so a seed gives the same start on every device and in every batch."""
    noise = [torch.randn(tuple(latent_shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(noise).to(device=device, dtype=dtype)


def start_step(steps: int, strength: float) -> int:
    """diffusers' img2img `get_timesteps`: skip the first (1 - strength) of the schedule."""
    return steps - min(int(steps * strength), steps)


def predict_x0(model_in: torch.Tensor, pred: torch.Tensor, t: torch.Tensor, scheduler: SchedulerMixin) -> torch.Tensor:
    """Clean-latent estimate from the (scale_model_input-ed) UNet input x_t and its output, for the
    scheduler's prediction_type. Every sampler's scaled input is in the variance-preserving
    parametrisation, so alphas_cumprod[t] applies to all of them (sigma samplers up to rounding t)."""
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
             guidance_interval: Sequence[float] | None = None, negative_prompt: str = "", progress: bool = False,
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
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength={strength} must be in [0, 1]")
    takes_eta = "eta" in inspect.signature(scheduler.step).parameters
    if not 0.0 <= eta <= 1.0 or (eta and not takes_eta):
        raise ValueError(f"eta={eta}: must be in [0, 1], and only a sampler that takes it (ddim) can use more than 0, "
                         f"not {type(scheduler).__name__}")
    param = next(unet.parameters())
    device, unet_dtype = param.device, param.dtype
    noise = initial_noise(seeds, latent_shape, device, torch.float32)
    cond = text_encoder(list(prompts)) if prompt_embeds is None else prompt_embeds
    cond = cond.to(device=device, dtype=unet_dtype)
    guidance = Guidance(guidance_scale, guidance_rescale, None if guidance_interval is None else tuple(guidance_interval))
    uncond = text_encoder([negative_prompt] * len(prompts)).to(device=device, dtype=unet_dtype) \
        if guidance.enabled else None
    # conditioning equal to the negative prompt's guides nowhere (uncond + w * 0): one pass gives the same prediction
    use_cfg = guidance.enabled and not torch.equal(cond, uncond)
    context = torch.cat([uncond, cond]) if use_cfg and batched_cfg else cond
    # Stochastic samplers (DDPM, Euler ancestral, DDIM with eta > 0) draw step noise from one generator seeded by the
    # batch's first seed; deterministic ones take no generator at all.
    step_kwargs = {}
    if "generator" in inspect.signature(scheduler.step).parameters:
        step_kwargs["generator"] = torch.Generator(device=device).manual_seed(int(seeds[0]) if len(seeds) else 0)
    if takes_eta:
        step_kwargs["eta"] = float(eta)
    scheduler.set_timesteps(steps, device=device)
    timesteps = scheduler.timesteps
    if init_latents is None or strength >= 1.0:
        latents = noise * scheduler.init_noise_sigma
    else:
        begin = start_step(steps, strength) * scheduler.order
        timesteps = timesteps[begin:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(begin)
        latents = init_latents.to(device=device, dtype=torch.float32)
        if len(timesteps):
            latents = scheduler.add_noise(latents, noise, timesteps[:1].repeat(len(seeds)))

    def unet_eps(x, t, ctx):
        return unet(x.to(unet_dtype), t, encoder_hidden_states=ctx).sample.float()

    for i, t in enumerate(tqdm(timesteps, desc="sampling", disable=not progress, leave=False)):
        model_in = scheduler.scale_model_input(latents, t)
        if not use_cfg:
            pred = unet_eps(model_in, t, context)
        elif not guidance.applies(t):
            pred = unet_eps(model_in, t, cond)
        elif batched_cfg:
            pred = guidance.combine(*unet_eps(torch.cat([model_in, model_in]), t, context).chunk(2))
        else:
            pred = guidance.combine(unet_eps(model_in, t, uncond), unet_eps(model_in, t, cond))
        if on_step is not None:
            on_step(i, t, predict_x0(model_in, pred, t, scheduler))
        latents = scheduler.step(pred, t, latents, **step_kwargs).prev_sample
    return decode(autoencoder, latents)


@torch.no_grad()
def decode(autoencoder: FrozenAutoencoder, latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) scaled latents -> (B, 3, H, W) images in [0, 1], in the autoencoder's dtype."""
    dtype = next(autoencoder.parameters(), torch.empty(0)).dtype
    return ((autoencoder.decode(latents.to(dtype)).float() + 1) / 2).clamp(0, 1)
