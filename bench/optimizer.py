"""AdamW's three implementations, and Muon + AdamW, on a training step of the same UNet, side by side in one process.

    python bench/optimizer.py [--model unet_demo] [--batch 16] [--threads 1] [--reps 40] [--device cpu] [--muon-ranks 2]

Defaults are one `make demo` process: unet_demo on 4 x 16 x 16 latents, batch 16, one thread. Each rep runs a
whole step (forward, backward, optimizer.step, zero_grad) for every variant in turn, then times optimizer.step
alone on fixed gradients; the table gives medians, so machine load hits every variant alike. The last column is
how far each variant's weights drifted from the for-loop one's after all reps (rounding only for the AdamW
variants: same maths; Muon takes other steps, so n/a). Muon's row is one process doing all the orthogonalisation:
under DDP each rank does its share: `--muon-ranks N` then also times MuonWithAdamW.step alone in N gloo processes
(fixed gradients, as after DDP's all-reduce), each rank's median, against one process.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir

from text_ldm.models.unet import build_unet
from text_ldm.utils.config import plain
from text_ldm.utils.muon import MuonWithAdamW

VARIANTS = {"AdamW, for-loop (torch's CPU default)": (torch.optim.AdamW, {"foreach": False}),
            "AdamW, foreach": (torch.optim.AdamW, {"foreach": True}),
            "AdamW, fused (the config's default)": (torch.optim.AdamW, {"fused": True}),
            "Muon + fused AdamW (`model/optimizer=muon`)": (MuonWithAdamW, {"fused": True})}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="unet_demo")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--muon-ranks", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with initialize_config_dir(str(Path("conf").resolve()), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={args.model}"])
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 4, 16, 16, generator=gen).to(device)
    t = torch.randint(0, 1000, (args.batch,), generator=gen).to(device)
    ctx = torch.randn(args.batch, 32, 384, generator=gen).to(device)
    setups = {}
    for name, (optimizer, kwargs) in VARIANTS.items():
        torch.manual_seed(0)
        unet = build_unet(plain(cfg.model.unet), 4, 16, 384).to(device)
        setups[name] = (unet, optimizer(unet.named_parameters(), lr=1e-4, weight_decay=0.01, **kwargs))
    fixed_grads = [torch.full_like(p, 1e-3) for p in next(iter(setups.values()))[0].parameters()]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def whole_step(unet, opt):
        loss = (unet(x, t, encoder_hidden_states=ctx).sample - x).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()

    step_s = {name: [] for name in setups}
    opt_s = {name: [] for name in setups}
    for rep in range(args.reps + 2):  # the first two are warm-up
        for name, (unet, opt) in setups.items():
            sync()
            start = time.perf_counter()
            whole_step(unet, opt)
            sync()
            whole = time.perf_counter() - start
            for p, g in zip(unet.parameters(), fixed_grads):
                p.grad = g.clone()
            sync()
            start = time.perf_counter()
            opt.step()
            sync()
            if rep >= 2:
                step_s[name].append(whole)
                opt_s[name].append(time.perf_counter() - start)
            opt.zero_grad()
    print(f"{args.model}, batch {args.batch}, {args.threads} thread(s), {args.device}, {args.reps} reps (medians)")
    print("| optimizer | optimizer.step ms | whole step ms | whole step vs for-loop | weights vs for-loop (max abs) |")
    print("|---|---|---|---|---|")
    base_name = next(iter(setups))
    base = statistics.median(step_s[base_name])
    base_params = list(setups[base_name][0].parameters())
    for name, (unet, _) in setups.items():
        whole = statistics.median(step_s[name])
        drift = max((a - b).abs().max().item() for a, b in zip(unet.parameters(), base_params))
        drift = "n/a" if name.startswith("Muon") else f"{drift:.1e}"
        print(f"| {name} | {1000 * statistics.median(opt_s[name]):.1f} | {1000 * whole:.1f} | {base / whole:.2f}x "
              f"| {drift} |")
    if args.muon_ranks > 1:
        muon_step_ms(0, 1, args, None)
        mp.spawn(muon_step_ms, args=(args.muon_ranks, args, f"/tmp/bench_optimizer_{os.getpid()}"), nprocs=args.muon_ranks)


def muon_step_ms(rank: int, world: int, args: argparse.Namespace, init_file: str | None) -> None:
    torch.set_num_threads(args.threads)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    with initialize_config_dir(str(Path("conf").resolve()), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={args.model}"])
    torch.manual_seed(0)
    unet = build_unet(plain(cfg.model.unet), 4, 16, 384)
    opt = MuonWithAdamW(unet.named_parameters(), lr=1e-4, fused=True)
    times = []
    for _ in range(args.reps + 2):
        for p in unet.parameters():
            p.grad = torch.full_like(p, 1e-3)
        if world > 1:
            dist.barrier()
        start = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - start)
    print(f"Muon optimizer.step, {world} process(es), rank {rank}: {1000 * statistics.median(times[2:]):.1f} ms")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
