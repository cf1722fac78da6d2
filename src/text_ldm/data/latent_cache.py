"""Encode a split's images once into a memory-mapped latent cache that knows what it was made from.

On disk: `<cache_root>/<split>-<fingerprint[:16]>/{latents.npy, manifest.json}`. The fingerprint
covers the autoencoder (kind, scale, config, weights), the image size and the ordered id list, so
a cache made by another VAE, scale, size or image list is never used: it simply is not found,
and a new one is built. Building happens in a `.partial` sibling that records progress after
every batch; a killed build resumes there and the final rename is atomic.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from text_ldm.data.image_dataset import ImageDataset
from text_ldm.models.autoencoder import FrozenAutoencoder
from text_ldm.utils.atomic import atomic_write_text

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LATENTS = "latents.npy"
PROGRESS = "progress.json"


class StaleCacheError(RuntimeError):
    """A cache directory exists but does not hold what its manifest promises."""


@dataclass
class LatentCache:
    """latents: (N, C, h, w) float32 memmap, row i belongs to ids[i]."""

    path: Path
    ids: list[str]
    latents: np.ndarray
    manifest: dict

    @classmethod
    def open(cls, path: str | Path) -> "LatentCache":
        path = Path(path)
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            latents = np.load(path / LATENTS, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise StaleCacheError(f"latent cache {path} is unreadable ({err})") from err
        expected = (len(manifest["ids"]), *manifest["latent_shape"])
        if latents.shape != expected or str(latents.dtype) != manifest["dtype"]:
            raise StaleCacheError(f"latent cache {path} holds {latents.shape} {latents.dtype}, manifest says "
                                  f"{expected} {manifest['dtype']}")
        return cls(path, list(manifest["ids"]), latents, manifest)


def cache_fingerprint(autoencoder_fingerprint: str, image_size: int, ids: list[str]) -> str:
    payload = {"version": FORMAT_VERSION, "autoencoder": autoencoder_fingerprint, "image_size": image_size,
               "ids": hashlib.sha256("\n".join(ids).encode()).hexdigest(), "dtype": "float32"}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _atomic_write_json(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1))


def build_latent_cache(dataset: ImageDataset, autoencoder: FrozenAutoencoder, cache_root: str | Path,
                       split: str, batch_size: int = 64, device: str | torch.device = "cpu",
                       progress: bool = True) -> LatentCache:
    """Return the cache for `dataset` under `cache_root`, encoding only what is not there yet."""
    ae_fp = autoencoder.fingerprint()
    fingerprint = cache_fingerprint(ae_fp, dataset.image_size, dataset.ids)
    final = Path(cache_root) / f"{split}-{fingerprint[:16]}"
    if final.exists():
        try:
            return LatentCache.open(final)
        except StaleCacheError as err:
            print(f"[latent cache] {err}; rebuilding")
            shutil.rmtree(final)
    partial = final.with_name(final.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    n = len(dataset)
    autoencoder = autoencoder.to(device)
    c, f = autoencoder.latent_channels, autoencoder.downsample_factor
    shape = (n, c, dataset.image_size // f, dataset.image_size // f)
    done = _resume_point(partial, fingerprint, shape)
    mode = "r+" if done > 0 else "w+"
    latents = np.lib.format.open_memmap(partial / LATENTS, mode=mode, dtype=np.float32, shape=shape)
    with tqdm(total=n, initial=done, desc=f"caching {split} latents", unit="img", disable=not progress) as bar:
        for start in range(done, n, batch_size):
            stop = min(start + batch_size, n)
            images = torch.stack([dataset[i]["image"] for i in range(start, stop)]).to(device)
            latents[start:stop] = autoencoder.encode(images).float().cpu().numpy()
            latents.flush()
            _atomic_write_json(partial / PROGRESS, {"fingerprint": fingerprint, "done": stop})
            bar.update(stop - start)
    del latents
    scale = autoencoder.scaling_factor
    _atomic_write_json(partial / MANIFEST, {
        "format_version": FORMAT_VERSION, "fingerprint": fingerprint, "autoencoder_fingerprint": ae_fp,
        "autoencoder": autoencoder.source, "scaling_factor": scale, "image_size": dataset.image_size,
        "split": split, "ids": dataset.ids, "latent_shape": list(shape[1:]), "dtype": "float32"})
    (partial / PROGRESS).unlink()
    os.replace(partial, final)
    return LatentCache.open(final)


def _resume_point(partial: Path, fingerprint: str, shape: tuple[int, ...]) -> int:
    """Rows already encoded by an earlier, interrupted build of the same cache (0 if none)."""
    try:
        progress = json.loads((partial / PROGRESS).read_text())
        existing = np.load(partial / LATENTS, mmap_mode="r")
    except (OSError, ValueError):
        return 0
    if progress.get("fingerprint") != fingerprint or existing.shape != shape:
        return 0
    return int(progress.get("done", 0))
