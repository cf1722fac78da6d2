"""`sample.py`'s body: prompts in, PNGs + samples.jsonl + a captioned grid out."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from text_ldm.sampling.checkpoint import load_diffusion
from text_ldm.sampling.pipeline import generate
from text_ldm.sampling.schedulers import make_sampler
from text_ldm.utils.atomic import atomic_save_png, atomic_write_text
from text_ldm.utils.grid import captioned_grid, to_pil


def read_prompts(cfg: DictConfig) -> list[str]:
    if (cfg.get("prompt") is None) == (cfg.get("prompts_file") is None):
        raise ValueError('give exactly one of prompt="..." or prompts_file=FILE')
    if cfg.get("prompt") is not None:
        return [str(cfg.prompt)]
    path = Path(cfg.prompts_file)
    if not path.is_file():
        raise FileNotFoundError(f"prompts_file {path} does not exist")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompts_file {path} holds no prompts (one per line)")
    return prompts


def validate(cfg: DictConfig, steps: int) -> None:
    problems = []
    if steps < 1:
        problems.append(f"steps={steps} must be >= 1")
    if cfg.guidance_scale < 0:
        problems.append(f"guidance_scale={cfg.guidance_scale} must be >= 0")
    if cfg.num_images_per_prompt < 1:
        problems.append(f"num_images_per_prompt={cfg.num_images_per_prompt} must be >= 1")
    if cfg.batch_size < 1:
        problems.append(f"batch_size={cfg.batch_size} must be >= 1")
    if problems:
        raise ValueError("; ".join(problems))


def sample(cfg: DictConfig) -> Path:
    """Write one PNG per image (`<prompt:04d>_<k:02d>.png`), samples.jsonl and grid.png to
    cfg.out_dir; returns the grid's path."""
    prompts = read_prompts(cfg)
    steps = int(cfg.steps if cfg.get("steps") is not None else cfg.sampler.steps)
    validate(cfg, steps)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_diffusion(cfg.ckpt, device, use_ema=bool(cfg.use_ema))
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    k = int(cfg.num_images_per_prompt)
    jobs = [(p, i) for p in range(len(prompts)) for i in range(k)]
    images: list[torch.Tensor] = []
    records = []
    for start in tqdm(range(0, len(jobs), cfg.batch_size), desc="batches", unit="batch"):
        batch = jobs[start: start + cfg.batch_size]
        seeds = [int(cfg.seed) + p * k + i for p, i in batch]
        sampler = make_sampler(cfg.sampler.name, model.noise_scheduler.config)
        out = generate(model.unet, sampler, model.text_encoder, model.autoencoder, [prompts[p] for p, _ in batch],
                       seeds, model.latent_shape, steps=steps, guidance_scale=float(cfg.guidance_scale),
                       negative_prompt=str(cfg.negative_prompt)).cpu()
        for (p, i), seed, image in zip(batch, seeds, out):
            name = f"{p:04d}_{i:02d}.png"
            atomic_save_png(to_pil(image), out_dir / name)
            images.append(image)
            records.append({"file": name, "prompt": prompts[p], "seed": seed, "sampler": cfg.sampler.name,
                            "steps": steps, "guidance_scale": float(cfg.guidance_scale),
                            "negative_prompt": str(cfg.negative_prompt)})
    atomic_write_text(out_dir / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    rows = [torch.stack(images[p * k:(p + 1) * k]) for p in range(len(prompts))]
    grid_path = out_dir / "grid.png"
    atomic_save_png(captioned_grid(rows, prompts), grid_path)
    return grid_path
