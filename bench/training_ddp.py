"""Loop (c) of bench/training.py as `experiment=demo` runs it on a CPU: N DDP processes of one thread each.

One process with two threads leaves the second core mostly idle at the demo's tensor sizes, so the
shipped CPU recipe trains as two one-thread processes.
This times that step: the global batch is split across the ranks, the UNet is wrapped in torch's
DistributedDataParallel (gloo), and the text memo is warm. training.py calls `time_ddp_step` after its
round robin when given `--ddp-procs N`, so the row lands in the same table as (a), (b) and (c).
"""
from __future__ import annotations

import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra.utils import instantiate
from torch.nn.parallel import DistributedDataParallel

from text_ldm.data.datamodule import CelebADataModule
from text_ldm.data.resumable import ResumableDataLoader


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, model_cfg: dict, data_kwargs: dict, batch: int, steps: int,
          warmup: int, results) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = instantiate(model_cfg)
    model.unet = DistributedDataParallel(model.unet)  # LatentDiffusion.forward calls self.unet
    opt = instantiate(model_cfg["optimizer"])(params=model.unet.parameters())
    dm = CelebADataModule(**data_kwargs)  # the parent built the cache; setup only opens it
    dm.setup("fit")
    cached = dm.datasets["train"]
    captions = [cached[i]["caption"] for i in range(len(cached))] + [""]
    for i in range(0, len(captions), 64):  # warm memo, as in training.py's later-epochs row
        model.text_encoder(captions[i:i + 64])
    loader = ResumableDataLoader(cached, batch // world, seed=rank)

    def batches():
        while True:
            yield from loader

    it = batches()
    for step in range(warmup + steps):
        if step == warmup:
            dist.barrier()
            start = time.perf_counter()
        batch_ = next(it)
        loss = model._diffusion_loss(batch_["latent"], model._drop_captions(batch_["caption"]))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    dist.barrier()
    if rank == 0:
        results.put((time.perf_counter() - start) / steps)
    dist.destroy_process_group()


def time_ddp_step(model_cfg: dict, data_kwargs: dict, batch: int, steps: int, warmup: int, procs: int) -> float:
    """Seconds per global step (`batch` samples across `procs` one-thread CPU processes)."""
    if batch % procs:
        raise ValueError(f"--batch {batch} does not split over --ddp-procs {procs}")
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    mp.start_processes(_rank, args=(procs, _free_port(), model_cfg, data_kwargs, batch, steps, warmup, results),
                       nprocs=procs, start_method="spawn")
    return results.get()
