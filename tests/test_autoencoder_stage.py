"""Stage 1: `python train.py --config-name autoencoder`, composed for real and run on tiny sizes."""
from __future__ import annotations

import json

import torch

from conftest import IMAGE_SIZE, compose_config
from text_ldm.data.celeba_layout import read_split
from text_ldm.data.image_dataset import ImageDataset
from text_ldm.models.autoencoder import FrozenAutoencoder
from text_ldm.training import train


def test_train_and_export_toy_autoencoder(tmp_path, toy_root):
    export = tmp_path / "toy_vq"
    cfg = compose_config("autoencoder", [
        f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'run'}", f"data.root={toy_root}",
        f"data.image_size={IMAGE_SIZE}", "data.toy=null", "data.batch_size=8", "model.train_crop=16",
        "model.vq.block_out_channels=[8,8,8]", "model.vq.norm_num_groups=4", f"model.export_dir={export}",
        "trainer.accelerator=cpu", "trainer.max_steps=6", "trainer.check_val_every_n_epoch=1"])
    metrics = train(cfg)
    assert "val/psnr" in metrics
    config = json.loads((export / "config.json").read_text())
    assert config["latent_channels"] == 4
    autoencoder = FrozenAutoencoder.from_pretrained(str(export), kind="vq", force_not_quantize=True)
    assert autoencoder.scaling_factor == config["scaling_factor"] != 0.18215
    # The exported scale makes the training latents unit-variance (measured on the same images).
    ids = read_split(toy_root, "train")
    images = torch.stack([ImageDataset(toy_root, ids, IMAGE_SIZE)[i]["image"] for i in range(len(ids))])
    assert abs(float(autoencoder.encode(images).std()) - 1.0) < 0.1
    assert autoencoder.decode(autoencoder.encode(images[:2])).shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
