"""Input images for img2img and the forward-noising strip: file -> model-sized tensor -> latents."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.functional import pil_to_tensor

from text_ldm.models.autoencoder import FrozenAutoencoder


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """An image file (any mode: converted to RGB) -> (1, 3, size, size) in [-1, 1], resized
    (bicubic, antialiased) when its size differs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"init_image {path} does not exist")
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"init_image {path} is not a readable image ({err})") from err
    if image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    return pil_to_tensor(image)[None].float() / 127.5 - 1


@torch.no_grad()
def encode_image(autoencoder: FrozenAutoencoder, path: str | Path, size: int, batch: int = 1) -> torch.Tensor:
    """(batch, C, h, w) scaled latents of the image at `path` (float32), repeated `batch` times."""
    param = next(autoencoder.parameters(), torch.empty(0))
    latents = autoencoder.encode(load_image(path, size).to(device=param.device, dtype=param.dtype))
    return latents.float().repeat(batch, 1, 1, 1)
