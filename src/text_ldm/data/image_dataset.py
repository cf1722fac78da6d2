"""Images of one split of a CelebA-layout dataset, as tensors for the autoencoder."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

from text_ldm.data.celeba_layout import CelebALayout, DatasetLayoutError, load_image

ON_CORRUPT = ("error", "skip")
# Bump when load_image or to_tensor change the pixels of a file: latent caches are keyed on it.
TRANSFORM_VERSION = 1

# One upscale warning per process ("per run"), however many datasets, splits or images are small.
_upscale_warned = False


def warn_upscaled_once(path: str | Path, image_size: int) -> None:
    """Warn that `path` (and possibly others) was smaller than `image_size`; only the first call warns."""
    global _upscale_warned
    if _upscale_warned:
        return
    _upscale_warned = True
    warnings.warn(f"{path} is smaller than data.image_size={image_size} and was upscaled (blurry training data); "
                  "other small images are upscaled silently: this warning is shown once per run.", stacklevel=3)


def reset_upscale_warning() -> None:
    """Arm the once-per-run upscale warning again (tests, or a new run in the same process)."""
    global _upscale_warned
    _upscale_warned = False


def to_tensor(image) -> torch.Tensor:
    """PIL RGB (H, W) -> (3, H, W) float32 in [-1, 1]."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class ImageDataset(Dataset):
    """Item i: {"image": (3, image_size, image_size) in [-1, 1], "id": ids[i], "upscaled": bool, "error": str}.

    A corrupt or truncated image raises DatasetLayoutError naming the file, unless
    `on_corrupt="skip"`: then the item is a zero image whose "error" holds that message, and the
    consumer (the latent cache builder) leaves the row out and reports the count. The builder reads
    items through `load`, which never raises, and raises itself in the main process, so a
    DataLoader worker never wraps the message in its own traceback. DataLoader
    workers do not warn about upscaling themselves (each would warn once); the consumer sees
    "upscaled" in the batch and calls `warn_upscaled_once` in the main process.
    """

    def __init__(self, root: str | Path, ids: list[str], image_size: int, on_corrupt: str = "error"):
        if on_corrupt not in ON_CORRUPT:
            raise ValueError(f"on_corrupt={on_corrupt!r}; choose one of {ON_CORRUPT}")
        self.layout = CelebALayout(Path(root))
        self.ids = list(ids)
        self.image_size = int(image_size)
        self.on_corrupt = on_corrupt

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> dict:
        """Item `index`; a corrupt image gives a zero image with "error" set, whatever `on_corrupt` says."""
        item_id = self.ids[index]
        path = self.layout.image_path(item_id)
        try:
            image, upscaled = load_image(path, self.image_size)
        except DatasetLayoutError as err:
            size = self.image_size
            return {"image": torch.zeros(3, size, size), "id": item_id, "upscaled": False, "error": str(err)}
        if upscaled and get_worker_info() is None:
            warn_upscaled_once(path, self.image_size)
        return {"image": to_tensor(image), "id": item_id, "upscaled": upscaled, "error": ""}

    def __getitem__(self, index: int) -> dict:
        item = self.load(index)
        if item["error"] and self.on_corrupt == "error":
            raise DatasetLayoutError(corrupt_hint(item["error"]))
        return item


def corrupt_hint(error: str) -> str:
    return f"{error}; replace the file, or set data.on_missing=skip to leave such images out"


_corrupt_warned: set[str] = set()


def collate_skipping_corrupt(items: list[dict]) -> dict:
    """collate_fn for stage 1 with `data.on_missing=skip`: leaves corrupt images (items whose "error"
    is set, see ImageDataset) out of the batch, warning once per file and process. The batch may
    come out smaller, or empty: "image" is then (0, 3, H, W) and the autoencoder skips the step."""
    kept = [item for item in items if not item["error"]]
    for item in items:
        if item["error"] and item["error"] not in _corrupt_warned:
            _corrupt_warned.add(item["error"])
            warnings.warn(f"skipping {item['error']} (data.on_missing=skip)", stacklevel=2)
    if kept:
        return default_collate(kept)
    image = items[0]["image"]
    return {"image": image.new_empty((0, *image.shape)), "id": [], "upscaled": torch.zeros(0, dtype=torch.bool), "error": []}
