"""Export a trained checkpoint as a diffusers pipeline folder (safetensors weights)."""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from text_ldm.models.components import DiffusionComponents
from text_ldm.sampling import diffusers_pipeline
from text_ldm.sampling.checks import check_export_dir
from text_ldm.sampling.schedulers import make_sampler, resolve_sampling

PIPELINE_FILE = "pipeline.py"


def build_pipeline(model: DiffusionComponents, settings: Mapping[str, Any]):
    """The TextLDMPipeline holding the model's own modules (no copies), a settings["sampler"] scheduler, and
    resolve_sampling's steps, guidance_scale and guidance_interval (None: every step) as its call's defaults."""
    ae = model.autoencoder
    if ae.model is None:
        raise ValueError("export needs an autoencoder; a pixel-space (vae kind=identity) model cannot be exported")
    te = model.text_encoder
    return diffusers_pipeline.TextLDMPipeline(
        unet=model.unet, vqvae=ae.model, scheduler=make_sampler(settings["sampler"], model.noise_scheduler.config),
        text_encoder=te.model, tokenizer=te.tokenizer, max_length=te.max_length, granularity=te.granularity,
        max_clauses=te.max_clauses,
        use_attention_mask=bool(te.use_attention_mask), latent_scale=float(ae.scaling_factor),
        force_not_quantize=bool(ae.force_not_quantize), default_steps=int(settings["steps"]),
        default_guidance_scale=float(settings["guidance_scale"]),
        default_guidance_interval=settings["guidance_interval"])


def export_pipeline(model: DiffusionComponents, sampler: str, out_dir: str | os.PathLike,
                    overwrite: bool = False, *, steps: int | None = None, guidance_scale: float | None = None,
                    guidance_interval: Sequence[float] | None = None) -> Path:
    """Write `out_dir`: unet/, vqvae/, scheduler/, text_encoder/, tokenizer/ (safetensors weights),
    model_index.json and pipeline.py (this package's TextLDMPipeline, so that
    `DiffusionPipeline.from_pretrained(out_dir, trust_remote_code=True)` needs no text_ldm).

    steps, guidance_scale, guidance_interval: what a call of the exported pipeline uses when not given
    (model_index.json's default_*); None takes the checkpoint's, resolved as in sample.py.

    Written into a temporary sibling and renamed into place, so a crash never leaves half a folder;
    an existing non-empty `out_dir` is refused unless `overwrite`, then replaced."""
    out_dir = Path(out_dir)
    check_export_dir(out_dir, overwrite)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        settings, _ = resolve_sampling(model.objective, model.sampling, sampler, steps, guidance_scale,
                                       guidance_interval)
        pipe = build_pipeline(model, settings)
        pipe.save_pretrained(tmp, safe_serialization=True)
        shutil.copyfile(diffusers_pipeline.__file__, tmp / PIPELINE_FILE)
        index_path = tmp / "model_index.json"
        index = json.loads(index_path.read_text(encoding="utf-8"))
        # [file stem, class]: diffusers then loads the class from pipeline.py in this folder.
        index["_class_name"] = [Path(PIPELINE_FILE).stem, type(pipe).__name__]
        index_path.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
