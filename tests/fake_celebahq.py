"""A small fake CelebA-HQ + MM-CelebA-HQ folder, written by tests in the real layout (JPEG images
larger than the training size, caption files with blank lines, the attribute file, the split pickles)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from text_ldm.data.celeba_layout import ATTRIBUTE_FILE, CAPTION_DIR, IMAGE_DIR, write_attributes

ATTRIBUTES = ["Male", "Smiling", "Blond_Hair"]
CAPTIONS = ["she has blond hair and wears a hat .", "he has black hair .", "she wears glasses and has black hair ."]


def write_fake_celebahq(root: Path, n_train: int = 6, n_test: int = 2, size: int = 48,
                        split_format: str = "pickle") -> Path:
    """Ids 0..n_train-1 train, the next n_test test; RGB JPEGs of `size` px; returns `root`."""
    rng = np.random.default_rng(0)
    (root / IMAGE_DIR).mkdir(parents=True)
    (root / CAPTION_DIR).mkdir()
    rows = {}
    for i in range(n_train + n_test):
        # Smooth colour fields (not white noise): JPEG keeps them, so encodings differ per image.
        base = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((size, size), Image.Resampling.BILINEAR)
        image.save(root / IMAGE_DIR / f"{i}.jpg", quality=95)
        captions = [CAPTIONS[(i + k) % len(CAPTIONS)] for k in range(2)]
        (root / CAPTION_DIR / f"{i}.txt").write_text(f"{captions[0]}\n\n{captions[1]}\n", encoding="utf-8")
        rows[str(i)] = {name: bool((i >> b) & 1) for b, name in enumerate(ATTRIBUTES)}
    write_attributes(root / ATTRIBUTE_FILE, ATTRIBUTES, rows, ext=".jpg")
    splits = {"train": list(range(n_train)), "test": list(range(n_train, n_train + n_test))}
    for split, ids in splits.items():
        if split_format == "pickle":  # as MM-CelebA-HQ ships them: a pickled list of ints
            (root / f"{split}.pickle").write_bytes(pickle.dumps(ids))
        else:
            (root / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    return root


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Import into a test module to run it with one intra-op thread: on a shared 2-core machine two
    threads contending with other processes made these tiny-model runs ~15x slower (20 s vs 1.3 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
