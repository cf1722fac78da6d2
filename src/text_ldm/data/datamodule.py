"""LightningDataModule over a CelebA-layout dataset: images (stage 1) or cached latents + captions (stage 2)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from text_ldm.data.balance import balance_groups, combination_shares, grouped_balance_weights
from text_ldm.data.celeba_layout import (EXPECTED_LAYOUT, CelebALayout, DatasetLayoutError, read_attributes,
                                         read_captions)
from text_ldm.data.image_dataset import ImageDataset, collate_skipping_corrupt
from text_ldm.data.latent_cache import LatentCache, build_latent_cache
from text_ldm.data.resumable import ResumableDataLoader
from text_ldm.data.toy_faces import build_toy_faces
from text_ldm.utils.config import plain
from text_ldm.utils.cpu import every_core

MODES = ("latents", "images")


class LatentCaptionDataset(Dataset):
    """Item i: {"latent": (C, h, w) float32, "caption": str}.

    Training draws one of the image's captions per epoch, reproducibly: the choice depends only on
    (seed, epoch, i), so a resumed run sees the same captions. Caption j is drawn with probability
    proportional to (its word count) ** `caption_length_power`: 0 is uniform; a larger power favours
    the long captions, which state more facts, so facts that short captions leave out (often the
    rare, negative ones) are seen more often.
    `fixed_caption=True` always takes the first one (validation).
    """

    def __init__(self, cache: LatentCache, captions: list[list[str]], seed: int = 0, fixed_caption: bool = False,
                 caption_length_power: float = 0.0):
        if len(captions) != len(cache.ids):
            raise ValueError(f"{len(captions)} caption lists for {len(cache.ids)} latents")
        if caption_length_power < 0:
            raise ValueError(f"caption_length_power={caption_length_power} must be >= 0")
        self.latents = cache.latents  # memory-mapped: pages load on first touch, shared by workers
        self.captions = captions
        self.seed, self.epoch, self.fixed_caption = int(seed), 0, fixed_caption
        self.caption_length_power = float(caption_length_power)
        self._cumulative_weights = None
        if self.caption_length_power > 0 and not fixed_caption:
            self._cumulative_weights = [np.cumsum([float(len(c.split())) ** self.caption_length_power for c in item])
                                        for item in captions]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.captions)

    def _caption_index(self, index: int) -> int:
        if self.fixed_caption:
            return 0
        key = hashlib.blake2b(f"{self.seed}/{self.epoch}/{index}".encode(), digest_size=8).digest()
        draw = int.from_bytes(key, "little")
        if self._cumulative_weights is None:
            return draw % len(self.captions[index])
        cumulative = self._cumulative_weights[index]
        return int(np.searchsorted(cumulative, draw / 2**64 * cumulative[-1], side="right"))

    def __getitem__(self, index: int) -> dict:
        return {"latent": torch.from_numpy(np.array(self.latents[index], dtype=np.float32)),
                "caption": self.captions[index][self._caption_index(index)]}


class CelebADataModule(L.LightningDataModule):
    """Serves `train` and `test` splits of `root` (validation uses `test`).

    mode="latents": encodes each split once with `autoencoder` (a config dict for
    FrozenAutoencoder) into `cache_dir` (on the GPU when there is one, `cache_batch_size` images
    at a time, decoded by `cache_num_workers` workers), then serves (latent, caption).
    mode="images": serves images in [-1, 1] for training the autoencoder. `toy` (kwargs of
    build_toy_faces) describes the embedded toy-faces dataset; it is generated at `root` on first use only
    where `generate` allows: "auto" when `root` is `default_root` (its place in the project), True anywhere,
    False never. Elsewhere a missing root fails at construction, so a mistyped path is not filled with data.
    `caption_length_power` weights the training caption draw towards long captions (see LatentCaptionDataset).
    `balance_attributes` (names in the attribute file) makes training draw images with weight (share of their combination of those attributes) ** -`balance_power` (data/balance.py);
    a list of such lists multiplies one weight per group (`balance_power`: one number, or one per group);
    empty keeps a plain shuffle. `on_missing` ("error" | "skip") governs ids without an image or caption, and corrupt images
    (met while caching, or in mode=images while training): one error naming the file(s), or skip them with a
    count (caching) or one warning per file (mode=images).
    """

    def __init__(self, root: str, image_size: int = 64, mode: str = "latents", batch_size: int = 64,
                 num_workers: int = 0, toy: dict[str, Any] | None = None, generate: bool | str = "auto",
                 default_root: str | None = None, on_missing: str = "error",
                 cache_dir: str | None = None, autoencoder: dict[str, Any] | None = None,
                 cache_batch_size: int = 64, cache_num_workers: int = 0, seed: int = 0, preview_count: int = 8,
                 caption_length_power: float = 0.0, balance_attributes: list | None = None,
                 balance_power: float | list[float] = 1.0):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"data.mode={mode!r}; choose one of {MODES}")
        if mode == "latents" and (cache_dir is None or autoencoder is None):
            raise ValueError("data.mode=latents needs data.cache_dir and data.autoencoder")
        self.root, self.image_size, self.mode = Path(root), int(image_size), mode
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.toy, self.on_missing, self.seed = plain(toy), on_missing, int(seed)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.autoencoder_config, self.cache_batch_size = plain(autoencoder), int(cache_batch_size)
        self.cache_num_workers = int(cache_num_workers)
        self.preview_count = int(preview_count)
        self.caption_length_power = float(caption_length_power)
        if self.caption_length_power < 0:
            raise ValueError(f"data.caption_length_power={caption_length_power} must be >= 0 (0 draws uniformly)")
        # Checked here to fail before caching, not after.
        self.balance_groups, self.balance_powers = balance_groups(plain(balance_attributes), plain(balance_power))
        if self.balance_groups and mode != "latents":
            raise ValueError("data.balance_attributes applies to mode=latents (stage 2) only")
        self.train_weights = None
        self.layout = CelebALayout(self.root)
        self.default_root = Path(default_root) if default_root else None
        self.generate = self._may_generate(generate)
        if not self.generate:
            # Fail in seconds, before train.py loads (or downloads) CLIP and the VAE, not after.
            self._check_root()
        self.datasets: dict[str, Dataset] = {}
        self._ids: dict[str, list[str]] = {}

    def prepare_data(self) -> None:
        """Runs on one process, the others waiting: generate toy data if allowed, then fill the latent cache
        on every core."""
        if not self.generate:
            self._check_root()
        if self.toy is not None:  # reuses the dataset at root (refusing another one), or writes it where allowed
            build_toy_faces(self.root, image_size=self.image_size, **self.toy)
        self.layout.check()
        if self.mode == "latents":
            autoencoder = self._autoencoder()
            with every_core():
                for split in ("train", "test"):
                    self._cache(split, autoencoder)

    def _may_generate(self, generate: bool | str) -> bool:
        if generate not in (True, False, "auto"):
            raise ValueError(f"data.generate={generate!r}; choose auto, true or false")
        if generate is True and self.toy is None:
            raise ValueError("data.generate=true needs data.toy (what to generate), as in data=toy_faces")
        if generate == "auto":
            return self.toy is not None and self.default_root is not None \
                and self.root.resolve() == self.default_root.resolve()
        return bool(generate)

    def _check_root(self) -> None:
        if self.toy is not None and not self.root.exists():
            where = f"only at {self.default_root} or" if self.default_root else "only"
            raise DatasetLayoutError(f"dataset root not found: {self.root} (toy faces are generated {where} "
                                     f"with data.generate=true)\n{EXPECTED_LAYOUT}")
        self.layout.check()

    def _autoencoder(self):
        return instantiate(self.autoencoder_config)

    def _split_ids(self, split: str) -> list[str]:
        """The usable ids of `split`, checked once per process (so data.on_missing=skip warns once)."""
        if split not in self._ids:
            self._ids[split] = self.layout.collect(split, on_missing=self.on_missing)
        return self._ids[split]

    def _cache(self, split: str, autoencoder) -> LatentCache:
        ids = self._split_ids(split)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        images = ImageDataset(self.root, ids, self.image_size, on_corrupt=self.on_missing)
        return build_latent_cache(images, autoencoder, self.cache_dir, split, batch_size=self.cache_batch_size,
                                  device=device, num_workers=self.cache_num_workers)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        autoencoder = self._autoencoder() if self.mode == "latents" else None
        for split in ("train", "test"):
            if self.mode == "images":
                self.datasets[split] = ImageDataset(self.root, self._split_ids(split), self.image_size,
                                                    on_corrupt=self.on_missing)
            else:
                cache = self._cache(split, autoencoder)  # finds the cache prepare_data built
                captions = [read_captions(self.layout.caption_path(i)) for i in cache.ids]
                self.datasets[split] = LatentCaptionDataset(cache, captions, self.seed, fixed_caption=split == "test",
                                                             caption_length_power=self.caption_length_power)
                if split == "train" and self.balance_groups:
                    self.train_weights = self._balance_weights(cache.ids)

    def _balance_weights(self, ids: list[str]):
        _, table = read_attributes(self.layout.attribute_path)
        missing = [i for i in ids if i not in table]
        if missing:
            raise ValueError(f"data.balance_attributes: {len(missing)} training ids have no attribute row, e.g. {missing[:3]}")
        rows = [table[i] for i in ids]
        weights = grouped_balance_weights(rows, self.balance_groups, self.balance_powers)
        names = list(dict.fromkeys(a for group in self.balance_groups for a in group))
        lines = [f"{'/'.join(f'{a}={int(v)}' for a, v in zip(names, combo))}: "
                 f"{100 * data:.1f} % of images -> {100 * drawn:.1f} % of draws"
                 for combo, (data, drawn) in combination_shares(rows, names, weights).items()]
        powers = ", ".join(f"{p:g}" for p in self.balance_powers)
        rank_zero_info(f"balanced sampling (power {powers}):\n  " + "\n  ".join(lines))
        return weights

    def preview_prompts(self) -> list[str]:
        """The first caption of the first `preview_count` held-out images: fixed prompts for sample grids."""
        dataset = self.datasets.get("test")
        if not isinstance(dataset, LatentCaptionDataset):
            return []
        return [dataset.captions[i][0] for i in range(min(self.preview_count, len(dataset)))]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        # Its own generator: each validation's iterator would otherwise draw from the global RNG between a
        # checkpoint written at an epoch's last batch and the next training step, and the resume would not match.
        return DataLoader(self.datasets[split], batch_size=self.batch_size, shuffle=shuffle, drop_last=shuffle,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          collate_fn=self._collate(), generator=torch.Generator().manual_seed(self.seed))

    def _collate(self):
        # Stage 1 meets corrupt images while training (stage 2 met them while caching, and left them out).
        return collate_skipping_corrupt if self.mode == "images" and self.on_missing == "skip" else None

    def train_dataloader(self) -> DataLoader:
        # Resumable mid-epoch in the same order: Lightning saves and restores its position.
        return ResumableDataLoader(self.datasets["train"], self.batch_size, seed=self.seed, weights=self.train_weights,
                                   num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                                   collate_fn=self._collate())

    def val_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
