"""How much text encoding a DDP run does, with each rank's own memo and with SharedTextMemo.

The captions a run draws follow from (seed, epoch, index) alone, so this replays `experiment=demo`'s
draws (balanced image draws, length-weighted captions, the ranks' interleaved shards, batch 16 per rank)
without the UNet and counts, per rank and step, the captions its memo lacks:
  own memo:    each rank encodes what its own memo lacks (after caption dropout, as training_step does);
  shared memo: the ranks pool what they lack and each encodes an equal share (what SharedTextMemo does).
The time per rank is then measured: MiniLM on one thread (the demo's setting) encodes the batches of
missing captions of every `--time-every`-th step, both ways in turn, and the totals are scaled up; the
shared memo's two object gathers per step are timed on `--ranks` spawned gloo processes.

    python bench/text_memo.py [--experiment demo] [--epochs 16] [--ranks 2] [--time-every 8]
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))


def drawn_batches(datamodule, epochs: int, ranks: int, batch: int) -> list[list[list[str]]]:
    """steps[s][r]: the captions rank r trains on at step s, as ResumableSampler and the dataset draw them."""
    dataset, weights = datamodule.datasets["train"], datamodule.train_weights
    steps = []
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        if weights is None:
            order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(datamodule.seed + epoch))
        else:
            order = torch.multinomial(torch.as_tensor(weights, dtype=torch.float64), len(dataset), replacement=True,
                                      generator=torch.Generator().manual_seed(datamodule.seed + epoch))
        shards = [order[r::ranks].tolist() for r in range(ranks)]
        for start in range(0, len(shards[0]) - batch + 1, batch):
            steps.append([[dataset.captions[i][dataset._caption_index(i)] for i in shard[start:start + batch]]
                          for shard in shards])
    return steps


def encode_lists(steps, ranks: int, shared: bool, caption_dropout: float) -> list[list[list[str]]]:
    """work[s][r]: the captions rank r encodes at step s. Without sharing, the captions caption dropout
    empties are not encoded that step; SharedTextMemo runs before the dropout and encodes them."""
    memos = [set() for _ in range(ranks)]
    generator = torch.Generator().manual_seed(0)
    work = []
    for step, batches in enumerate(steps):
        if not shared:
            batches = [[c if keep else "" for c, keep in zip(b, (torch.rand(len(b), generator=generator)
                                                                   >= caption_dropout).tolist())] for b in batches]
        missing = [list(dict.fromkeys(c for c in b + [""] if c not in memo)) for b, memo in zip(batches, memos)]
        if shared:
            pooled = sorted({c for m in missing for c in m})
            missing = [pooled[(r + step) % ranks::ranks] for r in range(ranks)]
            for memo in memos:
                memo.update(pooled)
        else:
            for memo, m in zip(memos, missing):
                memo.update(m)
        work.append(missing)
    return work


def _time_gathers(rank: int, ranks: int, captions: int, embed_dim: int, max_length: int, steps: int, out) -> None:
    """One spawned gloo process: SharedTextMemo's two object gathers per step, with a typical payload."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("BENCH_PORT", "29541"))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=ranks)
    local = [f"a caption of about sixteen words, number {i} of rank {rank}, as the toy faces have" for i in range(captions)]
    embeddings = torch.randn(max(1, captions // ranks), max_length, embed_dim)
    for timed in (False, True):
        dist.barrier()
        start = time.perf_counter()
        for _ in range(steps):
            dist.all_gather_object([None] * ranks, local)
            dist.all_gather_object([None] * ranks, (local[:len(embeddings)], embeddings))
        if timed and rank == 0:
            out.put((time.perf_counter() - start) / steps)
    dist.destroy_process_group()


def gather_seconds(ranks: int, captions: int, embed_dim: int, max_length: int, steps: int = 200) -> float:
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_time_gathers, args=(ranks, captions, embed_dim, max_length, steps, queue), nprocs=ranks)
    return queue.get()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", default="demo")
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--time-every", type=int, default=8, help="time the encoding of every n-th step")
    args = p.parse_args()
    torch.set_num_threads(1)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", [f"experiment={args.experiment}"])
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    encoder = instantiate(cfg.text_encoder)
    encoder.cache_size = 0  # time the transformer itself
    steps = drawn_batches(datamodule, args.epochs, args.ranks, int(cfg.data.batch_size))
    work = {name: encode_lists(steps, args.ranks, shared, float(cfg.model.caption_dropout))
            for name, shared in (("own memo", False), ("shared memo", True))}

    seconds = {name: [0.0] * args.ranks for name in work}
    for s in range(0, len(steps), args.time_every):  # both ways in turn, so machine load hits them alike
        for name, lists in work.items():
            for r, captions in enumerate(lists[s]):
                if captions:
                    start = time.perf_counter()
                    encoder(captions)
                    seconds[name][r] += (time.perf_counter() - start) * args.time_every

    print(f"`experiment={args.experiment}`: {len(steps)} steps, {args.ranks} ranks x {cfg.data.batch_size} captions, "
          f"{args.epochs} epochs; {len({c for b in steps for r in b for c in r})} distinct captions drawn\n")
    pooled_per_step = sum(len(c) for step in work["shared memo"] for c in step) / len(steps)
    gathers = gather_seconds(args.ranks, round(pooled_per_step), encoder.embed_dim, encoder.max_length)
    extra = {"own memo": 0.0, "shared memo": gathers * len(steps)}
    print("| memo | captions encoded per rank | encoding s per rank (1 thread) | object gathers s | total s per rank |\n"
          "|---|---|---|---|---|")
    for name, lists in work.items():
        counts = [sum(len(step[r]) for step in lists) for r in range(args.ranks)]
        print(f"| {name} | {' / '.join(map(str, counts))} | {' / '.join(f'{t:.0f}' for t in seconds[name])} | "
              f"{extra[name]:.0f} | {' / '.join(f'{t + extra[name]:.0f}' for t in seconds[name])} |")


if __name__ == "__main__":
    main()
