"""The sampling loop: batched classifier-free guidance, seeds, samplers."""
from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from conftest import tiny_vq
from text_ldm.models.autoencoder import FrozenAutoencoder
from text_ldm.sampling.diffusers_pipeline import seeded_noise
from text_ldm.sampling.pipeline import generate
from text_ldm.sampling.schedulers import make_sampler

TRAIN_SCHEDULER = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).config


class HashEncoder(torch.nn.Module):
    """A deterministic stand-in text encoder: the embedding depends on the prompt's characters."""

    embed_dim = 16

    def forward(self, prompts):
        out = torch.zeros(len(prompts), 4, self.embed_dim)
        for i, p in enumerate(prompts):
            for j, ch in enumerate(p[:64]):
                out[i, j % 4, ord(ch) % self.embed_dim] += 1.0
        return out


class CountingUNet(torch.nn.Module):
    """Wraps a real UNet and records the batch size of every call."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.unet = UNet2DConditionModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                         down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                         up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
                                         cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4)
        self.calls: list[int] = []

    def forward(self, x, t, encoder_hidden_states):
        self.calls.append(x.shape[0])
        return self.unet(x, t, encoder_hidden_states=encoder_hidden_states)


def _run(prompts, seeds, sampler="ddim", steps=4, guidance_scale=3.0, negative_prompt="", unet=None, **guidance):
    unet = unet or CountingUNet()
    autoencoder = FrozenAutoencoder(tiny_vq(), "vq", 1.0)
    return generate(unet, make_sampler(sampler, TRAIN_SCHEDULER), HashEncoder(), autoencoder, prompts, seeds,
                    (3, 8, 8), steps=steps, guidance_scale=guidance_scale, negative_prompt=negative_prompt,
                    **guidance), unet


def test_cfg_is_one_batched_unet_call_per_step():
    images, unet = _run(["a", "b", "c"], [0, 1, 2], steps=5)
    assert images.shape == (3, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    assert unet.calls == [6] * 5


def test_guidance_scale_one_skips_the_unconditional_half():
    _, unet = _run(["a", "b"], [0, 1], guidance_scale=1.0, steps=3)
    assert unet.calls == [2] * 3


def test_prompts_equal_to_the_negative_prompt_skip_the_unconditional_half_with_the_same_result():
    skipped, unet = _run(["", ""], [0, 1], steps=3, guidance_scale=9.0)
    assert unet.calls == [2] * 3
    # conditioning a hair's breadth away is guided, both halves, to the same images
    nudged = HashEncoder()(["", ""]) + 1e-7
    both, unet = _run(["", ""], [0, 1], steps=3, guidance_scale=9.0, prompt_embeds=nudged)
    assert unet.calls == [4] * 3
    torch.testing.assert_close(skipped, both, atol=1e-5, rtol=1e-5)
    _, unet = _run(["a hat", "a face"], [0, 1], steps=3, guidance_scale=9.0, negative_prompt="a hat")
    assert unet.calls == [4] * 3  # one of them differs: both guided


def test_ddim_is_deterministic_per_seed_and_independent_of_batch():
    alone, _ = _run(["red hat"], [5])
    batched, _ = _run(["blue", "red hat"], [4, 5])
    again, _ = _run(["red hat"], [5])
    torch.testing.assert_close(alone, again)
    torch.testing.assert_close(alone[0], batched[1], atol=1e-4, rtol=1e-4)
    other, _ = _run(["red hat"], [6])
    assert (other - alone).abs().max() > 1e-3


def test_ddim_eta_draws_seeded_noise_and_other_samplers_refuse_it():
    deterministic, _ = _run(["red hat"], [5], eta=0.0)
    default, _ = _run(["red hat"], [5])
    torch.testing.assert_close(deterministic, default)
    noisy, _ = _run(["red hat"], [5], eta=1.0)
    again, _ = _run(["red hat"], [5], eta=1.0)
    torch.testing.assert_close(noisy, again)  # the step noise comes from the seed
    assert (noisy - deterministic).abs().max() > 1e-3
    with pytest.raises(ValueError, match="eta=0.5.*EulerAncestral"):
        _run(["red hat"], [5], sampler="euler_a", eta=0.5)
    with pytest.raises(ValueError, match="eta=1.5"):
        _run(["red hat"], [5], eta=1.5)


def test_negative_prompt_changes_the_result():
    plain, _ = _run(["a face"], [0])
    negative, _ = _run(["a face"], [0], negative_prompt="a hat")
    assert (plain - negative).abs().max() > 1e-4


def test_ddpm_sampler_runs_its_steps():
    _, unet = _run(["a"], [0], sampler="ddpm", steps=7)
    assert len(unet.calls) == 7


def test_initial_noise_depends_only_on_seed():
    a = seeded_noise([1, 2], (3, 4, 4), "cpu")
    b = seeded_noise([2], (3, 4, 4), "cpu")
    torch.testing.assert_close(a[1], b[0])


def test_unknown_sampler_lists_choices():
    with pytest.raises(ValueError, match="ddim"):
        make_sampler("euler_x", TRAIN_SCHEDULER)


@pytest.mark.parametrize("name", ["ddpm", "ddim", "pndm", "lms", "euler_a", "dpmpp_2m", "unipc"])
def test_every_sampler_runs_and_has_sensible_default_steps(name):
    from text_ldm.sampling.schedulers import default_steps

    steps = default_steps(name)
    if name == "ddpm":
        assert steps == 1000
    else:
        assert 20 <= steps <= 50
    sampler = make_sampler(name, TRAIN_SCHEDULER)
    assert sampler.config.beta_schedule == "scaled_linear" and sampler.config.beta_end == 0.012
    images, unet = _run(["a face"], [3], sampler=name, steps=6)
    assert torch.isfinite(images).all() and len(unet.calls) >= 6


def test_guidance_interval_guides_only_its_steps_and_skips_the_unconditional_pass_elsewhere():
    timesteps = make_sampler("ddim", TRAIN_SCHEDULER)
    timesteps.set_timesteps(5)
    inside = [300 <= int(t) <= 700 for t in timesteps.timesteps]
    assert 0 < sum(inside) < len(inside)
    _, unet = _run(["a", "b"], [0, 1], steps=5, guidance_interval=[300, 700])
    assert unet.calls == [4 if guided else 2 for guided in inside]


def test_guidance_interval_spanning_every_step_or_none_equals_full_or_no_guidance():
    full, _ = _run(["a face"], [0], steps=5, guidance_scale=4.0)
    spanning, _ = _run(["a face"], [0], steps=5, guidance_scale=4.0, guidance_interval=[0, 999])
    torch.testing.assert_close(spanning, full)
    unguided, _ = _run(["a face"], [0], steps=5, guidance_scale=1.0)
    empty_interval, _ = _run(["a face"], [0], steps=5, guidance_scale=4.0, guidance_interval=[1000, 2000])
    torch.testing.assert_close(empty_interval, unguided)
    partial, _ = _run(["a face"], [0], steps=5, guidance_scale=4.0, guidance_interval=[0, 500])
    assert (partial - full).abs().max() > 1e-4 and (partial - unguided).abs().max() > 1e-4


def test_guidance_rescale_matches_the_conditional_std_and_changes_the_sample():
    from text_ldm.sampling.guidance import Guidance

    torch.manual_seed(0)
    uncond, cond = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8) * 0.5
    plain = Guidance(7.5).combine(uncond, cond)
    full = Guidance(7.5, rescale=1.0).combine(uncond, cond)
    half = Guidance(7.5, rescale=0.5).combine(uncond, cond)
    torch.testing.assert_close(full.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)))
    assert (plain.std(dim=(1, 2, 3)) > 2 * cond.std(dim=(1, 2, 3))).all()
    torch.testing.assert_close(half, (plain + full) / 2)
    base, _ = _run(["a face"], [0], guidance_scale=6.0)
    rescaled, _ = _run(["a face"], [0], guidance_scale=6.0, guidance_rescale=0.7)
    assert (rescaled - base).abs().max() > 1e-4


@pytest.mark.parametrize("kwargs,key", [({"rescale": 1.2}, "guidance_rescale"), ({"interval": (600, 100)}, "guidance_interval"),
                                        ({"scale": -2.0}, "guidance_scale")])
def test_bad_guidance_is_refused_naming_the_key(kwargs, key):
    from text_ldm.sampling.guidance import Guidance

    with pytest.raises(ValueError, match=key):
        Guidance(**kwargs)
