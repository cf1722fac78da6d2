"""Everything about a sample.py config that can be checked before torch, diffusers and the checkpoint
load (sample.py runs it first, and `app.run` again for callers that skip sample.py)."""
from __future__ import annotations

import numbers
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig
from PIL import Image, UnidentifiedImageError

from text_ldm.sampling.names import PRECISIONS, check_sampler_name
from text_ldm.utils.cli import (check_checkpoint_file, check_input_file, check_output_dir, raise_problems, require,
                                value_problems)

MODES = ("sample", "forward_noise")
CKPT_HELP = "a training checkpoint, e.g. outputs/demo/checkpoints/last.ckpt"
INTS = ("num_images_per_prompt", "seed", "steps", "batch_size", "trajectory_every")
NUMBERS = ("guidance_scale", "guidance_rescale", "eta", "strength")
BOOLS = ("use_ema", "save_trajectory", "overwrite")
NULLABLE = ("steps", "guidance_scale")


def guidance_problems(scale, rescale, interval) -> list[str]:
    """What is wrong with these guidance settings, as messages that name the config keys (empty: fine;
    a null scale is the checkpoint's, resolved later)."""
    found = []
    if scale is not None and float(scale) < 0:
        found.append(f"guidance_scale={scale} must be >= 0")
    if not 0.0 <= float(rescale) <= 1.0:
        found.append(f"guidance_rescale={rescale} must be in [0, 1]")
    if interval is not None:
        bounds = list(interval) if isinstance(interval, Sequence) and not isinstance(interval, str) else [interval]
        numeric = all(isinstance(b, numbers.Real) and not isinstance(b, bool) for b in bounds)
        if len(bounds) != 2 or not numeric or not 0 <= float(bounds[0]) <= float(bounds[1]):
            found.append(f"guidance_interval={bounds} must be [t_lo, t_hi] with 0 <= t_lo <= t_hi "
                         "(training timesteps, 0 = clean), or null")
    return found


def sampling_problems(cfg: DictConfig) -> list[str]:
    """The keys sample.py and evaluate.py share (sampler, steps, guidance, eta), once their types are right."""
    found = check_sampler_name(cfg.get("sampler"))
    if cfg.get("steps") is not None and cfg.steps < 1:
        found.append(f"steps={cfg.steps} must be >= 1")
    found += guidance_problems(cfg.guidance_scale, cfg.get("guidance_rescale") or 0.0, cfg.get("guidance_interval"))
    if not 0 <= cfg.get("eta", 0.0) <= 1:
        found.append(f"eta={cfg.eta} must be in [0, 1]")
    return found


def problems(cfg: DictConfig) -> list[str]:
    """The sample.py keys' types, then ranges (null sampler / steps / guidance are the checkpoint's)."""
    found = value_problems(cfg, INTS, NUMBERS, BOOLS, NULLABLE)
    if found:
        return found  # the range checks would trip over a string where a number belongs
    found = sampling_problems(cfg)
    for key in ("num_images_per_prompt", "batch_size", "trajectory_every"):
        if cfg.get(key, 1) < 1:
            found.append(f"{key}={cfg[key]} must be >= 1")
    if not 0 <= cfg.get("strength", 1.0) <= 1:
        found.append(f"strength={cfg.strength} must be in [0, 1]")
    if cfg.get("mode", "sample") not in MODES:
        found.append(f"mode={cfg.mode} must be one of {list(MODES)}")
    if cfg.get("precision", "fp32") not in PRECISIONS:
        found.append(f"precision={cfg.precision} must be one of {sorted(PRECISIONS)}")
    steps = cfg.get("forward_noise_timesteps") or []
    if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t for t in steps):
        found.append(f"forward_noise_timesteps={list(steps)} must be a list of timesteps >= 0")
    return found


def read_prompts(cfg: DictConfig) -> list[str]:
    """prompt= as one prompt, or prompts_file='s non-empty lines."""
    if (cfg.get("prompt") is None) == (cfg.get("prompts_file") is None):
        raise ValueError('give exactly one of prompt="..." or prompts_file=FILE')
    if cfg.get("prompt") is not None:
        return [str(cfg.prompt)]
    check_input_file("prompts_file", cfg.prompts_file)
    path = Path(cfg.prompts_file)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"prompts_file={path} is not UTF-8 text (byte {err.start}: {err.reason})") from err
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompts_file={path} holds no prompts (one per line)")
    return prompts


def check_image(key: str, path) -> None:
    """FileNotFoundError / ValueError unless `path` is an image file PIL can read."""
    check_input_file(key, path)
    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:  # PIL reports broken files with all three
        raise ValueError(f"{key}={path} is not a readable image ({err})") from err


def check_vae_pretrained(path) -> None:
    """A relative vae_pretrained may be a hub id, which only diffusers can tell; an absolute one must exist."""
    if path and Path(path).is_absolute() and not Path(path).exists():
        raise FileNotFoundError(f"vae_pretrained={path} does not exist")


def check_export_dir(path, overwrite: bool = False) -> None:
    """ValueError when `path` is a file, a non-empty directory without `overwrite`, or not writable."""
    path = Path(path)
    if path.is_file():
        raise ValueError(f"export_dir={path} is a file; give a directory for the exported pipeline")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ValueError(f"export_dir={path} already exists and is not empty; add overwrite=true to replace it")
    check_output_dir("export_dir", path)


def check(cfg: DictConfig) -> list[str]:
    """Raise the first problem of this config as one line naming its key (ValueError, FileNotFoundError);
    return the prompts to sample (none for export_dir= and mode=forward_noise)."""
    require(cfg, "ckpt", CKPT_HELP)
    raise_problems(problems(cfg))
    export, strip = bool(cfg.get("export_dir")), cfg.get("mode", "sample") == "forward_noise"
    prompts = [] if export or strip else read_prompts(cfg)
    if strip and not cfg.get("init_image"):
        raise ValueError("mode=forward_noise needs init_image=PATH")
    if cfg.get("init_image") and not export:
        check_image("init_image", cfg.init_image)
    check_checkpoint_file(cfg.ckpt, "ckpt")
    check_vae_pretrained(cfg.get("vae_pretrained"))
    if export:
        check_export_dir(cfg.export_dir, cfg.get("overwrite", False))
    else:
        check_output_dir("out_dir", cfg.out_dir)
    return prompts
