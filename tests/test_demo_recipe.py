"""The `make demo` recipe (issue #4): it composes, and its pooled-text path really conditions the UNet."""
from __future__ import annotations

import re
import shutil
import subprocess
import time

import pytest
import torch
from hydra.utils import instantiate

from conftest import ROOT, compose_config
from text_ldm.models.unet import build_unet
from text_ldm.utils.config import plain


def test_demo_experiment_composes_its_recipe(tmp_path):
    """bench/demo_levers.md's recipe reaches the config: pooled text, guidance 9, warmup + cosine,
    long captions drawn more often, the four sex x beard / lipstick combinations drawn equally often, one pooling
    head, logit-normal timesteps, two one-thread DDP processes on the CPU, a training time budget."""
    cfg = compose_config("train", ["experiment=demo", f"paths.root_dir={tmp_path}"])
    assert cfg.model.unet.addition_embed_type == "text"
    assert cfg.model.preview.guidance_scale == 9.0 and cfg.data.caption_length_power == 4
    assert [list(group) for group in cfg.data.balance_attributes] == [["Male", "No_Beard"], ["Male", "Wearing_Lipstick"]]
    assert list(cfg.data.balance_power) == [1.0, 1.0]
    assert cfg.model.unet.addition_embed_type_num_heads == 1
    assert cfg.model.lr_scheduler._target_.endswith("warmup_cosine_schedule")  # re-plannable by the budget
    assert 0 < cfg.callbacks.time_budget.minutes <= 12
    assert cfg.model.timestep_sampling.kind == "logit_normal" and cfg.model.timestep_sampling.mean > 0
    assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.strategy, cfg.num_threads) == ("cpu", 2, "ddp", 1)
    unet = build_unet(plain(cfg.model.unet), 4, 16, 384)
    assert unet.add_embedding is not None


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_demo_ends_training_before_its_minutes_are_up(tmp_path):
    """The 15 minutes count from when make starts: train.py gets a wall-clock end DEMO_RESERVE_S before them,
    which reaches the time budget callback."""
    before = time.time()
    dry_run = subprocess.run(["make", "-n", "demo", "DEMO_MINUTES=15", "DEMO_RESERVE_S=75"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    after = time.time()
    assert dry_run.returncode == 0, dry_run.stderr
    command = dry_run.stdout.replace("\\\n", " ")
    overrides = re.search(r"train\.py (.*?)(\$\(|$)", command, re.M).group(1).split()
    ends_by = int(next(o for o in overrides if o.startswith("callbacks.time_budget.ends_by=")).split("=")[1])
    assert int(before) + 825 <= ends_by <= after + 825
    budget = instantiate(compose_config("train", overrides + [f"paths.root_dir={tmp_path}"]).callbacks.time_budget)
    assert budget.ends_by == ends_by and budget.budget_s == 15 * 60  # the deadline, not the 12 minutes, binds


def _no_cross_attention(unet_cfg: dict, pooled: bool) -> dict:
    cfg = dict(unet_cfg, block_out_channels=[32, 32], down_block_types=["DownBlock2D"] * 2,
               up_block_types=["UpBlock2D"] * 2, mid_block_type="UNetMidBlock2D")
    if not pooled:
        cfg.pop("addition_embed_type"), cfg.pop("addition_embed_type_num_heads")
    return cfg


def test_pooled_text_alone_makes_the_prediction_depend_on_the_prompt(tmp_path):
    """Without cross-attention blocks (mid block included), only the pooled path can carry the text: two contexts must
    then give different predictions with it, and identical ones without it."""
    unet_cfg = plain(compose_config("train", ["model=unet_demo", f"paths.root_dir={tmp_path}"]).model.unet)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([500, 500])
    ctx_a, ctx_b = torch.randn(2, 7, 384), torch.randn(2, 7, 384)
    for pooled in (True, False):
        torch.manual_seed(0)
        unet = build_unet(_no_cross_attention(unet_cfg, pooled), 4, 8, 384).eval()
        with torch.no_grad():
            a = unet(x, t, encoder_hidden_states=ctx_a).sample
            b = unet(x, t, encoder_hidden_states=ctx_b).sample
        assert torch.allclose(a, b) is not pooled, f"pooled={pooled}"
