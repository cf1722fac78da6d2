"""CelebADataModule: toy data generated on first use, latents + captions served from the cache."""
from __future__ import annotations

import pytest

from conftest import IMAGE_SIZE
from text_ldm.data.celeba_layout import read_captions
from text_ldm.data.datamodule import CelebADataModule


def _datamodule(tmp_path, vq_dir, **kwargs) -> CelebADataModule:
    autoencoder = {"_target_": "text_ldm.models.autoencoder.FrozenAutoencoder.from_pretrained",
                   "pretrained": str(vq_dir), "kind": "vq"}
    defaults = dict(root=str(tmp_path / "toy"), image_size=IMAGE_SIZE, batch_size=4, cache_dir=str(tmp_path / "cache"),
                    autoencoder=autoencoder, toy={"num_train": 12, "num_test": 4, "seed": 3, "progress": False})
    return CelebADataModule(**{**defaults, **kwargs})


def test_prepare_data_generates_toy_faces_and_caches_both_splits(tmp_path, tiny_vq_dir):
    dm = _datamodule(tmp_path, tiny_vq_dir)
    dm.prepare_data()
    assert len(list((tmp_path / "toy" / "CelebA-HQ-img").glob("*.png"))) == 16
    assert {p.name.split("-")[0] for p in (tmp_path / "cache").iterdir()} == {"train", "test"}
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
