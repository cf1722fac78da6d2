"""Sampling features on a micro model trained here: img2img, prompt mixing, trajectories,
precision, diffusers export, and the mismatched-checkpoint error."""
from __future__ import annotations

import json

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compose_config, tiny_train_overrides
from text_ldm.sampling import mixing
from text_ldm.sampling.app import run
from text_ldm.models.components import CHECKPOINT_KEY, DiffusionComponents
from text_ldm.sampling.img2img import encode_image
from text_ldm.sampling.pipeline import decode, generate
from text_ldm.sampling.schedulers import make_sampler
from text_ldm.training import train

PROMPT = "She has blond hair and wears eyeglasses."


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, toy_root, tiny_vq_dir):
    tmp = tmp_path_factory.mktemp("micro")
    cfg = compose_config("train", tiny_train_overrides(tmp, toy_root, tiny_vq_dir))
    train(cfg)
    return tmp / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def model(ckpt):
    return DiffusionComponents.from_checkpoint(ckpt)


@pytest.fixture(scope="module")
def face(toy_root):
    return sorted((toy_root / "CelebA-HQ-img").glob("*.png"))[0]


def _gen(model, prompts, seeds, sampler="ddim", steps=6, **kwargs):
    return generate(model.unet, make_sampler(sampler, model.noise_scheduler.config), model.text_encoder,
                    model.autoencoder, prompts, seeds, model.latent_shape, steps=steps, **kwargs)


def _cli(tmp_path, ckpt, *overrides):
    cfg = compose_config("sample", [f"ckpt={ckpt}", f"out_dir={tmp_path}", "num_images_per_prompt=1", "steps=6",
                                    *overrides])
    return run(cfg)


def _png(path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255


# img2img ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_img2img_strength_one_is_text_to_image_and_zero_is_reconstruction(model, face, sampler):
    init = encode_image(model.autoencoder, face, 32, batch=2)
    t2i = _gen(model, [PROMPT] * 2, [3, 4], sampler)
    full = _gen(model, [PROMPT] * 2, [3, 4], sampler, init_latents=init, strength=1.0)
    torch.testing.assert_close(full, t2i)
    recon = decode(model.autoencoder, init)
    zero = _gen(model, [PROMPT] * 2, [3, 4], sampler, init_latents=init, strength=0.0)
    torch.testing.assert_close(zero, recon)
    half = _gen(model, [PROMPT] * 2, [3, 4], sampler, init_latents=init, strength=0.5)
    # in between: closer to the input image than pure sampling is, but not the reconstruction itself
    assert (half - recon).abs().mean() < (t2i - recon).abs().mean()
    assert (half - recon).abs().max() > 1e-3


def test_img2img_runs_strength_times_steps(model, face):
    calls = []
    init = encode_image(model.autoencoder, face, 32)
    _gen(model, [PROMPT], [0], steps=10, init_latents=init, strength=0.6, on_step=lambda i, t, x0: calls.append(int(t)))
    assert len(calls) == 6 and calls == sorted(calls, reverse=True) and calls[0] < 700


def test_img2img_cli_strength_zero_writes_the_reconstruction(tmp_path, ckpt, model, face):
    _cli(tmp_path, ckpt, f"prompt={PROMPT}", f"init_image={face}", "strength=0")
    recon = decode(model.autoencoder, encode_image(model.autoencoder, face, 32))[0]
    assert (_png(tmp_path / "0000_00.png") - recon).abs().max() <= 1 / 255 + 1e-6


def test_cli_sampler_eta_reaches_the_sampler_and_the_metadata(tmp_path, ckpt):
    _cli(tmp_path / "eta0", ckpt, f"prompt={PROMPT}")
    _cli(tmp_path / "eta1", ckpt, f"prompt={PROMPT}", "eta=1.0")
    assert (_png(tmp_path / "eta1" / "0000_00.png") - _png(tmp_path / "eta0" / "0000_00.png")).abs().max() > 2 / 255
    assert _records(tmp_path / "eta1")[0]["eta"] == 1.0
    _cli(tmp_path / "euler", ckpt, f"prompt={PROMPT}", "sampler=euler_a")
    assert "eta" not in _records(tmp_path / "euler")[0]  # a sampler without eta records none


def test_img2img_records_the_steps_that_ran(tmp_path, ckpt, face):
    _cli(tmp_path, ckpt, f"prompt={PROMPT}", f"init_image={face}", "strength=0.5", "steps=10")
    record = _records(tmp_path)[0]
    assert (record["steps"], record["schedule_steps"], record["strength"]) == (5, 10, 0.5)


def test_defaults_come_from_the_checkpoint_and_are_printed(tmp_path, ckpt, capsys):
    cfg = compose_config("sample", [f"ckpt={ckpt}", f"out_dir={tmp_path}", "num_images_per_prompt=1", f"prompt={PROMPT}"])
    run(cfg)
    assert "sampling: sampler=ddim (checkpoint), steps=3 (checkpoint), guidance_scale=3.0 (checkpoint), " \
           "guidance_interval=every step (checkpoint)" in capsys.readouterr().out
    assert {k: _records(tmp_path)[0][k] for k in ("sampler", "steps", "guidance_scale")} == \
        {"sampler": "ddim", "steps": 3, "guidance_scale": 3.0}
    run(compose_config("sample", [f"ckpt={ckpt}", f"out_dir={tmp_path}", "num_images_per_prompt=1",
                                  f"prompt={PROMPT}", "sampler=dpmpp_2m", "guidance_scale=7"]))
    assert "sampling: sampler=dpmpp_2m, steps=20 (sampler default), guidance_scale=7.0" in capsys.readouterr().out


def _records(out_dir):
    return [json.loads(line) for line in (out_dir / "samples.jsonl").read_text().splitlines()]


# prompt mixing ------------------------------------------------------------------------------------

def test_mix_weights_parse():
    assert mixing.weighted_choices(["man", "woman:0.3"], "x") == [("man", pytest.approx(0.7)), ("woman", pytest.approx(0.3))]
    assert [w for _, w in mixing.weighted_choices(["a:2", "b:1"], "x")] == [pytest.approx(2 / 3), pytest.approx(1 / 3)]
    (weight, choices), = mixing.parse("a {man|woman} with {hat|cap:1}")  # hat gets what cap leaves: 0
    assert weight == 1 and choices == [("a man with cap", 0.5), ("a woman with cap", 0.5)]
    parts = mixing.parse("a {man|woman:0.25} smiles:0.8 | a child")
    assert [w for w, _ in parts] == [pytest.approx(0.8), pytest.approx(0.2)]
    assert parts[0][1] == [("a man smiles", 0.75), ("a woman smiles", 0.25)] and parts[1][1] == [("a child", 1.0)]
    with pytest.raises(ValueError, match="never closed"):
        mixing.parse("a {man|woman with glasses")


def test_zero_one_mix_equals_the_pure_prompt(model):
    te = model.text_encoder
    pure = te(["a man with glasses"])[0]
    for spec in ("a {man:1|woman:0} with glasses", "a {woman:0|man} with glasses",
                 "a man with glasses:1 | a woman with a hat:0"):
        torch.testing.assert_close(mixing.encode_prompt(te, spec), pure, atol=1e-5, rtol=1e-5)
    half = mixing.encode_prompt(te, "a {man|woman:0.5} with glasses")
    woman = te(["a woman with glasses"])[0]
    assert (half - pure).abs().max() > 1e-2 and (half - woman).abs().max() > 1e-2
    blend = mixing.encode_prompt(te, "a man with glasses | a woman with glasses")
    torch.testing.assert_close(blend, (pure + woman) / 2)
    assert (blend - half).abs().max() > 1e-3  # mixing before the transformer is not the same as after


def test_zero_one_mix_gives_the_pure_prompts_image(model):
    pure = _gen(model, ["a man with glasses"], [0])
    mixed = _gen(model, ["x"], [0], prompt_embeds=mixing.encode_prompts(model.text_encoder, ["a {man:1|woman:0} with glasses"]))
    torch.testing.assert_close(mixed, pure, atol=1e-5, rtol=1e-5)
    half = _gen(model, ["x"], [0], prompt_embeds=mixing.encode_prompts(model.text_encoder, ["a {man|woman} with glasses"]))
    assert (half - pure).abs().max() > 1e-3
    assert mixing.encode_prompts(model.text_encoder, ["a man", "a woman"]) is None  # plain prompts: memoised path


# trajectories -------------------------------------------------------------------------------------

def test_trajectory_frames_and_last_frame_is_the_sample(tmp_path, ckpt):
    _cli(tmp_path, ckpt, f"prompt={PROMPT}", "save_trajectory=true", "trajectory_every=2", "sampler=ddim")
    gif = Image.open(tmp_path / "0000_00_trajectory.gif")
    assert gif.n_frames == 4  # steps 0, 2, 4 and the last (5) of 6
    gif.seek(gif.n_frames - 1)
    last = torch.from_numpy(np.asarray(gif.convert("RGB").resize((32, 32), Image.NEAREST))).permute(2, 0, 1) / 255
    # DDIM's last step returns its x0 prediction (alpha = 1): the final frame is the sample (GIF palette aside)
    assert (last - _png(tmp_path / "0000_00.png")).abs().mean() < 0.03
    strip = Image.open(tmp_path / "0000_00_trajectory.png")
    assert strip.width >= 4 * 64


def test_forward_noise_strip(tmp_path, ckpt, model, face):
    path = _cli(tmp_path, ckpt, "mode=forward_noise", f"init_image={face}", "forward_noise_timesteps=[0,300,999]")
    assert path == tmp_path / "forward_noise.png" and path.is_file()
    gif = Image.open(tmp_path / "forward_noise.gif")
    assert gif.n_frames == 3
    recon = decode(model.autoencoder, encode_image(model.autoencoder, face, 32))[0]
    errors = []
    for k in range(3):
        gif.seek(k)
        frame = torch.from_numpy(np.asarray(gif.convert("RGB").resize((32, 32), Image.NEAREST))).permute(2, 0, 1) / 255
        errors.append(float((frame - recon).abs().mean()))
    assert errors[0] < 0.1 and errors[0] < errors[1] < errors[2]  # t=0: the reconstruction (GIF palette aside)


# precision ----------------------------------------------------------------------------------------

def test_bf16_is_close_to_fp32(model):
    fp32 = _gen(model, [PROMPT] * 2, [0, 1])
    low = copy.deepcopy(model)
    low.unet.to(torch.bfloat16)
    bf16 = _gen(low, [PROMPT] * 2, [0, 1])
    assert (bf16 - fp32).abs().mean() < 0.02 and (bf16 - fp32).abs().max() < 0.25


# export -------------------------------------------------------------------------------------------

def test_export_loads_with_diffusers_and_matches_sample_py(tmp_path, ckpt):
    from diffusers import DiffusionPipeline

    # the command line's sampling (here over the checkpoint's) becomes the exported call's defaults
    extras = ["guidance_scale=6.0", "guidance_interval=[0,600]"]
    out = _cli(tmp_path / "export", ckpt, "export_dir=" + str(tmp_path / "pipe"), "sampler=dpmpp_2m", *extras)
    assert out == tmp_path / "pipe"
    for part in ("unet", "vqvae", "text_encoder"):
        assert list((out / part).glob("*.safetensors")), part
        assert not list((out / part).glob("*.bin")), part
    assert (out / "tokenizer").is_dir() and (out / "scheduler").is_dir()
    index = json.loads((out / "model_index.json").read_text())
    assert (index["default_steps"], index["default_guidance_scale"], index["default_guidance_interval"]) == \
        (6, 6.0, [0.0, 600.0])
    pipe = DiffusionPipeline.from_pretrained(str(out), trust_remote_code=True)
    assert type(pipe).__name__ == "TextLDMPipeline"
    _cli(tmp_path / "samples", ckpt, "prompts_file=" + _prompts(tmp_path), "sampler=dpmpp_2m", "seed=5")
    images = pipe(["a man with glasses", PROMPT], seeds=[5, 6], num_inference_steps=6, guidance_scale=3.0,
                  guidance_interval=(0, 1000), output_type="pt").images  # the checkpoint's: every step
    for k, name in enumerate(["0000_00.png", "0001_00.png"]):
        assert (images[k] - _png(tmp_path / "samples" / name)).abs().max() <= 1 / 255 + 1e-6
    # the guidance extras mean the same in both; the export's defaults give sample.py's extras images
    _cli(tmp_path / "extras", ckpt, "prompts_file=" + _prompts(tmp_path), "sampler=dpmpp_2m", "seed=5", *extras,
         "guidance_rescale=0.5")
    guided = pipe(["a man with glasses", PROMPT], seeds=[5, 6], output_type="pt", guidance_rescale=0.5).images
    for k, name in enumerate(["0000_00.png", "0001_00.png"]):
        assert (guided[k] - _png(tmp_path / "extras" / name)).abs().max() <= 1 / 255 + 1e-6
    assert (guided - images).abs().max() > 2 / 255
    # a folder exported before the defaults were written falls back to 20 steps, guidance 3 at every step
    (out / "model_index.json").write_text(json.dumps({k: v for k, v in index.items() if not k.startswith("default_")}))
    old = DiffusionPipeline.from_pretrained(str(out), trust_remote_code=True).config
    assert (old.default_steps, old.default_guidance_scale, old.default_guidance_interval) == (20, 3.0, None)


@pytest.fixture(scope="module")
def clause_ckpt(ckpt, tmp_path_factory):
    """The micro checkpoint, conditioned on clause vectors (the UNet takes any number of context vectors)."""
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    checkpoint[CHECKPOINT_KEY]["text_encoder"]["granularity"] = "clauses"
    path = tmp_path_factory.mktemp("clauses") / "clauses.ckpt"
    torch.save(checkpoint, path)
    return path


def test_clause_conditioned_export_matches_sample_py(tmp_path, ckpt, clause_ckpt):
    from diffusers import DiffusionPipeline

    sampling = ["sampler=ddim", "seed=5", "guidance_scale=3.0", "guidance_interval=[0,1000]"]
    out = _cli(tmp_path / "export", clause_ckpt, "export_dir=" + str(tmp_path / "pipe"), *sampling)
    pipe = DiffusionPipeline.from_pretrained(str(out), trust_remote_code=True)
    assert (pipe.config.granularity, pipe.config.max_clauses) == ("clauses", 8)
    for name, path in (("clauses", clause_ckpt), ("tokens", ckpt)):
        _cli(tmp_path / name, path, "prompts_file=" + _prompts(tmp_path), *sampling)
    images = pipe(["a man with glasses", PROMPT], seeds=[5, 6], num_inference_steps=6, output_type="pt").images
    for k, name in enumerate(["0000_00.png", "0001_00.png"]):
        assert (images[k] - _png(tmp_path / "clauses" / name)).abs().max() <= 1 / 255 + 1e-6
    assert (_png(tmp_path / "clauses" / "0001_00.png") - _png(tmp_path / "tokens" / "0001_00.png")).abs().max() > 2 / 255


def test_token_mix_of_clause_vectors_is_their_weighted_sum(clause_ckpt):
    te = DiffusionComponents.from_checkpoint(clause_ckpt).text_encoder
    torch.testing.assert_close(mixing.encode_prompt(te, "a {man:1|woman:0}, with glasses"),
                               te(["a man, with glasses"])[0])
    half = mixing.encode_prompt(te, "a {man|woman}, with glasses")
    torch.testing.assert_close(half, te(["a man, with glasses", "a woman, with glasses"]).mean(0))
    with pytest.raises(ValueError, match="granularity=tokens"):
        te.token_embeddings(["a man"])


def _prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text(f"a man with glasses\n{PROMPT}\n")
    return str(path)


# reliability --------------------------------------------------------------------------------------

def test_checkpoint_from_an_incompatible_config_lists_the_keys(tmp_path, ckpt):
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    checkpoint["components"]["unet"]["block_out_channels"] = [16, 32]
    other = tmp_path / "other.ckpt"
    torch.save(checkpoint, other)
    with pytest.raises(ValueError, match=r"does not match .*mismatched keys.*unet\.conv_in\.weight: checkpoint "
                                         r"\(8, 3, 3, 3\) vs model \(16, 3, 3, 3\)"):
        DiffusionComponents.from_checkpoint(other)


def test_checkpoint_without_components_entry_is_rebuilt_from_its_model_config(tmp_path, ckpt, model):
    """Checkpoints written before the components entry existed still sample: the UNet is derived from the
    model config as in training, and gives the same weights and images."""
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    del checkpoint["components"]
    older = tmp_path / "older.ckpt"
    torch.save(checkpoint, older)
    rebuilt = DiffusionComponents.from_checkpoint(older)
    assert rebuilt.unet.config.block_out_channels == model.unet.config.block_out_channels
    assert rebuilt.latent_shape == model.latent_shape
    assert torch.equal(_gen(rebuilt, [PROMPT], [0]), _gen(model, [PROMPT], [0]))
    del checkpoint["hyper_parameters"]["unet"]
    torch.save(checkpoint, older)
    with pytest.raises(ValueError, match="no 'unet'"):
        DiffusionComponents.from_checkpoint(older)


def test_moved_autoencoder_is_named_and_vae_pretrained_finds_it(tmp_path, ckpt, tiny_vq_dir):
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    gone = tmp_path / "deleted_checkout" / "artifacts" / "toy_vq"
    checkpoint["components"]["autoencoder"]["pretrained"] = str(gone)
    moved = tmp_path / "moved.ckpt"
    torch.save(checkpoint, moved)
    with pytest.raises(FileNotFoundError, match=f"autoencoder at {gone}, which no longer exists.*vae_pretrained=DIR"):
        _cli(tmp_path / "fails", moved, f"prompt={PROMPT}")
    _cli(tmp_path / "original", ckpt, f"prompt={PROMPT}")
    _cli(tmp_path / "found", moved, f"prompt={PROMPT}", f"vae_pretrained={tiny_vq_dir}")
    images = sorted(p.name for p in (tmp_path / "original").glob("*.png"))
    assert images and images == sorted(p.name for p in (tmp_path / "found").glob("*.png"))
    for name in images:
        assert torch.equal(_png(tmp_path / "original" / name), _png(tmp_path / "found" / name))
