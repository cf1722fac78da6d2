"""Our training step alone, for one UNet config: samples/s, UNet TFLOP/s, MFU and peak memory.

bench/training.py compares whole loops (seed-style, diffusers, ours) side by side and so holds four
optimiser states at once; this script times only ours (LatentDiffusion._diffusion_loss + backward +
AdamW, warm text memo, latents already on the device as the cache serves them) so that a UNet
architecture, batch size or compile setting can be compared at the batch a real run would use.
Hydra overrides after the flags change the model, e.g. fewer, wider attention heads:

    python bench/unet_mfu.py --model unet_base --batch 64 --precision bf16-mixed --peak-tflops 989 \\
        --label "base, 64-d heads" model.unet.attention_head_dim=[4,6,8,12]

Prints one markdown table row (`--header` prints the header first); `--append FILE` also appends it.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch._dynamo
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

HEADER = ("| variant | UNet params M | batch | GFLOP / sample (train) | samples/s | UNet TFLOP/s | MFU | peak mem GiB |\n"
          "|---|---|---|---|---|---|---|---|")
CAPTIONS = ["a smiling woman with blond hair", "a man with a beard and eyeglasses", "a young woman wearing lipstick",
            "an old man with grey hair", ""]


def train_flops_per_sample(model, device) -> float:
    """torch.utils.flop_counter on a 2-sample forward without autograd (a counted full-batch forward keeps
    every activation and does not fit unet_base); training ~ 3x forward."""
    latents = torch.randn(2, *model.latent_shape, device=device)
    context = model.text_encoder(CAPTIONS[:2]).float()
    # unet.forward, not model(...): on torch 2.11 a compiled UNet whose first call ran under this dispatch
    # mode was evidently never compiled (its rows matched eager and compiled in no time)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.unet.forward(latents, torch.zeros(2, dtype=torch.long, device=device), encoder_hidden_states=context)
    return 3 * counter.get_total_flops() / 2


def seconds_per_step(model, batch: int, precision: str, steps: int, warmup: int, device: str) -> float:
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    opt = model.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    model.text_encoder(CAPTIONS)  # warm memo: in steady state every caption was encoded in an earlier epoch
    latents = torch.randn(batch, *model.latent_shape, device=device)
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(batch)]

    def step():
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            loss = model._diffusion_loss(latents, captions)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    start = time.perf_counter()
    for _ in range(warmup):
        step()
    synchronize(device)
    frames = torch._dynamo.utils.counters["frames"]
    print(f"warm-up {time.perf_counter() - start:.1f} s; torch.compile frames: {dict(frames)}, graph breaks: "
          f"{sum(torch._dynamo.utils.counters['graph_break'].values())}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="unet_tiny")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (a compiled UNet compiles here)")
    p.add_argument("--image-size", type=int, default=64, help="with the identity VAE the latents are 3 x size x size")
    p.add_argument("--vae", default="identity")
    p.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed", "16-mixed"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (989: H100/H200 dense bf16)")
    p.add_argument("--label", default=None)
    p.add_argument("--header", action="store_true")
    p.add_argument("--append", type=Path, default=None)
    p.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", [f"model={args.model}", f"vae={args.vae}", f"data.image_size={args.image_size}",
                                f"paths.root_dir={tmp}", f"paths.artifacts_dir={ROOT / 'artifacts'}",
                                f"model.compile={str(args.compile).lower()}",
                                f"model.channels_last={str(args.channels_last).lower()}", *args.overrides])
    torch.manual_seed(0)
    model = instantiate(cfg.model).to(device)
    model.cast_frozen(args.precision)
    flops = train_flops_per_sample(model, device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sec = seconds_per_step(model, args.batch, args.precision, args.steps, args.warmup, device)
    tflops = flops * args.batch / sec / 1e12
    mfu = f"{100 * tflops / args.peak_tflops:.1f}%" if args.peak_tflops else "n/a"
    mem = f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if device == "cuda" else "n/a"
    params = sum(p.numel() for p in model.unet.parameters()) / 1e6
    label = args.label or " ".join([args.model, *args.overrides])
    label += "".join([" + compile" * args.compile, " + channels_last" * args.channels_last])
    row = f"| {label} | {params:.1f} | {args.batch} | {flops / 1e9:.0f} | {args.batch / sec:.1f} | {tflops:.1f} | {mfu} | {mem} |"
    if args.header:
        where = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        row = f"{where}, torch {torch.__version__}, {args.precision}\n\n{HEADER}\n{row}"
    print(row, flush=True)
    if args.append:
        with args.append.open("a") as f:
            f.write(row + "\n")


if __name__ == "__main__":
    main()
