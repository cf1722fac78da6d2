"""Flow matching (`model.objective=flow_matching`): the training target, the flow samplers, img2img,
the checkpoint's scheduler and sampling entry, the sampler refusal and the diffusers export."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from hydra.utils import instantiate
from PIL import Image

from conftest import compose_config, tiny_train_overrides
from text_ldm.models.components import DiffusionComponents
from text_ldm.sampling.diffusers_pipeline import denoise, initial_latents
from text_ldm.sampling.img2img import encode_image
from text_ldm.sampling.pipeline import decode, generate, predict_x0
from text_ldm.sampling.schedulers import FLOW_SAMPLERS, make_sampler
from text_ldm.training import train

FLOW = "model.objective=flow_matching"
PROMPT = "She has blond hair and wears eyeglasses."


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, toy_root, tiny_vq_dir):
    tmp = tmp_path_factory.mktemp("flow")
    overrides = tiny_train_overrides(tmp, toy_root, tiny_vq_dir) + [FLOW, "model.timestep_sampling.kind=logit_normal",
                                                                     "model.sampling.guidance_scale=5.0",
                                                                     "model.sampling.guidance_interval=[0,600]"]
    train(compose_config("train", overrides))
    return tmp / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def model(ckpt):
    return DiffusionComponents.from_checkpoint(ckpt)


def _module(tmp_path, toy_root, tiny_vq_dir, *overrides):
    cfg = compose_config("train", tiny_train_overrides(tmp_path, toy_root, tiny_vq_dir) + list(overrides))
    torch.manual_seed(0)
    return instantiate(cfg.model)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_loss_regresses_the_velocity_along_the_straight_path(tmp_path, toy_root, tiny_vq_dir, shift):
    module = _module(tmp_path, toy_root, tiny_vq_dir, FLOW, f"model.flow_scheduler.shift={shift}")
    latents, captions = torch.randn(4, *module.latent_shape), ["a smiling woman"] * 4
    loss = module._diffusion_loss(latents, captions, torch.Generator().manual_seed(7))
    # The same draws by hand: noise, then uniform indices; sigma from diffusers' (shifted) table.
    generator = torch.Generator().manual_seed(7)
    noise = torch.randn(latents.shape, generator=generator)
    index = torch.randint(0, 1000, (4,), generator=generator)
    sigma = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift).sigmas.flip(0)[index]
    noisy = (1 - sigma.view(-1, 1, 1, 1)) * latents + sigma.view(-1, 1, 1, 1) * noise
    pred = module(noisy, sigma * 1000, module.text_encoder(captions))
    torch.testing.assert_close(loss, torch.mean((pred - (noise - latents)) ** 2))
    x_t, t = module.components.forward_process(latents, noise, torch.tensor([0, 999, 999, 999]))
    torch.testing.assert_close(x_t[1:], noise[1:])  # the noisiest index is pure noise
    assert t[1] == 1000 and 0 < t[0] <= (1 if shift == 1 else 3.01)


def test_snr_gamma_and_a_ddpm_sampler_are_refused_for_flow_matching(tmp_path, toy_root, tiny_vq_dir):
    with pytest.raises(Exception, match="snr_gamma.*flow matching"):
        _module(tmp_path, toy_root, tiny_vq_dir, FLOW, "model.snr_gamma=5.0")
    with pytest.raises(Exception, match="sampler='ddim' is not for this flow-matching model; choose one of "
                                        r"\['flow_dpmpp_2m', 'flow_euler', 'flow_heun'\]"):
        _module(tmp_path, toy_root, tiny_vq_dir, FLOW, "model.sampling.sampler=ddim")
    with pytest.raises(Exception, match=r"model.sampling: guidance_interval=\[600, 0\] must be \[t_lo, t_hi\]"):
        _module(tmp_path, toy_root, tiny_vq_dir, FLOW, "model.sampling.guidance_interval=[600,0]")
    epsilon = _module(tmp_path, toy_root, tiny_vq_dir)
    with pytest.raises(ValueError, match="sampler='flow_euler' is not for this epsilon / v-prediction model"):
        make_sampler("flow_euler", epsilon.noise_scheduler.config)


def test_checkpoint_carries_the_flow_scheduler_and_the_recommended_sampling(ckpt, model):
    entry = torch.load(ckpt, map_location="cpu", weights_only=True)["components"]
    assert entry["noise_scheduler"]["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    assert entry["noise_scheduler"]["shift"] == 1.0
    assert entry["sampling"] == {"sampler": "flow_euler", "steps": 3, "guidance_scale": 5.0,
                                 "guidance_interval": [0.0, 600.0]}
    assert isinstance(model.noise_scheduler, FlowMatchEulerDiscreteScheduler)
    assert model.objective == "flow_matching" and model.sampling == entry["sampling"]


class _Oracle(torch.nn.Module):
    """The exact velocity field towards one clean latent x0: v(x_t, t) = (x_t - x0) / sigma, sigma = t / T."""

    def __init__(self, x0: torch.Tensor):
        super().__init__()
        self.x0, self.anchor = x0, torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t, encoder_hidden_states=None):
        sigma = torch.as_tensor(t, dtype=x.dtype) / 1000
        return type("Out", (), {"sample": (x - self.x0) / sigma})


@pytest.mark.parametrize("name", sorted(FLOW_SAMPLERS))
def test_each_flow_sampler_follows_an_exact_velocity_field_to_its_end(model, name):
    x0 = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    sampler = make_sampler(name, model.noise_scheduler.config)
    latents, timesteps = initial_latents(sampler, noise, 8)
    predicted = []
    out = denoise(_Oracle(x0), sampler, latents, timesteps, torch.zeros(2, 1, 4),
                  on_step=lambda i, t, x, v: predicted.append(predict_x0(x, v, t, sampler)))
    torch.testing.assert_close(out, x0, atol=1e-2, rtol=0)  # DPM-Solver rounds t = sigma T to integers
    torch.testing.assert_close(predicted[0], x0, atol=1e-2, rtol=0)  # the trajectory's x0 estimate


@pytest.mark.parametrize("name", ["flow_euler", "flow_dpmpp_2m"])
def test_img2img_strength_zero_reconstructs_and_one_is_text_to_image(model, toy_root, name):
    face = sorted((toy_root / "CelebA-HQ-img").glob("*.png"))[0]
    init = encode_image(model.autoencoder, face, 32)

    def run(**kwargs):
        return generate(model.unet, make_sampler(name, model.noise_scheduler.config), model.text_encoder,
                        model.autoencoder, [PROMPT], [3], model.latent_shape, steps=6, negative_prompt="a hat",
                        guidance_rescale=0.5, **kwargs)

    recon = decode(model.autoencoder, init)
    torch.testing.assert_close(run(init_latents=init, strength=0.0), recon)
    torch.testing.assert_close(run(init_latents=init, strength=1.0), run())
    half = run(init_latents=init, strength=0.5)
    assert (half - recon).abs().mean() < (run() - recon).abs().mean() and (half - recon).abs().max() > 1e-3


def test_export_carries_the_flow_scheduler_and_the_checkpoints_sampling(tmp_path, ckpt, model):
    from diffusers import DiffusionPipeline

    from text_ldm.sampling.app import run

    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{PROMPT}\na man\n")
    base = [f"ckpt={ckpt}", "num_images_per_prompt=1", f"prompts_file={prompts}", "seed=5"]
    out = run(compose_config("sample", base + [f"out_dir={tmp_path}", f"export_dir={tmp_path / 'pipe'}"]))
    index = json.loads((out / "model_index.json").read_text())
    assert (index["default_steps"], index["default_guidance_scale"], index["default_guidance_interval"]) == \
        (3, 5.0, [0.0, 600.0])  # the checkpoint's, as sample.py prints them
    run(compose_config("sample", base + [f"out_dir={tmp_path / 'samples'}"]))  # sample.py at its defaults
    pipe = DiffusionPipeline.from_pretrained(str(out), trust_remote_code=True)
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    defaults = pipe([PROMPT, "a man"], seeds=[5, 6], output_type="pt").images
    for k, name in enumerate(["0000_00.png", "0001_00.png"]):
        png = np.array(Image.open(tmp_path / "samples" / name).convert("RGB"))
        assert (defaults[k] - torch.from_numpy(png).permute(2, 0, 1) / 255).abs().max() <= 1 / 255 + 1e-6
    # given arguments win; (0, 1000) guides every step, as generate's interval None does
    kwargs = {"guidance_scale": 5.0, "guidance_rescale": 0.5}
    exported = pipe([PROMPT, "a man"], seeds=[5, 6], num_inference_steps=6, guidance_interval=(0, 1000),
                    output_type="pt", **kwargs).images
    ours = generate(model.unet, make_sampler("flow_euler", model.noise_scheduler.config), model.text_encoder,
                    model.autoencoder, [PROMPT, "a man"], [5, 6], model.latent_shape, steps=6, **kwargs)
    torch.testing.assert_close(exported, ours, atol=1e-5, rtol=0)
    every_step = pipe([PROMPT, "a man"], seeds=[5, 6], guidance_interval=(0, 1000), output_type="pt").images
    assert (every_step - defaults).abs().max() > 2 / 255


def test_sample_py_at_its_defaults_uses_the_flow_checkpoints_sampling_and_refuses_ddim(tmp_path, ckpt, capsys):
    from text_ldm.sampling.app import run

    base = [f"ckpt={ckpt}", f"out_dir={tmp_path}", "num_images_per_prompt=1", f"prompt={PROMPT}"]
    run(compose_config("sample", base))
    assert "sampling: sampler=flow_euler (checkpoint), steps=3 (checkpoint), guidance_scale=5.0 (checkpoint), " \
           "guidance_interval=[0, 600] (checkpoint)" in capsys.readouterr().out
    defaults = (tmp_path / "0000_00.png").read_bytes()
    for name, interval in (("same", "[0,600]"), ("every_step", "[0,1000]")):
        run(compose_config("sample", base + [f"out_dir={tmp_path / name}", f"guidance_interval={interval}"]))
    out = capsys.readouterr().out  # the user's intervals, without "(checkpoint)"
    assert "guidance_interval=[0, 600]\n" in out and "guidance_interval=[0, 1000]\n" in out
    assert (tmp_path / "same" / "0000_00.png").read_bytes() == defaults
    assert (tmp_path / "every_step" / "0000_00.png").read_bytes() != defaults
    run(compose_config("sample", base + ["sampler=flow_heun", "trajectory_every=1", "save_trajectory=true"]))
    assert (tmp_path / "0000_00_trajectory.png").is_file()
    with pytest.raises(ValueError, match="sampler='ddim' is not for this flow-matching model"):
        run(compose_config("sample", base + ["sampler=ddim"]))
