"""CPU cores and torch's intra-op threads."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextmanager
def every_core() -> Iterator[None]:
    """torch's intra-op threads raised to every usable core for the block, then put back. For work that one
    process does while the others wait (Lightning's prepare_data under DDP): a `num_threads=1` per process,
    right for training, would leave the waiting processes' cores idle."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, usable_cores()))
    try:
        yield
    finally:
        torch.set_num_threads(threads)
