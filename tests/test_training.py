"""The real Hydra config, composed and run on tiny sizes: fast_dev_run, a short fit, then sample.py."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from conftest import ROOT, compose_config
from text_ldm.training import train


def test_fast_dev_run(train_cfg):
    train_cfg.trainer.fast_dev_run = True
    metrics = train(train_cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))


def test_logger_none_trains(train_cfg, tmp_path):
    # Not fast_dev_run: it swaps the loggers for a dummy and would hide a callback that needs one.
    train_cfg.logger = None
    train_cfg.trainer.max_steps = 1
    metrics = train(train_cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


def test_unet_width_and_shape_follow_encoder_and_autoencoder(train_cfg):
    model = instantiate(train_cfg.model)
    assert model.unet.config.cross_attention_dim == model.text_encoder.embed_dim == 384
    assert model.unet.config.in_channels == model.autoencoder.latent_channels
    assert model.latent_shape == (3, 8, 8)


def test_caption_dropout_rate(train_cfg):
    model = instantiate(train_cfg.model)
    torch.manual_seed(0)
    dropped = model._drop_captions(["a caption"] * 20000)
    assert abs(dropped.count("") / 20000 - 0.1) < 0.01


def test_fit_then_sample_from_checkpoint_alone(train_cfg, tmp_path):
    train(train_cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["noise_scheduler"]["beta_schedule"] == "scaled_linear"
    for weights in ("state_dict", "current_model_state"):  # EMA weights and raw weights
        assert not any(k.startswith(("text_encoder.", "autoencoder.")) for k in checkpoint[weights])
    ema, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)
    grids = list((tmp_path / "run").rglob("images/samples_step*.png"))
    assert grids, "the image logger wrote no preview grid"

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("She has blond hair and wears eyeglasses.\n\nHe has black hair and a beard.\n")
    out = tmp_path / "samples"
    result = subprocess.run(
        [sys.executable, str(ROOT / "sample.py"), f"ckpt={ckpt}", f"prompts_file={prompts}", "num_images_per_prompt=2",
         "steps=3", "seed=7", f"out_dir={out}", f"hydra.run.dir={tmp_path / 'hydra'}"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"grid: {out / 'grid.png'}" in result.stdout
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["file"] for r in records] == ["0000_00.png", "0000_01.png", "0001_00.png", "0001_01.png"]
    assert {r["prompt"] for r in records} == {"She has blond hair and wears eyeglasses.", "He has black hair and a beard."}
    assert [r["seed"] for r in records] == [7, 8, 9, 10]
    assert all(r["sampler"] == "ddim" and r["steps"] == 3 and r["guidance_scale"] == 3.0 for r in records)
    for r in records:
        assert Image.open(out / r["file"]).size == (32, 32)
    grid = Image.open(out / "grid.png")
    assert grid.width >= 2 * 32 and grid.height > 2 * 2 * 32  # two rows of two upscaled images plus captions


@pytest.mark.parametrize("group,choice", [("model", "unet_huge"), ("vae", "missing")])
def test_unknown_choice_lists_the_options(group, choice):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException) as err:
        compose_config("train", [f"{group}={choice}"])
    assert "Available options" in str(err.value)


def test_every_offered_model_choice_is_a_whole_model(tmp_path):
    """The shared base of the UNet configs is not a choice: each option Hydra offers builds a UNet."""
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException) as err:
        compose_config("train", ["model=unet_nope"])
    offered = re.findall(r"^\t(\S+)$", str(err.value).split("Available options in 'model':")[1], re.M)
    assert "unet_tiny" in offered
    for choice in offered:
        cfg = compose_config("train", [f"model={choice}", f"paths.root_dir={tmp_path}"])
        assert "unet" in cfg.model, f"model={choice} is offered but is no whole model"


def test_every_model_size_composes_and_builds(tmp_path, tiny_vq_dir, toy_root):
    from text_ldm.models.unet import build_unet
    from text_ldm.utils.config import plain

    for size, channels in [("unet_tiny", 32), ("unet_small", 128), ("unet_base", 256)]:
        cfg = compose_config("train", [f"model={size}", f"paths.root_dir={tmp_path}"])
        assert cfg.model.noise_scheduler.beta_start == 0.00085 and cfg.model.noise_scheduler.beta_end == 0.012
        if size != "unet_base":  # building the base UNet costs seconds and ~1 GB for nothing new
            unet = build_unet(plain(cfg.model.unet), 3, 16, 512)
            assert unet.config.block_out_channels[0] == channels


@pytest.mark.parametrize("key", ["cross_attention_dim", "in_channels", "sample_size"])
def test_typing_a_derived_unet_width_is_a_config_error(train_cfg, key):
    """The text width and latent shape cannot disagree with the encoders: typing them is refused."""
    from omegaconf import open_dict

    with open_dict(train_cfg):
        train_cfg.model.unet[key] = 768
    # Hydra wraps errors raised while instantiating (InstantiationException); train.py unwraps them.
    with pytest.raises(Exception, match=re.escape(f"model.unet.{key} is derived from the autoencoder / text encoder")):
        instantiate(train_cfg.model)


def test_unet_base_ldm_is_unet_base_in_the_ldm_attention_layout(tmp_path):
    """Same widths as unet_base; no attention at the finest level; every head 64 channels wide."""
    base = compose_config("train", ["model=unet_base", f"paths.root_dir={tmp_path}"]).model.unet
    ldm = compose_config("train", ["model=unet_base_ldm", f"paths.root_dir={tmp_path}"]).model.unet
    assert list(ldm.block_out_channels) == list(base.block_out_channels)
    assert ldm.down_block_types[0] == "DownBlock2D" and ldm.up_block_types[-1] == "UpBlock2D"
    assert all(kind.startswith("CrossAttn") for kind in [*ldm.down_block_types[1:], *ldm.up_block_types[:-1]])
    assert [c // h for c, h in zip(ldm.block_out_channels, ldm.attention_head_dim)] == [64] * 4


def test_oversubscribed_cpu_threads_get_a_hint():
    from text_ldm.training import oversubscription_hint

    assert oversubscription_hint(2, 2, 2) == ("hint: 2 CPU processes x 2 threads on 2 cores oversubscribe them; "
                                              "set num_threads=1")
    assert oversubscription_hint(1, 8, 4) == ("hint: 1 CPU process x 8 threads on 4 cores oversubscribe them; "
                                              "set num_threads=4")
    assert oversubscription_hint(2, 1, 2) is None and oversubscription_hint(1, 2, 16) is None


def test_a_run_with_more_threads_than_cores_prints_the_hint(train_cfg, caplog):
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = torch.get_num_threads()
    train_cfg.num_threads = cores + 1
    train_cfg.trainer.max_steps = 1
    train_cfg.callbacks.image_logger = None
    try:
        with caplog.at_level("INFO"):
            train(train_cfg)
    finally:
        torch.set_num_threads(threads)
    assert f"1 CPU process x {cores + 1} threads on {cores} cores oversubscribe them; set num_threads={cores}" in caplog.text
