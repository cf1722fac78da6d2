"""Stage 1: `python train.py --config-name autoencoder`, composed for real and run on tiny sizes."""
from __future__ import annotations

import json

import pytest
import torch
from diffusers import VQModel

from conftest import IMAGE_SIZE, compose_config
from text_ldm.data.celeba_layout import read_split
from text_ldm.data.image_dataset import ImageDataset
from text_ldm.lit.autoencoder import VQAutoencoderModule
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

    # Re-export without training (max_steps=0) from init_from: the same weights, the same latents
    again = tmp_path / "toy_vq_again"
    cfg = compose_config("autoencoder", [
        f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'run2'}", f"data.root={toy_root}",
        f"data.image_size={IMAGE_SIZE}", "data.toy=null", "data.batch_size=8",
        "model.vq.block_out_channels=[8,8,8]", "model.vq.norm_num_groups=4", f"model.export_dir={again}",
        f"model.init_from={export}", "trainer.accelerator=cpu", "trainer.max_steps=0"])
    train(cfg)
    reexported = FrozenAutoencoder.from_pretrained(str(again), kind="vq", force_not_quantize=True)
    assert torch.allclose(reexported.encode(images[:4]), autoencoder.encode(images[:4]), rtol=1e-2, atol=1e-2)


def _tiny_vq(channels: list[int]) -> dict:
    return {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 2,
            "up_block_types": ["UpDecoderBlock2D"] * 2, "block_out_channels": channels, "layers_per_block": 1,
            "latent_channels": 4, "num_vq_embeddings": 16, "vq_embed_dim": 4, "norm_num_groups": 4}


def test_init_from_continues_from_saved_weights_and_rejects_other_shapes(tmp_path):
    saved = VQModel(**_tiny_vq([8, 8]))
    saved.to(torch.float16).save_pretrained(tmp_path / "vq")  # fp16, as export() ships it
    optimizer = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3}
    module = VQAutoencoderModule(vq=_tiny_vq([8, 8]), optimizer=optimizer, init_from=str(tmp_path / "vq"))
    for (name, got), want in zip(module.model.state_dict().items(), saved.state_dict().values()):
        assert got.dtype == torch.float32 and torch.equal(got, want.float()), name
    fresh = VQAutoencoderModule(vq=_tiny_vq([8, 8]), optimizer=optimizer)
    assert not torch.equal(fresh.model.encoder.conv_in.weight, module.model.encoder.conv_in.weight)
    with pytest.raises(RuntimeError, match="size mismatch"):
        VQAutoencoderModule(vq=_tiny_vq([8, 16]), optimizer=optimizer, init_from=str(tmp_path / "vq"))
