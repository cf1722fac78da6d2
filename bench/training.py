"""Training-step throughput, side by side in one run, on the same UNet config and images:

  (a) seed-style: fp32, a DataLoader yielding one item at a time, the VAE and the text encoder
      run on every step (no latent cache, no text memo);
  (b) diffusers train_text_to_image: batched DataLoader, the VAE encodes the images every step,
      the text encoder runs every step;
  (c) ours: cached latents, memoised text embeddings, LatentDiffusion's loss at `--precision`; once
      in the first epoch (every caption new: the memo misses) and once in later epochs (memo warm);
      with `--ddp-procs N` (CPU) also as `experiment=demo` trains: N one-thread DDP processes sharing
      the batch (bench/training_ddp.py), timed after the round robin.

A step = data + text + (VAE) + UNet forward/backward + AdamW (no EMA, no logging, in every loop); the
loops take turns step by step, so a busy machine slows all three alike.
UNet FLOPs come from torch.utils.flop_counter (training ~ 3x forward); MFU needs the device's peak
(`--peak-tflops`, e.g. 989 for H100 SXM bf16 dense), so it reads n/a on CPU.

    python bench/training.py [--model unet_tiny] [--batch 32] [--steps 6] [--precision 32-true|bf16-mixed]
    python bench/training.py --ddp-procs 2   # 2-core CPU: adds the demo's two-process row
    # GPU, the real path's latent shape (3 x 64 x 64, as ldm-celebahq-256's VQ-f4 gives) without the hub:
    python bench/training.py --model unet_base --vae identity --image-size 64 --precision bf16-mixed --peak-tflops 989
"""
from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from text_ldm.data.celeba_layout import read_captions
from text_ldm.data.datamodule import CelebADataModule
from text_ldm.data.image_dataset import ImageDataset
from text_ldm.data.resumable import ResumableDataLoader
from text_ldm.data.toy_faces import build_toy_faces
from text_ldm.utils.config import plain
from training_ddp import time_ddp_step  # bench/training_ddp.py: bench/ is sys.path[0] when run as a script

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))


class CaptionedImages(Dataset):
    """Item i: {"image": (3, H, W) in [-1, 1], "caption": its first caption}."""

    def __init__(self, images: ImageDataset, captions: list[str]):
        self.images, self.captions = images, captions

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i]["image"], "caption": self.captions[i]}


def unet_step(model, opt, latents, captions, context_fn, autocast):
    """One UNet training step; returns nothing, synchronises the device."""
    with autocast():
        context = context_fn(captions).to(latents.dtype)
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (latents.shape[0],), device=latents.device)
        noisy = model.noise_scheduler.add_noise(latents, noise, t)
        loss = torch.nn.functional.mse_loss(model(noisy, t, context).float(), noise.float())
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def timed_round_robin(loops: list, steps: int, warmup: int) -> list[float]:
    """Seconds per step of each generator in `loops`, stepping them in turn (a, b, c, a, b, c, ...)
    so that a shared, busy machine slows them all alike."""
    for loop in loops:
        for _ in range(warmup):
            next(loop)
    totals = [0.0] * len(loops)
    for _ in range(steps):
        for i, loop in enumerate(loops):
            sync()
            start = time.perf_counter()
            next(loop)
            sync()
            totals[i] += time.perf_counter() - start
    return [t / steps for t in totals]


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def forever(loader):
    while True:
        yield from loader


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="unet_tiny")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--n", type=int, default=256, help="toy images generated for the run")
    p.add_argument("--vae", default="toy_vq", help="vae config; identity: latents are the images themselves")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed", "16-mixed"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--ddp-procs", type=int, default=0,
                   help="CPU: also time (c) warm as N one-thread DDP processes (experiment=demo's recipe)")
    args = p.parse_args()
    if args.ddp_procs and (torch.cuda.is_available() or args.precision != "32-true"):
        p.error("--ddp-procs times the CPU recipe: fp32 on a machine without a GPU")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tmp = Path(tempfile.mkdtemp(prefix="bench_training_"))
    root = tmp / "toy_faces"
    build_toy_faces(root, num_train=args.n, num_test=8, image_size=args.image_size, seed=0, progress=False)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", [f"model={args.model}", f"vae={args.vae}", f"data.image_size={args.image_size}",
                                f"paths.root_dir={tmp}", f"data.root={root}", "data.toy=null",
                                f"paths.artifacts_dir={ROOT / 'artifacts'}", f"data.batch_size={args.batch}",
                                f"model.compile={str(args.compile).lower()}",
                                f"model.channels_last={str(args.channels_last).lower()}"])
    torch.manual_seed(0)
    model = instantiate(cfg.model).to(device)
    model.cast_frozen(args.precision)
    init = copy.deepcopy(model.unet.state_dict())
    data_kwargs = {k: v for k, v in plain(cfg.data).items() if k not in ("_target_", "_recursive_")}
    dm = CelebADataModule(**data_kwargs)
    dm.prepare_data()  # latent cache: built once, outside the timing (that is the point of a cache)
    dm.setup("fit")
    cached = dm.datasets["train"]
    ids = dm.layout.collect("train")
    captions = [read_captions(dm.layout.caption_path(i))[0] for i in ids]
    images = CaptionedImages(ImageDataset(root, ids, args.image_size), captions)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(args.precision)

    def low():
        return torch.autocast(device, dtype=dtype) if dtype else torch.autocast(device, enabled=False)

    def fp32():
        return torch.autocast(device, enabled=False)

    uncached_text = model.text_encoder._encode  # the encoder itself, bypassing the memo
    vae = model.autoencoder
    vae_dtype = next(vae.parameters(), torch.empty(0)).dtype  # identity: no parameters, float32
    seed_text, seed_vae = copy.deepcopy(model.text_encoder).float(), copy.deepcopy(vae).float()  # (a) is fp32

    def fresh_opt(ours: bool = False):
        # (a) and (b) keep torch's default AdamW, as the seed and diffusers scripts do; ours is the config's
        model.unet.load_state_dict(init)
        extra = {} if ours else {"fused": None, "foreach": None}
        return instantiate(cfg.model.optimizer, **extra)(params=model.unet.parameters())

    def seed_loop():
        opt = fresh_opt()
        items = forever(DataLoader(images, batch_size=None, shuffle=True))  # one item at a time
        while True:
            batch = [next(items) for _ in range(args.batch)]
            x = torch.stack([b["image"] for b in batch]).to(device)
            with torch.no_grad():
                latents = seed_vae.encode(x).float()
            unet_step(model, opt, latents, [b["caption"] for b in batch], seed_text._encode, fp32)
            yield

    def diffusers_loop():
        opt = fresh_opt()
        batches = forever(DataLoader(images, batch_size=args.batch, shuffle=True, drop_last=True))
        while True:
            batch = next(batches)
            with torch.no_grad(), low():
                # cast_frozen may have put the VAE in bf16: feed it its own dtype, as img2img does
                latents = vae.encode(batch["image"].to(device, vae_dtype)).float()
            unet_step(model, opt, latents, list(batch["caption"]), uncached_text, low)
            yield

    def our_loop(warm_text: bool):
        opt = fresh_opt(ours=True)
        batches = forever(ResumableDataLoader(cached, args.batch, seed=0))
        warm, cold = model.text_encoder, copy.deepcopy(model.text_encoder)
        cold.cache_size = 0
        if warm_text:  # steady state: every caption of the epoch has been encoded once before
            all_captions = [cached[i]["caption"] for i in range(len(cached))] + [""]
            for i in range(0, len(all_captions), 64):
                warm(all_captions[i:i + 64])
        while True:
            batch = next(batches)
            model.text_encoder = warm if warm_text else cold
            with low():
                loss = model._diffusion_loss(batch["latent"].to(device), model._drop_captions(batch["caption"]))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            model.text_encoder = warm
            yield

    def unet_alone_loop():
        # The ceiling of any loop's speed-up over (a) on this UNet: a step with nothing but the UNet and
        # AdamW (one fixed batch of latents and text states, no data, no text encoder, no VAE).
        opt = fresh_opt(ours=True)
        fixed = torch.stack([cached[i]["latent"] for i in range(args.batch)]).to(device)
        states = model.text_encoder(captions[:args.batch]).detach()
        while True:
            unet_step(model, opt, fixed, None, lambda _: states, low)
            yield

    # FLOPs are linear in the batch: count a forward of 2 samples without autograd (a full-batch counted
    # forward holds every activation in fp32 and does not fit unet_base at batch 64 on an 80 GB GPU).
    latents = torch.randn(2, *model.latent_shape, device=device)
    context = model.text_encoder(captions[:2]).float()
    # unet.forward, not model(...): on torch 2.11 a compiled UNet whose first call ran under this dispatch
    # mode was evidently never compiled (its rows matched eager and compiled in no time)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.unet.forward(latents, torch.zeros(2, dtype=torch.long, device=device), encoder_hidden_states=context)
    train_flops = 3 * counter.get_total_flops() * args.batch / 2

    names = ["(a) seed-style loop", "(b) diffusers train_text_to_image", "(c) ours, first epoch (text memo cold)",
             "(c) ours, later epochs (text memo warm)", "(ceiling) the UNet step alone: no data, text or VAE"]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    seconds = timed_round_robin([seed_loop(), diffusers_loop(), our_loop(False), our_loop(True), unet_alone_loop()],
                                args.steps, args.warmup)
    if args.ddp_procs:
        names.append(f"(c) ours, warm, {args.ddp_procs} DDP processes x 1 thread")
        seconds.append(time_ddp_step(plain(cfg.model), data_kwargs, args.batch, args.steps, args.warmup, args.ddp_procs))
    mem = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} (all loops)" if torch.cuda.is_available() else "n/a"
    rows = [(name, args.batch / sec, train_flops / sec / 1e12, mem) for name, sec in zip(names, seconds)]
    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    params = sum(p.numel() for p in model.unet.parameters())
    print(f"\n{args.model} ({params / 1e6:.1f}M UNet params), batch {args.batch}, {args.image_size} px toy faces, "
          f"vae {args.vae} -> latents {tuple(model.latent_shape)}, "
          f"precision {args.precision} for (b) and (c), compile={args.compile}, channels_last={args.channels_last}; "
          f"{device_name}; UNet training step {train_flops / 1e9:.1f} GFLOP\n")
    print("| loop | samples/s | vs (a) | UNet TFLOP/s | MFU | peak mem GiB |")
    print("|---|---|---|---|---|---|")
    for name, rate, tflops, mem in rows:
        mfu = f"{100 * tflops / args.peak_tflops:.1f}%" if args.peak_tflops else "n/a"
        print(f"| {name} | {rate:.1f} | {rate / rows[0][1]:.2f}x | {tflops:.3f} | {mfu} | {mem} |")
    print(f"\nours (warm) vs (b): {rows[3][1] / rows[1][1]:.2f}x; ours (cold) vs (b): {rows[2][1] / rows[1][1]:.2f}x")
    print(f"ceiling vs (a): {rows[4][1] / rows[0][1]:.2f}x: no loop that runs this UNet step can beat (a) by more; "
          f"ours (warm) reaches {100 * rows[3][1] / rows[4][1]:.0f}% of it")
    if args.ddp_procs:
        print(f"ours ({args.ddp_procs} DDP processes) vs (a): {rows[5][1] / rows[0][1]:.2f}x, vs (b): "
              f"{rows[5][1] / rows[1][1]:.2f}x (timed after the round robin, not interleaved with it)")


if __name__ == "__main__":
    main()
