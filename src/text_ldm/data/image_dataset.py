"""Images of one split of a CelebA-layout dataset, as tensors for the autoencoder."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from text_ldm.data.celeba_layout import CelebALayout, load_image


def to_tensor(image) -> torch.Tensor:
    """PIL RGB (H, W) -> (3, H, W) float32 in [-1, 1]."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class ImageDataset(Dataset):
    """Item i: {"image": (3, image_size, image_size) in [-1, 1], "id": ids[i]}."""

    def __init__(self, root: str | Path, ids: list[str], image_size: int):
        self.layout = CelebALayout(Path(root))
        self.ids = list(ids)
        self.image_size = int(image_size)
        self._warned_upscale = False

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        item_id = self.ids[index]
        image, upscaled = load_image(self.layout.image_path(item_id), self.image_size)
        if upscaled and not self._warned_upscale:
            self._warned_upscale = True
            warnings.warn(f"{self.layout.image_path(item_id)} is smaller than image_size={self.image_size} "
                          "and was upscaled (this warning is shown once per run).", stacklevel=2)
        return {"image": to_tensor(image), "id": item_id}
