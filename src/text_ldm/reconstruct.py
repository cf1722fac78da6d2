"""Reconstruction check of the frozen autoencoder: `python -m text_ldm.reconstruct [vae=... data=...]`.

Encodes the first `num_images` images of `split`, decodes them, and writes input_samples.png,
encoded_samples.png (every latent channel of every image, min-max scaled per channel over the
batch), reconstructed_samples.png and reconstruction.json (PSNR in dB per image and mean, plus the
per-channel std of the scaled latents: far from ~1 means the latent scale is probably wrong).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from einops import rearrange
from hydra.utils import instantiate
from omegaconf import DictConfig
from torchvision.utils import make_grid

from text_ldm.data.image_dataset import ImageDataset
from text_ldm.utils.atomic import atomic_save_png, atomic_write_text
from text_ldm.utils.cli import report_errors
from text_ldm.utils.config import plain
from text_ldm.utils.grid import to_pil

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[2]))


def latent_channel_tiles(latents: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, h, w) latents -> (B*C, 3, size, size) grey tiles in [0, 1], each channel min-max scaled
    over the batch (so tiles of one channel compare across images), upsampled nearest to `size`."""
    lo = latents.amin(dim=(0, 2, 3), keepdim=True)
    hi = latents.amax(dim=(0, 2, 3), keepdim=True)
    scaled = (latents - lo) / (hi - lo).clamp_min(1e-8)
    tiles = F.interpolate(scaled, size=(size, size), mode="nearest")
    return rearrange(tiles, "b c h w -> (b c) 1 h w").expand(-1, 3, -1, -1)


def psnr_per_image(reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] each -> (B,) PSNR in dB."""
    from torchmetrics.functional.image import peak_signal_noise_ratio  # ~10 s import: only when needed

    return peak_signal_noise_ratio(reconstructed, original, data_range=1.0, reduction="none", dim=(1, 2, 3))


def reconstruct(cfg: DictConfig) -> dict:
    """Write the three PNGs and reconstruction.json to cfg.out_dir; returns the json's content."""
    if int(cfg.num_images) < 1:
        raise ValueError(f"num_images={cfg.num_images} must be >= 1")
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    data = plain(cfg.data)
    datamodule = instantiate({**data, "mode": "images", "cache_dir": None, "autoencoder": None})
    datamodule.prepare_data()  # builds the toy faces on first use, checks the layout
    ids = datamodule.layout.collect(cfg.split, on_missing=datamodule.on_missing)
    dataset = ImageDataset(datamodule.root, ids, datamodule.image_size)
    count = min(int(cfg.num_images), len(dataset))
    items = [dataset[i] for i in range(count)]
    images = torch.stack([item["image"] for item in items]).to(device)  # (B, 3, H, W) in [-1, 1]
    autoencoder = instantiate(plain(cfg.vae)).to(device)
    latents = autoencoder.encode(images)
    recon = autoencoder.decode(latents)
    original01, recon01 = (images.float() + 1) / 2, (recon.float() + 1) / 2
    psnr = psnr_per_image(recon01.clamp(0, 1), original01)
    size = images.shape[-1]
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_png(to_pil(make_grid(original01.cpu(), nrow=count, padding=2)), out / "input_samples.png")
    tiles = latent_channel_tiles(latents.float().cpu(), size)
    atomic_save_png(to_pil(make_grid(tiles, nrow=latents.shape[1], padding=2, pad_value=1.0)),
                    out / "encoded_samples.png")
    atomic_save_png(to_pil(make_grid(recon01.clamp(0, 1).cpu(), nrow=count, padding=2)),
                    out / "reconstructed_samples.png")
    result = {"psnr_db_mean": float(psnr.mean()), "psnr_db": [round(float(p), 3) for p in psnr],
              "ids": [item["id"] for item in items], "split": cfg.split, "image_size": size,
              "autoencoder": autoencoder.source, "kind": autoencoder.kind,
              "scaling_factor": autoencoder.scaling_factor, "latent_shape": list(latents.shape[1:]),
              "latent_std_per_channel": [round(float(s), 4) for s in latents.float().std(dim=(0, 2, 3))]}
    atomic_write_text(out / "reconstruction.json", json.dumps(result, indent=1))
    return result


@hydra.main(version_base="1.3", config_path="../../conf", config_name="reconstruct")
@report_errors
def main(cfg: DictConfig) -> None:
    result = reconstruct(cfg)
    print(f"PSNR {result['psnr_db_mean']:.2f} dB over {len(result['psnr_db'])} images "
          f"({result['autoencoder']}, scale {result['scaling_factor']}, latents {result['latent_shape']}, "
          f"latent std per channel {result['latent_std_per_channel']})")
    print(f"wrote input_samples.png, encoded_samples.png, reconstructed_samples.png, reconstruction.json to "
          f"{cfg.out_dir}")


if __name__ == "__main__":
    main()
