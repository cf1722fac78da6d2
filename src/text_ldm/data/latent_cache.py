"""Encode a split's images once into a memory-mapped latent cache that knows what it was made from.

On disk: `<cache_root>/<split>-<fingerprint[:16]>/{latents.npy, manifest.json}`. The fingerprint
covers the autoencoder (kind, scale, encode dtype, config, weights), the image size and transform,
the ordered id list and the images' content, and no path: a cache made by another VAE, scale, size
or image list is never used (it simply is not found, and a new one is built), while a moved or
copied checkout or dataset finds its caches again. Building happens in a `.partial` sibling that
records progress after every batch; a killed build resumes there and the final rename is atomic. Rows are written
before the progress record that counts them, so a kill at any instant loses at most one batch of
work and the resumed cache is byte-identical to an uninterrupted one. A hidden `.<name>.lock` sibling
lets one process build a given cache at a time; the others wait, then reuse it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from filelock import FileLock, Timeout
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from text_ldm.data.celeba_layout import DatasetLayoutError
from text_ldm.data.content_digest import files_digest
from text_ldm.data.image_dataset import TRANSFORM_VERSION, ImageDataset, corrupt_hint, warn_upscaled_once
from text_ldm.utils.atomic import atomic_write_text

if TYPE_CHECKING:  # the cache only calls encode() and fingerprint(): data does not depend on models
    from text_ldm.models.autoencoder import FrozenAutoencoder

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


class _Reporting(Dataset):
    """`dataset` whose corrupt images come back as items with "error" set instead of raising."""

    def __init__(self, dataset: ImageDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return self.dataset.load(index)


def cache_fingerprint(autoencoder_fingerprint: str, image_size: int, ids: list[str], images_digest: str) -> str:
    # The images' bytes and paths relative to the root, not the root or mtimes: a moved or copied dataset
    # hits its cache, an edited image misses it.
    payload = {"version": FORMAT_VERSION, "autoencoder": autoencoder_fingerprint, "image_size": image_size,
               "transform": TRANSFORM_VERSION, "ids": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
               "images": images_digest, "dtype": "float32"}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _atomic_write_json(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1))


def build_latent_cache(dataset: ImageDataset, autoencoder: FrozenAutoencoder, cache_root: str | Path,
                       split: str, batch_size: int = 64, device: str | torch.device = "cpu",
                       progress: bool = True, num_workers: int = 0) -> LatentCache:
    """Return the cache for `dataset` under `cache_root`, encoding only what is not there yet.

    Images are decoded by `num_workers` DataLoader workers (decoding 1024 px JPEGs costs more than
    encoding them on a GPU) and encoded `batch_size` at a time on `device`. With
    `dataset.on_corrupt == "skip"`, corrupt images are left out of the cache (the manifest lists
    them) and one warning gives their count; otherwise the first one raises, naming the file, and
    the rows encoded so far are kept for the rerun.
    """
    ae_fp = autoencoder.fingerprint()
    files = [dataset.layout.image_path(i) for i in dataset.ids]
    images_digest = files_digest(dataset.layout.root, files, cache_root)
    fingerprint = cache_fingerprint(ae_fp, dataset.image_size, dataset.ids, images_digest)
    final = Path(cache_root) / f"{split}-{fingerprint[:16]}"
    final.parent.mkdir(parents=True, exist_ok=True)
    # Two jobs of a parallel sweep may want the same cache: one builds it, the other waits and reuses it
    # (without the lock both would write the same .partial and the second rename would fail).
    lock = FileLock(final.with_name(f".{final.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"[latent cache] another process is building {final}; waiting for it", flush=True)
        lock.acquire()
    try:
        return _open_or_build(dataset, autoencoder, final, fingerprint, ae_fp, images_digest, split, batch_size,
                              device, progress, num_workers)
    finally:
        lock.release()


def _open_or_build(dataset: ImageDataset, autoencoder: FrozenAutoencoder, final: Path, fingerprint: str,
                   ae_fp: str, images_digest: str, split: str, batch_size: int, device: str | torch.device,
                   progress: bool, num_workers: int) -> LatentCache:
    if final.exists():
        try:
            cache = LatentCache.open(final)
        except StaleCacheError as err:
            print(f"[latent cache] {err}; rebuilding")
            shutil.rmtree(final)
        else:
            _check_skipped_allowed(cache, dataset)
            return cache
    partial = final.with_name(final.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    n = len(dataset)
    autoencoder = autoencoder.to(device)
    c, f = autoencoder.latent_channels, autoencoder.downsample_factor
    shape = (n, c, dataset.image_size // f, dataset.image_size // f)
    done, skipped = _resume_point(partial, fingerprint, shape)
    mode = "r+" if done > 0 else "w+"
    latents = np.lib.format.open_memmap(partial / LATENTS, mode=mode, dtype=np.float32, shape=shape)
    # Its own generator: drawing its workers' seed from the global RNG would make a seeded run differ by
    # whether its latents were cached already.
    loader = DataLoader(Subset(_Reporting(dataset), range(done, n)), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, pin_memory=torch.device(device).type == "cuda",
                        generator=torch.Generator())
    start = done
    with tqdm(total=n, initial=done, desc=f"caching {split} latents", unit="img", disable=not progress) as bar:
        for batch in loader:
            stop = start + len(batch["id"])
            for offset, (item_id, error) in enumerate(zip(batch["id"], batch["error"])):
                if error:
                    if dataset.on_corrupt == "error":
                        raise DatasetLayoutError(corrupt_hint(error))
                    skipped[str(start + offset)] = error
            upscaled = [i for i, u in zip(batch["id"], batch["upscaled"].tolist()) if u]
            if upscaled:
                warn_upscaled_once(dataset.layout.image_path(upscaled[0]), dataset.image_size)
            images = batch["image"].to(device, non_blocking=True)
            latents[start:stop] = autoencoder.encode(images).float().cpu().numpy()
            latents.flush()
            _atomic_write_json(partial / PROGRESS, {"fingerprint": fingerprint, "done": stop, "skipped": skipped})
            bar.update(stop - start)
            start = stop
    del latents
    kept = [i for i in range(n) if str(i) not in skipped]
    if skipped:
        _compact(partial / LATENTS, kept)
        reasons = [skipped[k] for k in sorted(skipped, key=int)]
        shown = "\n  ".join(reasons[:5]) + (f"\n  ... and {len(reasons) - 5} more" if len(reasons) > 5 else "")
        warnings.warn(f"skipped {len(skipped)} corrupt image(s) in split {split!r} ({len(kept)} kept; "
                      f"data.on_missing=skip):\n  {shown}", stacklevel=2)
    scale = autoencoder.scaling_factor
    _atomic_write_json(partial / MANIFEST, {
        "format_version": FORMAT_VERSION, "fingerprint": fingerprint, "autoencoder_fingerprint": ae_fp,
        "autoencoder": autoencoder.source, "scaling_factor": scale, "encode_dtype": autoencoder.encode_dtype,
        "image_size": dataset.image_size, "images_digest": images_digest, "split": split,
        "ids": [dataset.ids[i] for i in kept],
        "skipped": [{"id": dataset.ids[int(k)], "reason": skipped[k]} for k in sorted(skipped, key=int)],
        "latent_shape": list(shape[1:]), "dtype": "float32"})
    (partial / PROGRESS).unlink()
    os.replace(partial, final)
    _mention_other_caches(final, split)
    return LatentCache.open(final)


def _mention_other_caches(final: Path, split: str) -> None:
    """Caches of another autoencoder, size or image list are never deleted (another config may still use
    them), but a new build says how much disk the older ones of this split hold."""
    others = [p for p in final.parent.glob(f"{split}-*") if p != final and p.is_dir()]
    if others:
        size = sum(f.stat().st_size for p in others for f in p.rglob("*") if f.is_file())
        names = ", ".join(sorted(p.name for p in others))
        print(f"[latent cache] {len(others)} other cache(s) of split {split!r} in {final.parent} hold "
              f"{size / 2**20:.1f} MiB ({names}); delete those no config uses any more", flush=True)


def _compact(path: Path, kept: list[int], chunk: int = 1024) -> None:
    """Rewrite the (N, ...) array at `path` with only the rows `kept` (the rare corrupt-image case)."""
    source = np.load(path, mmap_mode="r")
    tmp = path.with_name("compact-" + path.name)
    target = np.lib.format.open_memmap(tmp, mode="w+", dtype=source.dtype, shape=(len(kept), *source.shape[1:]))
    for i in range(0, len(kept), chunk):
        target[i:i + chunk] = source[kept[i:i + chunk]]
    target.flush()
    del source, target
    os.replace(tmp, path)


def _check_skipped_allowed(cache: LatentCache, dataset: ImageDataset) -> None:
    skipped = cache.manifest.get("skipped") or []
    if skipped and dataset.on_corrupt == "error":
        raise DatasetLayoutError(
            f"latent cache {cache.path} was built with data.on_missing=skip and leaves out {len(skipped)} corrupt "
            f"image(s) (first: {skipped[0]['reason']}); set data.on_missing=skip, or fix the images and delete "
            f"{cache.path} to rebuild it")


def _resume_point(partial: Path, fingerprint: str, shape: tuple[int, ...]) -> tuple[int, dict[str, str]]:
    """Rows already encoded by an earlier, interrupted build of the same cache, and the corrupt rows
    among them ((0, {}) if none)."""
    try:
        progress = json.loads((partial / PROGRESS).read_text())
        existing = np.load(partial / LATENTS, mmap_mode="r")
    except (OSError, ValueError):
        return 0, {}
    if progress.get("fingerprint") != fingerprint or existing.shape != shape:
        return 0, {}
    return int(progress.get("done", 0)), dict(progress.get("skipped", {}))
