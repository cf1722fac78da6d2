"""`sample.py`'s body: prompts in, PNGs + samples.jsonl + a captioned grid out; img2img, prompt
mixing, trajectories, precision; `mode=forward_noise` and `export_dir=` are the other two jobs."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from text_ldm.models.components import DiffusionComponents
from text_ldm.sampling import precision as prec
from text_ldm.sampling.guidance import Guidance
from text_ldm.sampling.img2img import encode_image
from text_ldm.sampling.mixing import encode_prompts
from text_ldm.sampling.pipeline import generate
from text_ldm.sampling.diffusers_pipeline import start_step
from text_ldm.sampling.schedulers import check_sampler_name, make_sampler, resolve_sampling, takes_eta
from text_ldm.sampling.trajectory import X0Recorder, forward_noise, write_strip_and_gif
from text_ldm.utils.atomic import atomic_save_png, atomic_write_text
from text_ldm.utils.grid import captioned_grid, to_pil

MODES = ("sample", "forward_noise")


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


def validate(cfg: DictConfig) -> None:
    """Everything checkable before the checkpoint loads (null sampler / steps / guidance are its own)."""
    problems = check_sampler_name(cfg.get("sampler"))
    if cfg.get("steps") is not None and int(cfg.steps) < 1:
        problems.append(f"steps={cfg.steps} must be >= 1")
    problems += Guidance.cfg_problems(cfg)
    if cfg.num_images_per_prompt < 1:
        problems.append(f"num_images_per_prompt={cfg.num_images_per_prompt} must be >= 1")
    if cfg.batch_size < 1:
        problems.append(f"batch_size={cfg.batch_size} must be >= 1")
    if not 0 <= float(cfg.get("strength", 1.0)) <= 1:
        problems.append(f"strength={cfg.strength} must be in [0, 1]")
    if int(cfg.get("trajectory_every", 1)) < 1:
        problems.append(f"trajectory_every={cfg.trajectory_every} must be >= 1")
    if cfg.get("mode", "sample") not in MODES:
        problems.append(f"mode={cfg.mode} must be one of {list(MODES)}")
    if cfg.get("precision", "fp32") not in prec.DTYPES:
        problems.append(f"precision={cfg.precision} must be one of {sorted(prec.DTYPES)}")
    if problems:
        raise ValueError("; ".join(problems))
    if cfg.get("init_image") and not Path(cfg.init_image).is_file():
        raise FileNotFoundError(f"init_image {cfg.init_image} does not exist")


def _device(cfg: DictConfig) -> str:
    return cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")


def _load_model(cfg: DictConfig, device: str) -> DiffusionComponents:
    return DiffusionComponents.from_checkpoint(cfg.ckpt, use_ema=bool(cfg.use_ema),
                                               vae_pretrained=cfg.get("vae_pretrained")).to(device)


def sampling_settings(cfg: DictConfig, model: DiffusionComponents) -> dict:
    """{"sampler", "steps", "guidance_scale"}: the command line's, else the checkpoint's; says which."""
    settings, line = resolve_sampling(model.objective, model.sampling, cfg.get("sampler"), cfg.get("steps"),
                                      cfg.get("guidance_scale"))
    print(line)
    return settings


def run(cfg: DictConfig) -> Path:
    """Dispatch on what was asked: export_dir= -> the exported folder; mode=forward_noise -> its
    strip; otherwise sampling -> the grid."""
    if cfg.get("export_dir"):
        from text_ldm.sampling.export import export_pipeline

        validate(cfg)
        model = _load_model(cfg, "cpu")
        return export_pipeline(model, sampling_settings(cfg, model)["sampler"], cfg.export_dir)
    if cfg.get("mode", "sample") == "forward_noise":
        return forward_noise_strip(cfg)
    return sample(cfg)


def forward_noise_strip(cfg: DictConfig) -> Path:
    """`mode=forward_noise init_image=PATH`: the image encoded, noised to each of
    `forward_noise_timesteps` with the training schedule, decoded: forward_noise.png (+ .gif)."""
    if not cfg.get("init_image"):
        raise ValueError("mode=forward_noise needs init_image=PATH")
    validate(cfg)
    model = _load_model(cfg, _device(cfg))
    latents = encode_image(model.autoencoder, cfg.init_image, model.image_size)
    frames = forward_noise(model, latents, list(cfg.forward_noise_timesteps),
                           int(cfg.seed))
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_strip_and_gif(frames, out_dir, ["forward_noise"], [f"q(x_t | x_0) of {Path(cfg.init_image).name}"])[0]


def sample(cfg: DictConfig) -> Path:
    """Write one PNG per image (`<prompt:04d>_<k:02d>.png`), samples.jsonl and grid.png to
    cfg.out_dir (plus `<name>_trajectory.png/.gif` with save_trajectory); returns the grid's path."""
    prompts = read_prompts(cfg)
    validate(cfg)
    device = _device(cfg)
    precision = str(cfg.get("precision", "fp32"))
    init_image, strength = cfg.get("init_image"), float(cfg.get("strength", 1.0))
    model = _load_model(cfg, device)
    settings = sampling_settings(cfg, model)
    sampler_name, steps, eta = settings["sampler"], settings["steps"], float(cfg.get("eta", 0.0))
    guidance = Guidance.from_cfg(cfg, scale=settings["guidance_scale"])
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
    for start in tqdm(range(0, len(jobs), cfg.batch_size), desc="batches", unit="batch"):
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
                           strength=strength, on_step=recorder).cpu()
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
