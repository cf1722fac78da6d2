"""Sampling speed, side by side in one run, on one checkpoint:

  (a) seed-style: DDPM 1000 steps, two UNet calls per step for CFG, fp32
  (b) ours: DPM++ 2M (or --sampler unipc) at 20 steps, one batched CFG call per step
  (c) (b) + torch.compile and channels_last, each kept only if it is faster than without

    python bench/sampling.py [--ckpt outputs/demo/checkpoints/last.ckpt] [--batch 8] [--a-steps-timed 20]
    python bench/sampling.py --fidelity 8        # also attribute accuracy of (a) and (b) on 8 prompts

(a) costs 100x (b); by default it is timed over its first --a-steps-timed of 1000 steps and the
per-step time extrapolated (every DDPM step costs the same two UNet calls; the table says so).
--a-steps-timed 1000 times it in full.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from text_ldm.models.components import DiffusionComponents
from text_ldm.sampling.pipeline import generate
from text_ldm.sampling.schedulers import make_sampler

ROOT = Path(__file__).resolve().parents[1]


PROMPT = "She has blond hair and wears eyeglasses."


class StopAfter(Exception):
    pass


def run_config(model, sampler: str, steps: int, batch: int, batched_cfg: bool, timed_steps: int | None = None,
               seed: int = 0, prompts: list[str] | None = None) -> tuple[float, torch.Tensor | None]:
    """Seconds for one batch of `batch` images (extrapolated from `timed_steps` when given) and the images."""
    prompts = prompts or [PROMPT] * batch
    seeds = [seed + i for i in range(len(prompts))]
    done = []

    def stop(i, t, x0):
        done.append(time.perf_counter())
        if timed_steps is not None and len(done) >= timed_steps + 1:
            raise StopAfter

    start = time.perf_counter()
    try:
        images = generate(model.unet, make_sampler(sampler, model.noise_scheduler.config), model.text_encoder,
                          model.autoencoder, prompts, seeds, model.latent_shape, steps=steps, guidance_scale=3.0,
                          batched_cfg=batched_cfg, on_step=stop if timed_steps is not None else None)
    except StopAfter:
        # done[k] is stamped after step k's UNet calls: the first step (warm-up) is left out
        per_step = (done[-1] - done[0]) / (len(done) - 1)
        return per_step * steps, None
    return time.perf_counter() - start, images


def optimise(model, use_compile: bool, channels_last: bool):
    fast = copy.deepcopy(model)
    if channels_last:
        fast.unet.to(memory_format=torch.channels_last)
    if use_compile:
        fast.unet = torch.compile(fast.unet)
    return fast


def fidelity(model, configs: dict[str, tuple[str, int, bool]], n_prompts: int, batch: int) -> dict[str, float]:
    """Mean attribute accuracy (evaluate.py's classifier and scoring, samples only) per config, same prompts/seeds."""
    from omegaconf import OmegaConf

    from text_ldm.data.celeba_layout import CelebALayout, read_attributes
    from text_ldm.evaluation.app import to_uint8
    from text_ldm.evaluation.attribute_classifier import ClassifierConfig, get_classifier, predict
    from text_ldm.evaluation.fidelity import accuracy_vs_targets
    from text_ldm.evaluation.prompts import build_prompts

    ecfg = OmegaConf.load(ROOT / "conf" / "evaluate.yaml")
    layout = CelebALayout(ROOT / "data" / "toy_faces")
    names, rows = read_attributes(layout.attribute_path)
    prompts = build_prompts(names, rows, layout.split_ids("test"), n_prompts, 0)
    classifier, _ = get_classifier(layout.root, names, rows, layout.split_ids("train"), 64,
                                   ClassifierConfig(**ecfg.classifier))
    out = {}
    for label, (sampler, steps, batched) in configs.items():
        images = []
        for s in range(0, len(prompts), batch):
            texts = [p.text for p in prompts[s:s + batch]]
            images.append(run_config(model, sampler, steps, len(texts), batched, seed=s, prompts=texts)[1])
        preds = predict(classifier, to_uint8(torch.cat(images), 64))
        out[label] = accuracy_vs_targets(preds, [p.targets for p in prompts], names)["mean"]
        print(f"fidelity {label}: {out[label]:.3f}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default=str(ROOT / "outputs/demo/checkpoints/last.ckpt"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sampler", default="dpmpp_2m", choices=["dpmpp_2m", "unipc"])
    parser.add_argument("--a-steps-timed", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of (b)/(c) after one warm-up; best kept")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="UNet dtype for (b) and (c)")
    parser.add_argument("--fidelity", type=int, default=0, help="also score (a) and (b) on this many prompts")
    parser.add_argument("--only-fidelity", action="store_true", help="skip the timing table")
    args = parser.parse_args()

    model = DiffusionComponents.from_checkpoint(args.ckpt, use_ema=True).to(args.device)
    print(f"device {args.device}, threads {torch.get_num_threads()}, batch {args.batch}, ckpt {args.ckpt}", flush=True)
    if not args.only_fidelity:
        speed_table(model, args)
    if args.fidelity:
        # (a)'s fidelity runs its CFG batched: the same arithmetic as two calls, at half the wall time
        scores = fidelity(model, {"(a)": ("ddpm", 1000, True), "(b)": (args.sampler, 20, True)}, args.fidelity,
                          args.batch)
        print(f"\nattribute fidelity (mean accuracy, {args.fidelity} prompts): " +
              ", ".join(f"{k} {v:.3f}" for k, v in scores.items()) + f"; (b) - (a) = {scores['(b)'] - scores['(a)']:+.3f}")


def speed_table(model, args) -> None:
    rows = []
    timed = None if args.a_steps_timed >= 1000 else args.a_steps_timed
    seconds, _ = run_config(model, "ddpm", 1000, args.batch, batched_cfg=False, timed_steps=timed)
    note = "full" if timed is None else f"extrapolated from {timed} steps"
    rows.append(("(a) DDPM 1000, 2 UNet calls/step, fp32", seconds, note))
    print(f"(a) {seconds:.1f} s/batch ({note})", flush=True)

    fast_model = copy.deepcopy(model)
    if args.dtype == "bf16":
        fast_model.unet.to(torch.bfloat16)

    def best(m):
        run_config(m, args.sampler, 3, args.batch, True)  # warm-up (and compilation: same shapes as 20 steps)
        return min(run_config(m, args.sampler, 20, args.batch, True)[0] for _ in range(args.repeats))

    b = best(fast_model)
    rows.append((f"(b) {args.sampler} 20, batched CFG, {args.dtype}", b, ""))
    print(f"(b) {b:.2f} s/batch", flush=True)
    variants = {}
    for name, kw in {"channels_last": dict(use_compile=False, channels_last=True),
                     "torch.compile": dict(use_compile=True, channels_last=False),
                     "compile + channels_last": dict(use_compile=True, channels_last=True)}.items():
        try:
            variants[name] = best(optimise(fast_model, **kw))
        except Exception as err:  # compile needs a C++ toolchain; report instead of failing the bench
            print(f"{name}: failed ({type(err).__name__}: {str(err).splitlines()[0][:120]})", flush=True)
        else:
            print(f"(c) {name}: {variants[name]:.2f} s/batch", flush=True)
    for name, secs in variants.items():
        rows.append((f"(c) (b) + {name}", secs, "kept" if secs < b and secs == min(variants.values()) else
                     ("slower than (b): not used" if secs >= b else "")))

    a_rate = args.batch / rows[0][1]
    print(f"\n| configuration | s / batch of {args.batch} | images/s | vs (a) | note |\n|---|---|---|---|---|")
    for label, secs, note in rows:
        print(f"| {label} | {secs:.2f} | {args.batch / secs:.3f} | {args.batch / secs / a_rate:.1f}x | {note} |")


if __name__ == "__main__":
    main()
