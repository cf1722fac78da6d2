"""The `make demo` recipe: it composes, and its pooled-text path really conditions the UNet."""
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
    """The recipe composes, builds, and keeps what the time budget needs: a schedule it can re-plan."""
    cfg = compose_config("train", ["experiment=demo", f"paths.root_dir={tmp_path}"])
    assert cfg.model.lr_scheduler._target_.endswith("warmup_cosine_schedule")
    assert cfg.callbacks.time_budget.minutes is not None
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
               up_block_types=["UpBlock2D"] * 2, mid_block_type="UNetMidBlock2D", layers_per_block=1)
    cfg.pop("only_cross_attention", None)
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


def test_demo_trainer_and_time_budget_agree(tmp_path):
    """The demo's trainer settings are ones its time budget accepts: it plans in epochs, the step count ends the run."""
    import lightning as L

    cfg = compose_config("train", ["experiment=demo", f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}", "trainer.devices=1",
                                   "trainer.strategy=auto", "logger=none"])
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    budget = instantiate(cfg.callbacks.time_budget)
    budget.setup(trainer, L.LightningModule(), "fit")  # raises for a recipe it cannot plan


def test_demo_unet_reads_the_prompt_at_full_latent_resolution(tmp_path):
    """The lips are drawn at 16 x 16: there the up path attends to the text tokens, so the same features with
    another prompt come out different from that attention block itself."""
    unet_cfg = plain(compose_config("train", ["model=unet_demo", f"paths.root_dir={tmp_path}"]).model.unet)
    torch.manual_seed(0)
    unet = build_unet(unet_cfg, 4, 16, 384).eval()
    calls = []
    hooks = [attention.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append((module, args[0] if args else kwargs["hidden_states"])),
        with_kwargs=True) for attention in getattr(unet.up_blocks[-1], "attentions", [])]
    ctx_a, ctx_b = torch.randn(2, 7, 384), torch.randn(2, 7, 384)
    with torch.no_grad():
        unet(torch.randn(2, 4, 16, 16), torch.tensor([500, 500]), encoder_hidden_states=ctx_a)
        for hook in hooks:
            hook.remove()
        assert calls, "no attention block at 16 x 16"
        for attention, features in calls:
            assert features.shape[-2:] == (16, 16)
            a = attention(features, encoder_hidden_states=ctx_a).sample
            b = attention(features, encoder_hidden_states=ctx_b).sample
            assert not torch.allclose(a, b)
