"""A training DataLoader that Lightning can resume mid-epoch, in the same order.

Lightning 2.x saves `state_dict()` of every train loader that has one into the checkpoint
(`loops.fit_loop.state_dict.combined_loader`) and calls `load_state_dict()` when it restarts mid-epoch.
The shuffle order comes from (seed, epoch) alone, so skipping the batches already served gives
exactly the batches an uninterrupted run would have seen next.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """DistributedSampler (one shard per rank, or the whole set on one process) whose next epoch can
    start after its first `skip` indices. Being a DistributedSampler, Lightning neither replaces it
    nor wraps it under DDP, and calls its `set_epoch` every epoch.

    `weights` (one per item, need not sum to 1) replaces the permutation by len(dataset) draws with
    replacement, item i with probability weights[i] / sum(weights), still from (seed, epoch) alone;
    the ranks take interleaved slices of the one draw, as DistributedSampler does of its permutation.
    """

    def __init__(self, dataset: Dataset, shuffle: bool = True, seed: int = 0,
                 weights: Sequence[float] | None = None):
        distributed = dist.is_available() and dist.is_initialized()
        replicas, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
        super().__init__(dataset, num_replicas=replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.weights = None
        if weights is not None:
            self.weights = torch.as_tensor(weights, dtype=torch.float64)
            if self.weights.shape != (len(dataset),) or not torch.isfinite(self.weights).all() \
                    or (self.weights < 0).any() or self.weights.sum() <= 0:
                raise ValueError(f"sampler weights must be {len(dataset)} finite non-negative numbers, not all zero")
        self.skip_epoch, self.skip = -1, 0

    def _weighted_indices(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        draws = torch.multinomial(self.weights, self.total_size, replacement=True, generator=generator)
        return draws[self.rank:self.total_size:self.num_replicas].tolist()

    def __iter__(self):
        indices = self._weighted_indices() if self.weights is not None else list(super().__iter__())
        if self.epoch == self.skip_epoch:  # only the epoch that was interrupted
            indices, self.skip_epoch = indices[self.skip:], -1
        return iter(indices)


class ResumableDataLoader(DataLoader):
    """DataLoader over a ResumableSampler that counts the batches it has served this epoch.

    state_dict() -> {"epoch", "batches"}; load_state_dict() makes the next iteration of that epoch
    skip those batches. Lightning's fetcher does not prefetch from loaders with a length, so the
    count equals the batches the trainer has consumed.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, shuffle: bool = True,
                 weights: Sequence[float] | None = None, **kwargs: Any):
        # Its own generator: a new epoch's iterator draws its workers' base seed from it, and drawing it from the
        # global RNG would shift that RNG between the epoch-end checkpoint and the next step, which a resumed
        # run (RNG put back at its first step, after the iterator exists) would not see.
        kwargs.setdefault("generator", torch.Generator())
        super().__init__(dataset, batch_size=batch_size, sampler=ResumableSampler(dataset, shuffle, seed, weights),
                         drop_last=True, **kwargs)
        self._served = 0

    def __iter__(self):
        sampler: ResumableSampler = self.sampler
        self.generator.manual_seed(sampler.seed + sampler.epoch)  # worker seeds from (seed, epoch) alone, too
        # The dataset's per-epoch draws (the caption) follow the sampler's epoch, which Lightning sets on every
        # epoch, a resumed one included; its epoch-start hooks do not run for an epoch resumed mid-way.
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(sampler.epoch)
        self._served = sampler.skip // self.batch_size if sampler.epoch == sampler.skip_epoch else 0
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def unserve_last(self) -> None:
        """The batch served last was not trained on (an interrupt inside its step): serve it again on resume."""
        self._served = max(0, self._served - 1)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.sampler.epoch), "batches": int(self._served)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.skip_epoch = int(state["epoch"])
        self.sampler.skip = int(state["batches"]) * self.batch_size
