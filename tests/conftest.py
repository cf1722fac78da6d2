"""Shared fixtures: tiny pretrained-layout models on disk, a tiny toy dataset, and the real Hydra
config composed with overrides that point at them."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from diffusers import VQModel
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
IMAGE_SIZE = 32
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
torch.set_num_threads(2)


def tiny_vq(latent_channels: int = 3, scaling_factor: float = 1.0) -> VQModel:
    """A 4x-downsampling VQModel with a few thousand parameters."""
    torch.manual_seed(0)
    return VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                   up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 8, 8), layers_per_block=1,
                   latent_channels=latent_channels, num_vq_embeddings=32, vq_embed_dim=latent_channels,
                   norm_num_groups=4, mid_block_add_attention=False, scaling_factor=scaling_factor)


@pytest.fixture(scope="session")
def tiny_vq_dir(tmp_path_factory) -> Path:
    """A tiny VQModel saved like the toy autoencoder export (hub layout, no subfolder)."""
    path = tmp_path_factory.mktemp("tiny_vq")
    tiny_vq(scaling_factor=0.5).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> Path:
    from text_ldm.data.toy_faces import build_toy_faces

    root = tmp_path_factory.mktemp("data") / "toy_faces"
    build_toy_faces(root, num_train=32, num_test=8, image_size=IMAGE_SIZE, seed=0, progress=False)
    return root


def compose_config(name: str, overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def tiny_train_overrides(tmp_path: Path, toy_root: Path, vq_dir: Path) -> list[str]:
    """The real train config, shrunk: tiny data, tiny VQ, the micro UNet, one short epoch on CPU."""
    return [
        f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'run'}",
        f"data.root={toy_root}", f"data.image_size={IMAGE_SIZE}", "data.toy=null", "data.batch_size=8",
        f"vae.pretrained={vq_dir}", "model=unet_micro", "trainer.accelerator=cpu", "trainer.max_epochs=1",
        "trainer.log_every_n_steps=1", "callbacks.image_logger.every_n_epochs=1",
        "callbacks.image_logger.images_per_prompt=2", "callbacks.image_logger.max_prompts=2",
        "model.sampling.steps=3", "logger=csv",
    ]


@pytest.fixture
def train_cfg(tmp_path, toy_root, tiny_vq_dir) -> DictConfig:
    return compose_config("train", tiny_train_overrides(tmp_path, toy_root, tiny_vq_dir))
