"""TextLDMPipeline: a diffusers pipeline equivalent to `sample.py` for an exported checkpoint.

Self-contained on purpose (torch, diffusers and transformers only): `export.py` copies this file
into the export folder as `pipeline.py`, and `model_index.json` names it, so diffusers' own
`DiffusionPipeline.from_pretrained(folder)` loads it without text_ldm installed:

    pipe = DiffusionPipeline.from_pretrained("exported/", trust_remote_code=True)
    images = pipe(["She has blond hair."], seeds=[0], num_inference_steps=20).images

It reproduces text_ldm.sampling.pipeline.generate: per-image noise drawn on the CPU from each seed,
one batched UNet call per step for classifier-free guidance (negative prompt in the unconditional
half; `guidance_rescale` and `guidance_interval` as in text_ldm.sampling.guidance.Guidance), step noise
from one generator seeded by the first seed, scheduler arithmetic in float32.
"""
from __future__ import annotations

import inspect

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from PIL import Image


class TextLDMPipeline(DiffusionPipeline):
    """Components: unet (UNet2DConditionModel), vqvae (VQModel or AutoencoderKL), scheduler, text_encoder
    (a transformers text model; its last_hidden_state is the conditioning), tokenizer."""

    model_cpu_offload_seq = "text_encoder->unet->vqvae"

    def __init__(self, unet, vqvae, scheduler, text_encoder, tokenizer, max_length: int = 77,
                 use_attention_mask: bool = True, latent_scale: float = 1.0, force_not_quantize: bool = False):
        super().__init__()
        self.register_modules(unet=unet, vqvae=vqvae, scheduler=scheduler, text_encoder=text_encoder,
                              tokenizer=tokenizer)
        self.register_to_config(max_length=max_length, use_attention_mask=use_attention_mask,
                                latent_scale=latent_scale, force_not_quantize=force_not_quantize)

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """B prompts -> (B, max_length, D) token embeddings."""
        batch = self.tokenizer(prompts, padding="max_length", max_length=self.config.max_length, truncation=True,
                               return_tensors="pt")
        mask = batch["attention_mask"].to(self.device) if self.config.use_attention_mask else None
        return self.text_encoder(input_ids=batch["input_ids"].to(self.device), attention_mask=mask).last_hidden_state

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], seeds: list[int] | None = None, num_inference_steps: int = 20,
                 guidance_scale: float = 3.0, negative_prompt: str = "", guidance_rescale: float = 0.0,
                 guidance_interval: tuple[float, float] | None = None, output_type: str = "pil",
                 return_dict: bool = True):
        """prompt: one or B strings; seeds: B ints (default 0..B-1). guidance_interval: (t_lo, t_hi), guide
        only at those timesteps (None: every step). output_type "pil", "np" (B, H, W, 3) or "pt" (B, 3, H, W),
        all in [0, 1]."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        seeds = list(range(len(prompts))) if seeds is None else list(seeds)
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        device, unet_dtype = self.device, self.unet.dtype
        shape = (self.unet.config.in_channels, self.unet.config.sample_size, self.unet.config.sample_size)
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
        latents = noise.to(device) * self.scheduler.init_noise_sigma
        context = self.encode_prompt(prompts)
        uncond = self.encode_prompt([negative_prompt] * len(prompts)) if guidance_scale != 1.0 else None
        use_cfg = uncond is not None and not torch.equal(context, uncond)  # equal: guidance changes nothing
        if use_cfg:
            context = torch.cat([uncond, context])
        context = context.to(unet_dtype)
        step_kwargs = {}
        if "generator" in inspect.signature(self.scheduler.step).parameters:
            step_kwargs["generator"] = torch.Generator(device=device).manual_seed(int(seeds[0]))
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_in = self.scheduler.scale_model_input(latents, t)
            guided = use_cfg and (guidance_interval is None or guidance_interval[0] <= float(t) <= guidance_interval[1])
            model_in = torch.cat([model_in, model_in]) if guided else model_in
            ctx = context if guided or not use_cfg else context[len(prompts):]
            pred = self.unet(model_in.to(unet_dtype), t, encoder_hidden_states=ctx).sample.float()
            if guided:
                pred_uncond, pred_cond = pred.chunk(2)
                pred = pred_uncond + guidance_scale * (pred_cond - pred_uncond)
                if guidance_rescale > 0:
                    pred = rescale_noise_cfg(pred, pred_cond, guidance_rescale)
            latents = self.scheduler.step(pred, t, latents, **step_kwargs).prev_sample
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
