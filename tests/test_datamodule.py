"""CelebADataModule: toy data generated on first use, latents + captions served from the cache."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import IMAGE_SIZE
from text_ldm.data.celeba_layout import read_captions
from text_ldm.data.datamodule import CelebADataModule, LatentCaptionDataset
from text_ldm.data.latent_cache import LatentCache


def _datamodule(tmp_path, vq_dir, **kwargs) -> CelebADataModule:
    autoencoder = {"_target_": "text_ldm.models.autoencoder.FrozenAutoencoder.from_pretrained",
                   "pretrained": str(vq_dir), "kind": "vq"}
    defaults = dict(root=str(tmp_path / "toy"), image_size=IMAGE_SIZE, batch_size=4, cache_dir=str(tmp_path / "cache"),
                    autoencoder=autoencoder, toy={"num_train": 12, "num_test": 4, "seed": 3, "progress": False},
                    generate=True)
    return CelebADataModule(**{**defaults, **kwargs})


def test_prepare_data_generates_toy_faces_and_caches_both_splits(tmp_path, tiny_vq_dir):
    dm = _datamodule(tmp_path, tiny_vq_dir)
    dm.prepare_data()
    assert len(list((tmp_path / "toy" / "CelebA-HQ-img").glob("*.png"))) == 16
    assert {p.name.split("-")[0] for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")} == {"train", "test"}
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["latent"].shape == (4, 3, IMAGE_SIZE // 4, IMAGE_SIZE // 4)
    assert len(batch["caption"]) == 4 and all(isinstance(c, str) and c for c in batch["caption"])
    assert len(dm.val_dataloader().dataset) == 4


def test_captions_are_redrawn_each_epoch_reproducibly(tmp_path, tiny_vq_dir):
    dm = _datamodule(tmp_path, tiny_vq_dir)
    dm.prepare_data()
    dm.setup("fit")
    train = dm.datasets["train"]
    epoch0 = [train[i]["caption"] for i in range(len(train))]
    train.set_epoch(1)
    epoch1 = [train[i]["caption"] for i in range(len(train))]
    assert epoch0 != epoch1
    train.set_epoch(0)
    assert [train[i]["caption"] for i in range(len(train))] == epoch0
    for i, caption in enumerate(epoch1):
        assert caption in read_captions(dm.layout.caption_path(dm.layout.split_ids("train")[i]))
    test = dm.datasets["test"]
    test.set_epoch(5)
    assert [test[i]["caption"] for i in range(len(test))] == [c[0] for c in test.captions]
    assert dm.preview_prompts() == [c[0] for c in test.captions]


def test_images_mode_serves_images(tmp_path):
    dm = _datamodule(tmp_path, None, mode="images", autoencoder=None, cache_dir=None)
    dm.prepare_data()
    dm.setup("fit")
    images = next(iter(dm.train_dataloader()))["image"]
    assert images.shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE) and images.min() >= -1 and images.max() <= 1
    assert not (tmp_path / "cache").exists()


def test_bad_arguments_are_named(tmp_path, tiny_vq_dir):
    with pytest.raises(ValueError, match="data.mode"):
        _datamodule(tmp_path, tiny_vq_dir, mode="pixels")
    with pytest.raises(ValueError, match="cache_dir"):
        _datamodule(tmp_path, tiny_vq_dir, cache_dir=None)


def _caption_dataset(captions: list[list[str]], power: float) -> LatentCaptionDataset:
    latents = np.zeros((len(captions), 3, 2, 2), np.float32)
    cache = LatentCache(Path("unused"), [str(i) for i in range(len(captions))], latents, {})
    return LatentCaptionDataset(cache, captions, seed=0, caption_length_power=power)


def _draw_counts(dataset: LatentCaptionDataset, epochs: int) -> Counter:
    counts = Counter()
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        counts.update(dataset[i]["caption"] for i in range(len(dataset)))
    return counts


def test_caption_length_power_draws_long_captions_in_proportion():
    short, long = "A man.", "The man has black hair and wears a hat. He is not smiling."  # 2 vs 13 words
    captions = [[short, long]] * 50
    uniform = _draw_counts(_caption_dataset(captions, 0.0), epochs=40)
    weighted = _draw_counts(_caption_dataset(captions, 1.0), epochs=40)
    assert abs(uniform[long] / 2000 - 0.5) < 0.05
    assert abs(weighted[long] / 2000 - 13 / 15) < 0.03  # P(long) = 13 / (2 + 13)
    again = _caption_dataset(captions, 1.0)
    assert _draw_counts(again, epochs=40) == weighted  # still a pure function of (seed, epoch, index)


def test_negative_caption_length_power_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="caption_length_power"):
        _caption_dataset([["a b"]], -1.0)
    with pytest.raises(ValueError, match="data.caption_length_power"):
        _datamodule(tmp_path, None, caption_length_power=-0.5)
