"""Latent caching throughput: our cache builder vs the seed tutorial's batch-1 pickle-dict loop, one run.

    python bench/caching.py                          # toy workload: the demo's toy faces + artifacts/toy_vq, 64 px
    python bench/caching.py --workload ldm --n 8     # CompVis LDM VQ-f4 architecture (random weights), 256 px
                                                     # from 1024 px JPEGs, as CelebA-HQ ships them

Methods, on the same images and device:
- seed baseline: PIL open + torchvision Resize/CenterCrop/ToTensor at full resolution, DataLoader batch 1,
  encode, latents into a dict keyed by path, pickled every 1000 images (the StableDiffusion-PyTorch tutorial).
- ours: `build_latent_cache` (JPEG draft decoding, batched encoding, memmap + manifest, resumable),
  with and without decoding workers.
Prints a markdown table of images/s and the ratio to the baseline.
"""
from __future__ import annotations

import argparse
import os
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from text_ldm.data.celeba_layout import CAPTION_DIR, IMAGE_DIR, CelebALayout, read_split
from text_ldm.data.image_dataset import ImageDataset
from text_ldm.data.latent_cache import build_latent_cache
from text_ldm.models.autoencoder import FrozenAutoencoder

ROOT = Path(__file__).resolve().parents[1]


def ldm_celebahq_vq() -> FrozenAutoencoder:
    """The architecture of CompVis/ldm-celebahq-256's vqvae (f4, 3 latent channels), random weights:
    throughput does not depend on the weight values, and the hub cannot be reached offline."""
    from diffusers import VQModel

    torch.manual_seed(0)
    model = VQModel(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3,
                    up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=[128, 256, 512], layers_per_block=2,
                    latent_channels=3, num_vq_embeddings=8192, vq_embed_dim=3, sample_size=256)
    return FrozenAutoencoder(model, "vq", 1.0, "CompVis/ldm-celebahq-256 architecture, random weights")


def write_jpegs(root: Path, n: int, size: int) -> Path:
    """n photo-like `size` px JPEGs (smooth colour fields plus grain) in the CelebA layout, ids in train.txt."""
    rng = np.random.default_rng(0)
    (root / IMAGE_DIR).mkdir(parents=True)
    (root / CAPTION_DIR).mkdir()
    for i in range(n):
        base = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
        grain = rng.normal(0, 6, (size, size, 3))
        Image.fromarray(np.clip(np.asarray(base) + grain, 0, 255).astype(np.uint8)).save(
            root / IMAGE_DIR / f"{i}.jpg", quality=90)
    (root / "train.txt").write_text("".join(f"{i}\n" for i in range(n)))
    return root


class SeedDataset(Dataset):
    """The tutorial's loader: full-resolution decode, torchvision resize + centre crop, [-1, 1]."""

    def __init__(self, paths: list[Path], image_size: int):
        self.paths = paths
        self.transform = transforms.Compose([transforms.Resize(image_size), transforms.CenterCrop(image_size),
                                             transforms.ToTensor()])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return 2 * self.transform(Image.open(self.paths[i]).convert("RGB")) - 1


def seed_baseline(paths: list[Path], autoencoder: FrozenAutoencoder, image_size: int, out: Path, device) -> None:
    loader = DataLoader(SeedDataset(paths, image_size), batch_size=1, shuffle=False)
    latents, part = {}, 0
    for idx, image in enumerate(loader):
        latents[str(paths[idx])] = autoencoder.encode(image.to(device)).cpu()
        if (idx + 1) % 1000 == 0:
            with open(out / f"{part}.pkl", "wb") as f:
                pickle.dump(latents, f)
            latents, part = {}, part + 1
    if latents:
        with open(out / f"{part}.pkl", "wb") as f:
            pickle.dump(latents, f)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=["toy", "ldm"], default="toy")
    parser.add_argument("--n", type=int, default=None, help="images (default: toy 512, ldm 16)")
    parser.add_argument("--image-size", type=int, default=None, help="default: toy 64, ldm 256")
    parser.add_argument("--source-size", type=int, default=1024, help="ldm workload: JPEG size on disk")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tmp = Path(tempfile.mkdtemp(prefix="bench_caching_"))
    if args.workload == "toy":
        from text_ldm.data.toy_faces import build_toy_faces

        n, size = args.n or 512, args.image_size or 64
        root = build_toy_faces(tmp / "data", num_train=n, num_test=0, image_size=size, progress=False)
        autoencoder = FrozenAutoencoder.from_pretrained(str(ROOT / "artifacts" / "toy_vq"), kind="vq",
                                                        force_not_quantize=True)
    else:
        n, size = args.n or 16, args.image_size or 256
        root = write_jpegs(tmp / "data", n, args.source_size)
        autoencoder = ldm_celebahq_vq()
    autoencoder = autoencoder.to(device)
    ids = read_split(root, "train")
    layout = CelebALayout(root)
    paths = [layout.image_path(i) for i in ids]
    autoencoder.encode(torch.zeros(1, 3, size, size, device=device))  # first-call allocations, for everyone

    rows = []
    (tmp / "seed").mkdir()
    rows.append(("seed baseline: batch 1, dict + pickle", 1, 0,
                 timed(lambda: seed_baseline(paths, autoencoder, size, tmp / "seed", device))))
    for workers in sorted({0, args.workers}):
        dataset = ImageDataset(root, ids, size)
        cache_root = tmp / f"ours-{workers}"
        rows.append(("ours: build_latent_cache", args.batch_size, workers, timed(lambda: build_latent_cache(
            dataset, autoencoder, cache_root, "train", batch_size=args.batch_size, device=device, progress=False,
            num_workers=workers))))
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    print(f"\nworkload: {args.workload}, {n} images, {size} px, {autoencoder.source}; device: {name}\n")
    print("| method | batch | decode workers | seconds | images/s | vs baseline |")
    print("|---|---|---|---|---|---|")
    base = n / rows[0][3]
    for label, batch, workers, seconds in rows:
        print(f"| {label} | {batch} | {workers} | {seconds:.1f} | {n / seconds:.3g} | {n / seconds / base:.2f}x |")


if __name__ == "__main__":
    main()
