"""`model.unet.patch_size`: the UNet runs on p x p patches of the latent and still maps a latent to a latent."""
from __future__ import annotations

import pytest
import torch
from omegaconf import open_dict

from conftest import compose_config
from text_ldm.models.unet import PatchConvIn, PatchConvOut, build_unet
from text_ldm.training import train
from text_ldm.utils.config import plain


def _identity_(conv: torch.nn.Conv2d) -> torch.nn.Conv2d:
    with torch.no_grad():
        conv.weight.copy_(torch.eye(conv.out_channels).view(conv.out_channels, conv.in_channels, 1, 1))
        conv.bias.zero_()
    return conv


def test_patch_convs_gather_each_patch_and_put_it_back():
    """With identity 1x1 kernels, the conv in sees exactly one p x p patch per position and the conv out
    puts it back where it came from: the two use the same channel order."""
    conv_in, conv_out = _identity_(PatchConvIn(4, 16, 1, 2)), _identity_(PatchConvOut(16, 4, 1, 2))
    x = torch.randn(3, 4, 8, 6)
    patches = conv_in(x)
    assert patches.shape == (3, 16, 4, 3)
    assert torch.equal(conv_out(patches), x)
    poked = x.clone()
    poked[:, 2, 5, 2] += 1.0  # row 5, column 2: the patch at (2, 1)
    changed = (conv_in(poked) != patches).any(dim=(0, 1)).nonzero().tolist()
    assert changed == [[2, 1]]


def _demo_unet(tmp_path, patch_size: int):
    cfg = plain(compose_config("train", ["model=unet_demo", f"paths.root_dir={tmp_path}"]).model.unet)
    torch.manual_seed(0)
    return build_unet({**cfg, "patch_size": patch_size}, 4, 16, 384)


def test_patched_unet_maps_a_latent_to_a_latent_with_diffusers_key_names(tmp_path):
    plain_unet, patched = _demo_unet(tmp_path, 1), _demo_unet(tmp_path, 2)
    assert plain_unet.state_dict().keys() == patched.state_dict().keys()
    assert patched.conv_in.weight.shape[1] == 16 and patched.conv_out.weight.shape[0] == 16
    x, context = torch.randn(2, 4, 16, 16), torch.randn(2, 7, 384)
    seen = []
    patched.down_blocks[0].resnets[0].register_forward_hook(lambda _m, _args, out: seen.append(out.shape[-2:]))
    out = patched(x, torch.tensor([10, 900]), encoder_hidden_states=context).sample
    assert out.shape == x.shape and seen == [torch.Size([8, 8])]
    out.square().mean().backward()
    assert patched.conv_in.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("patch_size", [0, 3])
def test_a_patch_size_that_does_not_tile_the_latent_is_refused(tmp_path, patch_size):
    with pytest.raises(ValueError, match="patch_size"):
        _demo_unet(tmp_path, patch_size)


def test_patched_training_run_checkpoints_reloads_and_samples_but_is_not_exported(train_cfg, tmp_path):
    from text_ldm.sampling.checkpoint import load_diffusion
    from text_ldm.sampling.export import build_pipeline
    from text_ldm.sampling.pipeline import generate
    from text_ldm.sampling.schedulers import make_sampler

    train_cfg.trainer.max_steps = 2
    with open_dict(train_cfg):  # not in the UNet configs: `+model.unet.patch_size=2` on the command line
        train_cfg.model.unet.patch_size = 2
    train(train_cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    model = load_diffusion(ckpt)
    assert isinstance(model.unet.conv_in, PatchConvIn) and isinstance(model.unet.conv_out, PatchConvOut)
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(model.unet.conv_out.weight, saved["unet.conv_out.weight"])
    images = generate(model.unet, make_sampler("ddim", model.noise_scheduler.config), model.text_encoder,
                      model.autoencoder, ["a smiling woman"], [0], model.latent_shape, steps=3)
    assert images.shape[0] == 1 and torch.isfinite(images).all()
    with pytest.raises(ValueError, match="patch_size"):
        build_pipeline(model, "ddim")
