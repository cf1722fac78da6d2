"""Every ResNet block of the CPU UNet configs must see the timestep (and, in unet_demo, the pooled
text): at one channel per GroupNorm group, diffusers' default additive embedding is normalised away."""
from __future__ import annotations

import pytest
import torch
from diffusers.models.resnet import ResnetBlock2D

from conftest import compose_config
from text_ldm.models.unet import build_unet, unconditioned_widths
from text_ldm.utils.config import plain


def _resnet_outputs(unet, timestep: int, context: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
    outputs, handles = {}, []
    for name, module in unet.named_modules():
        if isinstance(module, ResnetBlock2D):
            handles.append(module.register_forward_hook(
                lambda _m, _i, out, name=name: outputs.__setitem__(name, out.detach().clone())))
    with torch.no_grad():
        unet(x, torch.tensor([timestep] * len(x)), encoder_hidden_states=context)
    for handle in handles:
        handle.remove()
    return outputs


@pytest.mark.parametrize("model", ["unet_micro", "unet_tiny", "unet_demo"])
def test_every_resnet_block_sees_the_timestep(model, tmp_path):
    unet_cfg = plain(compose_config("train", [f"model={model}", f"paths.root_dir={tmp_path}"]).model.unet)
    assert unconditioned_widths(unet_cfg) == []
    torch.manual_seed(0)
    unet = build_unet(unet_cfg, 4, 16, 384).eval()
    x, context = torch.randn(2, 4, 16, 16), torch.randn(2, 7, 384)
    early, late = _resnet_outputs(unet, 100, context, x), _resnet_outputs(unet, 900, context, x)
    assert len(early) >= 2 * len(unet_cfg["block_out_channels"])
    # Blocks downstream of a conditioned one change anyway; the first down block, fed x alone, is the
    # one a blind level shows up in.
    blind = [name for name in early if torch.allclose(early[name], late[name], atol=1e-5)]
    assert blind == []


def test_one_channel_per_group_is_flagged_and_really_blind():
    """The check's premise, shown on a real block: the default additive embedding vanishes at one
    channel per group and survives as a scale and shift."""
    cfg = {"block_out_channels": [32, 64], "norm_num_groups": 32}
    assert unconditioned_widths(cfg) == [32]
    assert unconditioned_widths(dict(cfg, resnet_time_scale_shift="scale_shift")) == []
    x = torch.randn(1, 32, 8, 8)
    for mode, blind in (("default", True), ("scale_shift", False)):
        torch.manual_seed(0)
        block = ResnetBlock2D(in_channels=32, out_channels=32, temb_channels=16, groups=32,
                              time_embedding_norm=mode).eval()
        with torch.no_grad():
            same = torch.allclose(block(x, torch.randn(1, 16)), block(x, torch.randn(1, 16)), atol=1e-5)
        assert same is blind, mode
    with pytest.warns(UserWarning, match="resnet_time_scale_shift"):
        build_unet(dict(cfg, down_block_types=["DownBlock2D"] * 2, up_block_types=["UpBlock2D"] * 2,
                        layers_per_block=1), 4, 8, 16)
