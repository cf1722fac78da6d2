"""Everything about an evaluate.py config that can be checked before torch, the checkpoint and the
dataset load (evaluate.py runs it first, and `app.evaluate` again for callers that skip evaluate.py)."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from text_ldm.data.celeba_layout import ATTRIBUTE_FILE, IMAGE_DIR
from text_ldm.evaluation.prompts import PHRASINGS
from text_ldm.sampling.checks import CKPT_HELP, NULLABLE, check_vae_pretrained, sampling_problems
from text_ldm.utils.cli import (check_checkpoint_file, check_input_file, check_output_dir, raise_problems, require,
                                value_problems)

AT_LEAST_ONE = ("n_prompts", "num_images_per_prompt", "batch_size", "image_size", "classifier.epochs",
                "classifier.batch_size", "classifier.width")
INTS = (*AT_LEAST_ONE, "seed", "steps", "classifier.seed")
NUMBERS = ("guidance_scale", "guidance_rescale", "eta", "classifier.lr", "classifier.blur_sigma_max")
BOOLS = ("use_ema", "empty_prompt_floor")
# What evaluate.py reads of a CelebA-layout root (captions are not among them).
DATA_ENTRIES = (f"{IMAGE_DIR}/", ATTRIBUTE_FILE, "train.txt", "test.txt")


def problems(cfg: DictConfig) -> list[str]:
    """The evaluate.py keys' types, then ranges (null sampler / steps / guidance are the checkpoint's)."""
    found = value_problems(cfg, INTS, NUMBERS, BOOLS, NULLABLE)
    if found:
        return found  # the range checks would trip over a string where a number belongs
    found = sampling_problems(cfg)
    for key in AT_LEAST_ONE:
        if OmegaConf.select(cfg, key) < 1:
            found.append(f"{key}={OmegaConf.select(cfg, key)} must be >= 1")
    if cfg.classifier.lr <= 0:
        found.append(f"classifier.lr={cfg.classifier.lr} must be > 0")
    if cfg.classifier.blur_sigma_max < 0:
        found.append(f"classifier.blur_sigma_max={cfg.classifier.blur_sigma_max} must be >= 0")
    if cfg.get("phrasing", "templates") not in PHRASINGS:
        found.append(f"phrasing={cfg.phrasing} must be one of {list(PHRASINGS)}")
    return found


def check_data_root(path) -> Path:
    """The dataset root, or one line naming what it lacks of a CelebA-layout root."""
    root = Path(path)
    wanted = ", ".join(DATA_ENTRIES)
    if root.is_file():
        raise ValueError(f"data_root={root} is a file; give a CelebA-layout dataset root ({wanted})")
    if not root.is_dir():
        raise FileNotFoundError(f"data_root={root} does not exist (a CelebA-layout dataset root: {wanted})")
    missing = [entry for entry in DATA_ENTRIES if not (root / entry.rstrip("/")).exists()]
    for split in ("train", "test"):
        if f"{split}.txt" in missing and (root / f"{split}.pickle").is_file():
            missing.remove(f"{split}.txt")
    if missing:
        raise ValueError(f"data_root={root} is not a CelebA-layout dataset root: it lacks {', '.join(missing)} "
                         f"(docs/evaluation.md)")
    return root


def check(cfg: DictConfig) -> None:
    """Raise the first problem of this config as one line naming its key (ValueError, FileNotFoundError)."""
    require(cfg, "ckpt", CKPT_HELP)
    raise_problems(problems(cfg))
    check_checkpoint_file(cfg.ckpt, "ckpt")
    check_data_root(cfg.data_root)
    check_vae_pretrained(cfg.get("vae_pretrained"))
    check_input_file("inception_weights", cfg.get("inception_weights"))
    check_output_dir("cache_dir", cfg.get("cache_dir"))
    check_output_dir("out_dir", cfg.out_dir)
