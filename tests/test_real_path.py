"""The real path offline: `experiment=celebahq_text` composed from the real configs, pointed at tiny
models saved with save_pretrained in the layouts of the hub repos it names (CompVis/ldm-celebahq-256
with its vqvae/ subfolder, a flat stabilityai/sd-vae-ft-ema, a flat openai/clip-vit-base-patch16
holding a whole CLIPModel and its tokenizer), and a fake CelebA-HQ folder with MM-CelebA-HQ pickles.
Runs: latent cache, fast_dev_run, a one-step fit, sampling from the checkpoint, the reconstruction check."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from hydra.utils import instantiate
from PIL import Image
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from conftest import compose_config, tiny_vq
from fake_celebahq import one_thread  # noqa: F401  (autouse fixture)
from fake_celebahq import CAPTIONS, write_fake_celebahq
from text_ldm.data.latent_cache import LatentCache
from text_ldm.training import train

SIZE = 32
CLIP_WIDTH = 24


def _tiny_clip(path) -> None:
    """A whole (text + vision) CLIPModel and its tokenizer, flat, as openai/clip-vit-* repos are."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for word in " ".join(CAPTIONS).split():
        vocab.setdefault(word + "</w>", len(vocab))
    for ch in "abcdefghijklmnopqrstuvwxyz.":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    path.mkdir(parents=True)
    (path / "src_vocab.json").write_text(json.dumps(vocab))
    (path / "src_merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(path / "src_vocab.json"), str(path / "src_merges.txt"), model_max_length=16).save_pretrained(path)
    text = dict(vocab_size=len(vocab), hidden_size=CLIP_WIDTH, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=16,
                  patch_size=8)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(path)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    # The real vqvae/config.json leaves scaling_factor at VQModel's 0.18215: the config must override it.
    tiny_vq(scaling_factor=0.18215).save_pretrained(root / "ldm-celebahq-256" / "vqvae")
    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                  scaling_factor=0.18215).save_pretrained(root / "sd-vae-ft-ema")
    _tiny_clip(root / "clip-vit-base-patch16")
    write_fake_celebahq(root / "CelebAMask-HQ", n_train=6, n_test=2, size=48)
    return root


def _overrides(hub, tmp_path, *extra: str) -> list[str]:
    """The user's command (experiment + data_dir), pointed at the tiny models, shrunk for a CPU test."""
    return ["experiment=celebahq_text", f"paths.data_dir={hub / 'CelebAMask-HQ'}", f"paths.root_dir={tmp_path}",
            f"paths.output_dir={tmp_path / 'run'}", f"vae.pretrained={hub / 'ldm-celebahq-256'}",
            f"text_encoder.pretrained={hub / 'clip-vit-base-patch16'}", "text_encoder.max_length=16",
            f"data.image_size={SIZE}", "data.batch_size=2", "data.num_workers=0", "data.cache_num_workers=0",
            "model=unet_micro", "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.max_epochs=1",
            "callbacks.image_logger.every_n_epochs=0", "model.sampling.steps=2",  # previews: sample() covers sampling
            *extra]


def _manifest(tmp_path, split="train") -> dict:
    (path,) = (tmp_path / "cache" / "latents" / "celebahq").glob(f"{split}-*[!l]")  # not the .partial
    return LatentCache.open(path).manifest


def test_experiment_is_the_seed_recipe(tmp_path):
    cfg = compose_config("train", ["experiment=celebahq_text", "paths.data_dir=/data/CelebAMask-HQ",
                                   f"paths.root_dir={tmp_path}"])
    assert cfg.data.root == "/data/CelebAMask-HQ" and cfg.data.image_size == 256 and cfg.data.toy is None
    assert (cfg.vae.pretrained, cfg.vae.subfolder, cfg.vae.kind) == ("CompVis/ldm-celebahq-256", "vqvae", "vq")
    assert cfg.vae.scaling_factor == 1.0  # diffusers #6725: not 0.18215
    assert cfg.text_encoder.pretrained == "openai/clip-vit-base-patch16" and cfg.text_encoder.max_length == 77
    assert list(cfg.model.unet.block_out_channels) == [128, 256, 384, 512]  # unet_small
    s = cfg.model.noise_scheduler
    assert (s.beta_schedule, s.beta_start, s.beta_end, s.num_train_timesteps) == ("scaled_linear", 0.00085, 0.012, 1000)
    assert cfg.model.caption_dropout == 0.1
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    assert compose_config("train", ["experiment=celebahq_text", "model=unet_base"]).model.unet.block_out_channels[0] == 256


def test_end_to_end_cache_fast_dev_run_fit_and_sample(hub, tmp_path):
    from text_ldm.sampling.app import sample

    cfg = compose_config("train", _overrides(hub, tmp_path, "trainer.fast_dev_run=true"))
    assert np.isfinite(train(cfg)["train/loss"])
    manifest = _manifest(tmp_path)
    assert manifest["scaling_factor"] == 1.0 and manifest["latent_shape"] == [3, SIZE // 4, SIZE // 4]
    assert manifest["ids"] == [str(i) for i in range(6)] and _manifest(tmp_path, "test")["ids"] == ["6", "7"]
    model = instantiate(cfg.model)
    assert model.unet.config.cross_attention_dim == model.text_encoder.embed_dim == CLIP_WIDTH  # from the encoder

    fit = compose_config("train", _overrides(hub, tmp_path, "trainer.max_steps=1", "trainer.limit_val_batches=1"))
    train(fit)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    out = tmp_path / "samples"
    grid = sample(compose_config("sample", [f"ckpt={ckpt}", f"prompt={CAPTIONS[0]}", "num_images_per_prompt=2",
                                            "steps=2", f"out_dir={out}", "device=cpu"]))
    assert grid == out / "grid.png" and grid.is_file()
    for name in ("0000_00.png", "0000_01.png"):
        assert Image.open(out / name).size == (SIZE, SIZE)


@pytest.mark.parametrize("vae, shape, scale", [("sd_kl", [4, SIZE // 2, SIZE // 2], 0.18215),
                                               ("identity", [3, SIZE, SIZE], 1.0)])
def test_other_vae_choices_cache_and_train(hub, tmp_path, vae, shape, scale):
    extra = [f"vae={vae}"] + ([f"vae.pretrained={hub / 'sd-vae-ft-ema'}"] if vae == "sd_kl" else [])
    cfg = compose_config("train", _overrides(hub, tmp_path, "trainer.fast_dev_run=true", *extra))
    assert np.isfinite(train(cfg)["train/loss"])
    manifest = _manifest(tmp_path)
    assert manifest["latent_shape"] == shape and manifest["scaling_factor"] == pytest.approx(scale)


def test_clip_l14_sets_the_cross_attention_width(hub, tmp_path):
    cfg = compose_config("train", _overrides(hub, tmp_path, "text_encoder=clip_l14"))
    assert compose_config("train", ["text_encoder=clip_l14"]).text_encoder.pretrained == "openai/clip-vit-large-patch14"
    cfg.text_encoder.pretrained = str(hub / "clip-vit-base-patch16")
    model = instantiate(cfg.model)
    assert model.unet.config.cross_attention_dim == CLIP_WIDTH


def test_reconstruct_writes_grids_and_the_psnr_of_what_it_decoded(hub, tmp_path):
    from text_ldm.data.image_dataset import ImageDataset
    from text_ldm.reconstruct import reconstruct

    data_dir = hub / "CelebAMask-HQ"
    cfg = compose_config("reconstruct", ["data=celebahq", "vae=ldm_celebahq_vq", f"paths.data_dir={data_dir}",
                                         f"vae.pretrained={hub / 'ldm-celebahq-256'}", f"data.image_size={SIZE}",
                                         "num_images=3", f"out_dir={tmp_path}", "device=cpu"])
    result = reconstruct(cfg)
    assert result["ids"] == ["6", "7"]  # the test split holds two images
    assert Image.open(tmp_path / "input_samples.png").size == (2 * (SIZE + 2) + 2, SIZE + 4)
    assert Image.open(tmp_path / "encoded_samples.png").size == (3 * (SIZE + 2) + 2, 2 * (SIZE + 2) + 2)  # 3 channels
    assert Image.open(tmp_path / "reconstructed_samples.png").size == (2 * (SIZE + 2) + 2, SIZE + 4)
    assert json.loads((tmp_path / "reconstruction.json").read_text()) == result
    ae = instantiate(cfg.vae)
    images = torch.stack([ImageDataset(data_dir, ["6", "7"], SIZE)[i]["image"] for i in range(2)])
    x, y = (images + 1) / 2, (ae.decode(ae.encode(images)) + 1) / 2
    expected = -10 * torch.log10(((x - y) ** 2).mean(dim=(1, 2, 3)))
    np.testing.assert_allclose(result["psnr_db"], expected.numpy(), atol=1e-2)
