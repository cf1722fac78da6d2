"""Cost of one EMA update on `make demo`'s LatentDiffusion module, side by side in one run:

  (a) Lightning's EMAWeightAveraging as shipped: torch AveragedModel + get_ema_avg_fn over every parameter;
  (b) the same over every parameter with get_ema_multi_avg_fn (foreach);
  (c) ours, TrainableEMAModel: one fused lerp over the parameters that require grad.

    python bench/ema_cost.py [--experiment demo] [--repeats 20] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn, get_ema_multi_avg_fn

from text_ldm.callbacks.ema import TrainableEMAModel

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))


def seconds_per_update(averaged: AveragedModel, model: torch.nn.Module, repeats: int) -> float:
    for _ in range(3):
        averaged.update_parameters(model)
    start = time.perf_counter()
    for _ in range(repeats):
        averaged.update_parameters(model)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", default="demo")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--decay", type=float, default=0.995)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", [f"experiment={args.experiment}"])
    model = instantiate(cfg.model)
    total = sum(q.numel() for q in model.parameters())
    trainable = sum(q.numel() for q in model.parameters() if q.requires_grad)
    variants = {
        "(a) Lightning EMAWeightAveraging (avg_fn, all params)": AveragedModel(model, avg_fn=get_ema_avg_fn(args.decay)),
        "(b) AveragedModel + multi_avg_fn (foreach, all params)":
            AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.decay)),
        "(c) ours: TrainableEMAModel (fused lerp, trainable only)": TrainableEMAModel(model, args.decay),
    }
    times = {name: seconds_per_update(avg, model, args.repeats) for name, avg in variants.items()}
    print(f"\nexperiment={args.experiment}: {total / 1e6:.1f}M parameters, {trainable / 1e6:.2f}M trainable; "
          f"CPU, {torch.get_num_threads()} threads; {args.repeats} updates each\n")
    print("| EMA update | ms / step | vs (a) |")
    print("|---|---|---|")
    base = times[next(iter(times))]
    for name, sec in times.items():
        print(f"| {name} | {sec * 1000:.2f} | {base / sec:.1f}x |")


if __name__ == "__main__":
    main()
