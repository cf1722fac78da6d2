"""`sample.py`'s body: prompts in, PNGs + samples.jsonl + a captioned grid out; img2img, prompt
mixing, trajectories, precision; `mode=forward_noise` and `export_dir=` are the other two jobs."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig

from text_ldm.models.components import DiffusionComponents
from text_ldm.sampling import checks
from text_ldm.sampling import precision as prec
from text_ldm.sampling.guidance import Guidance
from text_ldm.sampling.img2img import encode_image
from text_ldm.sampling.mixing import encode_prompts
from text_ldm.sampling.pipeline import generate
from text_ldm.sampling.progress import StepBar, output_above_bars
from text_ldm.sampling.diffusers_pipeline import start_step
from text_ldm.sampling.schedulers import make_sampler, resolve_sampling, takes_eta
from text_ldm.sampling.trajectory import X0Recorder, forward_noise, write_strip_and_gif
from text_ldm.utils.atomic import atomic_save_png, atomic_write_text
from text_ldm.utils.grid import captioned_grid, to_pil


def _device(cfg: DictConfig) -> str:
    return pick_device(cfg.device)


def pick_device(name: str) -> str:
    """`device=auto` -> cuda when there is one, else cpu; a named device must parse and, for cuda, exist."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={name} is not a device (auto, cpu, cuda, cuda:1, ...)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name}, but torch sees no CUDA device here; use device=auto or device=cpu")
    return str(device)


def _load_model(cfg: DictConfig, device: str) -> DiffusionComponents:
    return DiffusionComponents.from_checkpoint(cfg.ckpt, use_ema=bool(cfg.use_ema),
                                               vae_pretrained=cfg.get("vae_pretrained")).to(device)


def sampling_settings(cfg: DictConfig, model: DiffusionComponents) -> dict:
    """{"sampler", "steps", "guidance_scale", "guidance_interval"}: the command line's, else the
    checkpoint's; says which."""
    settings, line = resolve_sampling(model.objective, model.sampling, cfg.get("sampler"), cfg.get("steps"),
                                      cfg.get("guidance_scale"), cfg.get("guidance_interval"))
    print(line)
    return settings


def run(cfg: DictConfig) -> Path:
    """Dispatch on what was asked: export_dir= -> the exported folder; mode=forward_noise -> its
    strip; otherwise sampling -> the grid."""
    prompts = checks.check(cfg)
    if cfg.get("export_dir"):
        from text_ldm.sampling.export import export_pipeline

        model = _load_model(cfg, "cpu")
        settings = sampling_settings(cfg, model)  # also the exported pipeline's defaults
        return export_pipeline(model, settings["sampler"], cfg.export_dir, overwrite=bool(cfg.get("overwrite", False)),
                               steps=settings["steps"], guidance_scale=settings["guidance_scale"],
                               guidance_interval=settings["guidance_interval"])
    if cfg.get("mode", "sample") == "forward_noise":
        return forward_noise_strip(cfg)
    return sample(cfg, prompts)


def forward_noise_strip(cfg: DictConfig) -> Path:
    """`mode=forward_noise init_image=PATH`: the image encoded, noised to each of
    `forward_noise_timesteps` with the training schedule, decoded: forward_noise.png (+ .gif)."""
    model = _load_model(cfg, _device(cfg))
    latents = encode_image(model.autoencoder, cfg.init_image, model.image_size)
    frames = forward_noise(model, latents, list(cfg.forward_noise_timesteps),
                           int(cfg.seed))
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_strip_and_gif(frames, out_dir, ["forward_noise"], [f"q(x_t | x_0) of {Path(cfg.init_image).name}"])[0]


def sample(cfg: DictConfig, prompts: list[str] | None = None) -> Path:
    """Write one PNG per image (`<prompt:04d>_<k:02d>.png`), samples.jsonl and grid.png to
    cfg.out_dir (plus `<name>_trajectory.png/.gif` with save_trajectory); returns the grid's path.
    `prompts`: those `checks.check(cfg)` returned (checked here when not given)."""
    prompts = checks.check(cfg) if prompts is None else prompts
    device = _device(cfg)
    precision = str(cfg.get("precision", "fp32"))
    init_image, strength = cfg.get("init_image"), float(cfg.get("strength", 1.0))
    model = _load_model(cfg, device)
    settings = sampling_settings(cfg, model)
    sampler_name, steps, eta = settings["sampler"], settings["steps"], float(cfg.get("eta", 0.0))
    guidance = Guidance.from_settings(cfg, settings)
    # What each record states: eta only where the sampler has one, img2img's steps as run.
    stated = {"eta": eta} if takes_eta(make_sampler(sampler_name, model.noise_scheduler.config)) else {}
    stated |= {"steps": steps - start_step(steps, strength), "schedule_steps": steps} if init_image else {"steps": steps}
    prec.apply(model, precision)
    init = encode_image(model.autoencoder, init_image, model.image_size) if init_image else None
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    k = int(cfg.num_images_per_prompt)
    jobs = [(p, i) for p in range(len(prompts)) for i in range(k)]
    images: list[torch.Tensor] = []
    records = []
    batches = range(0, len(jobs), cfg.batch_size)
    with output_above_bars(), StepBar(len(batches), stated["steps"]) as bar:
        for start in batches:
            batch = jobs[start: start + cfg.batch_size]
            seeds = [int(cfg.seed) + p * k + i for p, i in batch]
            texts = [prompts[p] for p, _ in batch]
            names = [f"{p:04d}_{i:02d}" for p, i in batch]
            sampler = make_sampler(sampler_name, model.noise_scheduler.config)
            recorder = X0Recorder(int(cfg.trajectory_every)) if cfg.get("save_trajectory") else None
            with prec.explained(precision, device):
                out = generate(model.unet, sampler, model.text_encoder, model.autoencoder, texts, seeds,
                               model.latent_shape, steps=steps, guidance_scale=guidance.scale,
                               guidance_rescale=guidance.rescale, guidance_interval=guidance.interval,
                               eta=eta,
                               negative_prompt=str(cfg.negative_prompt),
                               prompt_embeds=encode_prompts(model.text_encoder, texts),
                               init_latents=None if init is None else init.repeat(len(batch), 1, 1, 1),
                               strength=strength, on_step=recorder, progress=bar).cpu()
            if recorder is not None:
                write_strip_and_gif(recorder.decoded(model.autoencoder), out_dir, [f"{n}_trajectory" for n in names],
                                    [f"predicted x0: {t}" for t in texts])
            for (p, i), name, seed, image in zip(batch, names, seeds, out):
                atomic_save_png(to_pil(image), out_dir / f"{name}.png")
                images.append(image)
                records.append({"file": f"{name}.png", "prompt": prompts[p], "seed": seed, "sampler": sampler_name,
                                **stated, **guidance.as_dict(),
                                "negative_prompt": str(cfg.negative_prompt), "precision": precision,
                                **({"init_image": str(init_image), "strength": strength} if init_image else {})})
    atomic_write_text(out_dir / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    rows = [torch.stack(images[p * k:(p + 1) * k]) for p in range(len(prompts))]
    grid_path = out_dir / "grid.png"
    atomic_save_png(captioned_grid(rows, prompts), grid_path)
    return grid_path
