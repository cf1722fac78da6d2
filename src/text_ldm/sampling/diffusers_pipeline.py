"""The denoising loop, and TextLDMPipeline: the diffusers pipeline that runs it for an exported checkpoint.

Self-contained on purpose (torch, diffusers and transformers only): `export.py` copies this file into
the export folder as `pipeline.py`, and `model_index.json` names it, so diffusers' own
`DiffusionPipeline.from_pretrained(folder)` loads it without text_ldm installed:

    pipe = DiffusionPipeline.from_pretrained("exported/", trust_remote_code=True)
    images = pipe(["She has blond hair."], seeds=[0]).images  # the checkpoint's steps and guidance

`text_ldm.sampling.pipeline.generate` (sample.py, evaluate.py, training previews) calls the same
functions below, so the exported pipeline and sample.py cannot drift apart.
"""
from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from PIL import Image

# on_step(i, t, model_in, pred): step i done; the scaled UNet input x_t (B, C, h, w) and the guided prediction.
StepHook = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]
CLAUSE_BREAK = re.compile(r"[,.;:!?]|\band\b", re.IGNORECASE)  # as text_ldm.models.text_encoder's


def seeded_noise(seeds: Sequence[int], latent_shape: Sequence[int], device, dtype=torch.float32) -> torch.Tensor:
    """(len(seeds), *latent_shape) standard normal noise; image i depends only on seeds[i] and is
    drawn on the CPU, so a seed gives the same start on every device and in every batch."""
    noise = [torch.randn(tuple(latent_shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(noise).to(device=device, dtype=dtype)


def step_options(scheduler, seeds: Sequence[int], device, eta: float = 0.0) -> dict:
    """Keyword arguments for `scheduler.step`. Stochastic samplers (DDPM, Euler ancestral, DDIM with eta > 0)
    draw step noise from one generator seeded by the batch's first seed; deterministic ones take none."""
    params = inspect.signature(scheduler.step).parameters
    if not 0.0 <= eta <= 1.0 or (eta and "eta" not in params):
        raise ValueError(f"eta={eta}: must be in [0, 1], and only a sampler that takes it (ddim) can use more than 0, "
                         f"not {type(scheduler).__name__}")
    options = {}
    if "generator" in params:
        options["generator"] = torch.Generator(device=device).manual_seed(int(seeds[0]) if len(seeds) else 0)
    if "eta" in params:
        options["eta"] = float(eta)
    return options


def start_step(steps: int, strength: float) -> int:
    """diffusers' img2img `get_timesteps`: skip the first (1 - strength) of the schedule."""
    return steps - min(int(steps * strength), steps)


def initial_latents(scheduler, noise: torch.Tensor, steps: int, init_latents: torch.Tensor | None = None,
                    strength: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Set the scheduler's timesteps; return (the latents to start from, the timesteps to run).
    Text-to-image starts from the noise; img2img (`init_latents` (B, C, h, w), strength < 1) noises them to
    where `strength` of the schedule is left (for a flow sampler: to that step's sigma); strength 0 runs
    no step."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength={strength} must be in [0, 1]")
    scheduler.set_timesteps(steps, device=noise.device)
    timesteps = scheduler.timesteps
    if init_latents is None or strength >= 1.0:
        return noise * getattr(scheduler, "init_noise_sigma", 1.0), timesteps
    begin = start_step(steps, strength) * scheduler.order
    timesteps = timesteps[begin:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(begin)
    latents = init_latents.to(device=noise.device, dtype=torch.float32)
    if len(timesteps):
        start = timesteps[:1].repeat(len(noise))
        if hasattr(scheduler, "add_noise"):
            latents = scheduler.add_noise(latents, noise, start)
        else:  # flow-matching schedulers: (1 - sigma) x0 + sigma noise
            latents = scheduler.scale_noise(latents, start, noise)
    return latents, timesteps


def guided_prediction(pred_uncond: torch.Tensor, pred_cond: torch.Tensor, scale: float,
                      rescale: float = 0.0) -> torch.Tensor:
    """uncond + scale (cond - uncond), with `rescale` (Lin et al. 2023, sec. 3.4) pulling its per-sample std
    back towards the conditional prediction's. (B, C, h, w) each -> (B, C, h, w)."""
    pred = pred_uncond + scale * (pred_cond - pred_uncond)
    return rescale_noise_cfg(pred, pred_cond, rescale) if rescale > 0 else pred


@torch.no_grad()
def denoise(unet, scheduler, latents: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor,
            uncond: torch.Tensor | None = None, *, guidance_scale: float = 1.0, guidance_rescale: float = 0.0,
            guidance_interval: Sequence[float] | None = None, batched_cfg: bool = True,
            step_kwargs: dict | None = None, on_step: StepHook | None = None,
            progress: Callable[[Iterable], Iterable] = lambda steps: steps) -> torch.Tensor:
    """The classifier-free-guided sampling loop: (B, C, h, w) float32 latents -> denoised latents.

    cond / uncond: (B, L, D) conditioning; uncond None (or equal to cond: guidance would change nothing)
    runs the conditional pass alone. Guided steps run both halves in ONE UNet call at batch 2B
    (`batched_cfg=False`: two calls at batch B, same result). `guidance_interval` (t_lo, t_hi): guide
    only there (Kynkaanniemi et al. 2024), the conditional pass alone elsewhere. The UNet may run in
    bf16/fp16; latents and scheduler arithmetic stay float32."""
    unet_dtype = next(unet.parameters()).dtype
    cond = cond.to(dtype=unet_dtype)
    uncond = None if uncond is None or guidance_scale == 1.0 else uncond.to(dtype=unet_dtype)
    use_cfg = uncond is not None and not torch.equal(cond, uncond)
    both = torch.cat([uncond, cond]) if use_cfg and batched_cfg else None

    def predict(x, t, context):
        return unet(x.to(unet_dtype), t, encoder_hidden_states=context).sample.float()

    for i, t in enumerate(progress(timesteps)):
        model_in = scheduler.scale_model_input(latents, t) if hasattr(scheduler, "scale_model_input") else latents
        guided = use_cfg and (guidance_interval is None or guidance_interval[0] <= float(t) <= guidance_interval[1])
        if not guided:
            pred = predict(model_in, t, cond)
        elif batched_cfg:
            pred = guided_prediction(*predict(torch.cat([model_in, model_in]), t, both).chunk(2), guidance_scale,
                                     guidance_rescale)
        else:
            pred = guided_prediction(predict(model_in, t, uncond), predict(model_in, t, cond), guidance_scale,
                                     guidance_rescale)
        if on_step is not None:
            on_step(i, t, model_in, pred)
        latents = scheduler.step(pred, t, latents, **(step_kwargs or {})).prev_sample
    return latents


class TextLDMPipeline(DiffusionPipeline):
    """Components: unet (UNet2DConditionModel), vqvae (VQModel or AutoencoderKL), scheduler, text_encoder
    (a transformers text model; its last_hidden_state is the conditioning), tokenizer.

    default_steps, default_guidance_scale, default_guidance_interval (None: every step): what a call uses
    when not given them; the export writes the checkpoint's recommended sampling there, and a folder
    exported without them gets 20 steps and guidance 3 at every step."""

    model_cpu_offload_seq = "text_encoder->unet->vqvae"

    def __init__(self, unet, vqvae, scheduler, text_encoder, tokenizer, max_length: int = 77,
                 use_attention_mask: bool = True, latent_scale: float = 1.0, force_not_quantize: bool = False,
                 default_steps: int = 20, default_guidance_scale: float = 3.0,
                 default_guidance_interval: Sequence[float] | None = None, granularity: str = "tokens",
                 max_clauses: int = 8):
        super().__init__()
        self.register_modules(unet=unet, vqvae=vqvae, scheduler=scheduler, text_encoder=text_encoder,
                              tokenizer=tokenizer)
        self.register_to_config(max_length=max_length, use_attention_mask=use_attention_mask,
                                granularity=granularity, max_clauses=int(max_clauses),
                                latent_scale=latent_scale, force_not_quantize=force_not_quantize,
                                default_steps=int(default_steps), default_guidance_scale=float(default_guidance_scale),
                                default_guidance_interval=None if default_guidance_interval is None
                                else [float(b) for b in default_guidance_interval])

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """B prompts -> (B, max_length, D) token embeddings, or (B, max_clauses, D) clause vectors."""
        if self.config.granularity == "clauses":
            return self._encode_clauses(prompts)
        batch = self.tokenizer(prompts, padding="max_length", max_length=self.config.max_length, truncation=True,
                               return_tensors="pt")
        mask = batch["attention_mask"].to(self.device) if self.config.use_attention_mask else None
        return self.text_encoder(input_ids=batch["input_ids"].to(self.device), attention_mask=mask).last_hidden_state

    def _encode_clauses(self, prompts: list[str]) -> torch.Tensor:
        """text_ldm's FrozenTextEncoder(granularity="clauses"), restated because this file imports nothing of
        text_ldm: each clause's masked token mean, unused slots the empty text's."""
        clauses = [[c.strip() for c in CLAUSE_BREAK.split(p) if c.strip()][:self.config.max_clauses] for p in prompts]
        batch = self.tokenizer([""] + [c for cs in clauses for c in cs], padding=True,
                               max_length=self.config.max_length, truncation=True, return_tensors="pt")
        mask = batch["attention_mask"].to(self.device)
        states = self.text_encoder(input_ids=batch["input_ids"].to(self.device), attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(states.dtype)
        vectors = list(((states * weights).sum(1) / weights.sum(1)).unbind(0))
        empty, start, rows = vectors[0], 1, []
        for cs in clauses:
            rows.append(torch.stack(vectors[start:start + len(cs)] + [empty] * (self.config.max_clauses - len(cs))))
            start += len(cs)
        return torch.stack(rows)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], seeds: list[int] | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, negative_prompt: str = "", guidance_rescale: float = 0.0,
                 guidance_interval: Sequence[float] | None = None, eta: float = 0.0, output_type: str = "pil",
                 return_dict: bool = True):
        """prompt: one or B strings; seeds: B ints (default 0..B-1). num_inference_steps, guidance_scale,
        guidance_interval: None takes the config's default_* (the checkpoint's recommendation, as sample.py).
        guidance_interval (t_lo, t_hi): guide only at timesteps t_lo <= t <= t_hi (0 = clean); (0, 1000): every
        step. output_type "pil", "np" (B, H, W, 3) or "pt" (B, 3, H, W), all in [0, 1]."""
        config = self.config
        steps = config.default_steps if num_inference_steps is None else num_inference_steps
        guidance_scale = config.default_guidance_scale if guidance_scale is None else guidance_scale
        guidance_interval = config.default_guidance_interval if guidance_interval is None else guidance_interval
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        seeds = list(range(len(prompts))) if seeds is None else list(seeds)
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        shape = (self.unet.config.in_channels, self.unet.config.sample_size, self.unet.config.sample_size)
        noise = seeded_noise(seeds, shape, self.device)
        latents, timesteps = initial_latents(self.scheduler, noise, steps)
        uncond = self.encode_prompt([negative_prompt] * len(prompts)) if guidance_scale != 1.0 else None
        latents = denoise(self.unet, self.scheduler, latents, timesteps, self.encode_prompt(prompts), uncond,
                          guidance_scale=guidance_scale, guidance_rescale=guidance_rescale,
                          guidance_interval=guidance_interval,
                          step_kwargs=step_options(self.scheduler, seeds, self.device, eta), progress=self.progress_bar)
        latents = (latents / self.config.latent_scale).to(self.vqvae.dtype)
        if "force_not_quantize" in inspect.signature(self.vqvae.decode).parameters:
            decoded = self.vqvae.decode(latents, force_not_quantize=self.config.force_not_quantize).sample
        else:
            decoded = self.vqvae.decode(latents).sample
        images = ((decoded.float().clamp(-1, 1) + 1) / 2).clamp(0, 1)
        if output_type == "pt":
            out = images.cpu()
        else:
            out = images.permute(0, 2, 3, 1).cpu().numpy()
            if output_type == "pil":
                out = [Image.fromarray(np.round(a * 255).astype(np.uint8)) for a in out]
        return ImagePipelineOutput(images=out) if return_dict else (out,)
