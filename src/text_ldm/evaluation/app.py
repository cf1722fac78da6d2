"""`evaluate.py`'s body: attribute fidelity (ceiling / samples / floors), FID-KID or their offline
stand-ins, CLIP score; prints a table and writes metrics.json beside the samples."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from text_ldm.data.celeba_layout import CelebALayout, read_attributes
from text_ldm.evaluation import checks
from text_ldm.evaluation.attribute_classifier import (FEATURE_NAME, ClassifierConfig, ClassifierFeatures,
                                                      get_classifier, load_images, predict)
from text_ldm.evaluation.fidelity import (accuracy_by_target, accuracy_vs_targets, format_by_target, format_table,
                                         majority_floor, majority_values)
from text_ldm.evaluation.image_metrics import clip_score, fid_kid
from text_ldm.evaluation.prompts import build_prompts
from text_ldm.evaluation.reconstruction import reconstruction_fidelity
from text_ldm.models.components import DiffusionComponents
from text_ldm.sampling.guidance import Guidance
from text_ldm.sampling.pipeline import generate
from text_ldm.sampling.progress import StepBar, output_above_bars
from text_ldm.sampling.app import pick_device, sampling_settings
from text_ldm.sampling.schedulers import make_sampler, takes_eta
from text_ldm.utils.atomic import atomic_save_png, atomic_write_text
from text_ldm.utils.grid import to_pil

COLUMNS = {"ceiling": "ceiling (real test)", "prompt_rows": "real, prompts' rows", "reconstructions": "AE reconstructions", "samples": "samples", "empty_prompt_floor": "empty-prompt floor",
           "majority_floor": "majority floor"}


def sample_images(model: DiffusionComponents, sampler_name: str, texts: Sequence[str], seeds: Sequence[int], steps: int,
                  guidance: Guidance | float, batch_size: int, desc: str, eta: float = 0.0) -> torch.Tensor:
    """(N, 3, H, W) images in [0, 1] on the CPU, one per (text, seed), generated in batches under one
    bar over all their denoising steps."""
    guidance = guidance if isinstance(guidance, Guidance) else Guidance(float(guidance))
    out = []
    batches = range(0, len(texts), batch_size)
    with output_above_bars(), StepBar(len(batches), steps, desc=desc) as bar:
        for start in batches:
            sampler = make_sampler(sampler_name, model.noise_scheduler.config)
            out.append(generate(model.unet, sampler, model.text_encoder, model.autoencoder,
                                list(texts[start: start + batch_size]), list(seeds[start: start + batch_size]),
                                model.latent_shape, steps=steps, guidance_scale=guidance.scale,
                                guidance_rescale=guidance.rescale, guidance_interval=guidance.interval, eta=eta,
                                progress=bar).cpu())
    return torch.cat(out)


def to_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """[0, 1] float images -> uint8 at size x size (antialiased resize when the model's size differs)."""
    if images.shape[-1] != size or images.shape[-2] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def _save_pngs(images: torch.Tensor, out_dir: Path, names: Sequence[str]) -> None:
    for image, name in zip(images, names):
        atomic_save_png(to_pil(image), out_dir / name)


def evaluate(cfg: DictConfig) -> dict:
    """Run the whole evaluation; returns the metrics dict that is also written to metrics.json."""
    started = time.time()
    checks.check(cfg)
    device = pick_device(cfg.device)
    k, size, seed = int(cfg.num_images_per_prompt), int(cfg.image_size), int(cfg.seed)
    phrasing = str(cfg.get("phrasing", "templates"))
    layout = CelebALayout(checks.check_data_root(cfg.data_root))
    names, rows = read_attributes(layout.attribute_path)
    train_ids, test_ids = layout.split_ids("train"), layout.split_ids("test")
    prompts = build_prompts(names, rows, test_ids, int(cfg.n_prompts), seed, phrasing)  # fails fast on a bad n_prompts

    clf_config = ClassifierConfig(**cfg.classifier)
    classifier, clf_path = get_classifier(layout.root, names, rows, train_ids, size, clf_config,
                                          cache_dir=cfg.get("cache_dir"))
    real = load_images(layout.root, test_ids, size, desc="test images")
    real_predictions = predict(classifier, real)
    ceiling = accuracy_vs_targets(real_predictions, [rows[i] for i in test_ids], names)
    # The same targets as the samples, scored on the real images the prompts were written from: the
    # ceiling for exactly these prompts (a rare subgroup the classifier misreads shows up here).
    row_of = {item_id: n for n, item_id in enumerate(test_ids)}
    prompt_rows = accuracy_vs_targets(real_predictions[[row_of[p.source_id] for p in prompts]],
                                      [p.targets for p in prompts], names)

    model = DiffusionComponents.from_checkpoint(cfg.ckpt, use_ema=bool(cfg.use_ema),
                                                vae_pretrained=cfg.get("vae_pretrained")).to(device)
    settings = sampling_settings(cfg, model)
    sampler, steps, guidance = settings["sampler"], settings["steps"], Guidance.from_settings(cfg, settings)
    eta = float(cfg.get("eta", 0.0))  # a sampler without eta refuses eta > 0 in its first step
    has_eta = takes_eta(make_sampler(sampler, model.noise_scheduler.config))
    # The autoencoder bounds every sample: score its reconstructions of the same real test images.
    recon = reconstruction_fidelity(classifier, predict, model.autoencoder, real, [rows[i] for i in test_ids], names,
                                    image_size=model.image_size)
    texts = [p.text for p in prompts for _ in range(k)]
    targets = [p.targets for p in prompts for _ in range(k)]
    seeds = [seed + j for j in range(len(texts))]
    files = [f"{p:04d}_{i:02d}.png" for p in range(len(prompts)) for i in range(k)]
    out_dir = Path(cfg.out_dir)
    samples = sample_images(model, sampler, texts, seeds, steps, guidance, int(cfg.batch_size),
                           "prompted", eta)
    _save_pngs(samples, out_dir / "samples", files)
    fake = to_uint8(samples, size)
    fake_predictions = predict(classifier, fake)
    scores = {"ceiling": ceiling, "prompt_rows": prompt_rows, "reconstructions": recon["reconstructed"],
              "samples": accuracy_vs_targets(fake_predictions, targets, names)}
    by_target = accuracy_by_target(fake_predictions, targets, names)
    # The floor samples as many images again (a third of the run); sweeps that compare checkpoints skip it.
    if cfg.get("empty_prompt_floor", True):
        empty = sample_images(model, sampler, [""] * len(texts), seeds, steps, guidance,
                              int(cfg.batch_size), "empty prompt", eta)
        _save_pngs(empty, out_dir / "empty_prompt", files)
        scores["empty_prompt_floor"] = accuracy_vs_targets(predict(classifier, to_uint8(empty, size)), targets, names)
    scores["majority_floor"] = majority_floor(targets, majority_values(names, rows, train_ids), names)
    dist = fid_kid(real, fake, ClassifierFeatures(classifier).eval(), FEATURE_NAME,
                   inception_weights=cfg.get("inception_weights"))
    clip_value, clip_reason = clip_score(to_uint8(samples, samples.shape[-1]), texts, str(cfg.clip_model))

    table = format_table(names, {COLUMNS[key]: col for key, col in scores.items()})
    print(f"\nattribute accuracy (%), {len(prompts)} prompts x {k} images ({phrasing} phrasing), {sampler} {steps} steps"
          f"{f' eta {eta:g}' if eta else ''}, "
          f"guidance {guidance.describe()}, seed {seed}; '—' = no prompt states it\n{table}\n")
    print(f"samples where the prompt says yes / no (%): {format_by_target(by_target)}")
    print(f"autoencoder reconstruction gap (ceiling - reconstructions, mean accuracy): {recon['gap']['mean']:+.4f}")
    print(dist["line"])
    print(f"CLIP score ({cfg.clip_model}): {clip_value:.3f}" if clip_value is not None else clip_reason)

    metrics = {
        "ckpt": str(cfg.ckpt), "vae_pretrained": cfg.get("vae_pretrained"), "data_root": str(layout.root),
        "image_size": size,
        "n_prompts": len(prompts), "num_images_per_prompt": k, "phrasing": phrasing, "sampler": sampler, "steps": steps, "eta": eta if has_eta else None,
        **guidance.as_dict(), "seed": seed, "use_ema": bool(cfg.use_ema), "attributes": list(names),
        "attribute_accuracy": scores, "samples_by_target": by_target, "reconstruction_gap": recon["gap"],
        "classifier": {"path": str(clf_path), "config": dataclasses.asdict(clf_config), "num_train": len(train_ids),
                       "num_test": len(test_ids)},
        "image_metrics": {key: dist[key] for key in ("feature_extractor", "fd_label", "kd_label", "fd", "kd_mean",
                                                     "kd_std", "note")} | {"num_real": len(real), "num_fake": len(fake)},
        "feature_extractor": dist["feature_extractor"],
        "clip_score": clip_value, "clip_model": str(cfg.clip_model), "clip_skipped": clip_reason or None,
        "prompts": [{"text": p.text, "targets": p.targets, "source_id": p.source_id, "files": files[j * k:(j + 1) * k]}
                    for j, p in enumerate(prompts)],
        "elapsed_s": round(time.time() - started, 1),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    print(f"metrics: {out_dir / 'metrics.json'}")
    return metrics
