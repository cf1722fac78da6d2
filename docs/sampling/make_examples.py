"""Regenerate the example images of docs/sampling.md from the demo checkpoint (about 3 min on 2 CPU cores):

    python docs/sampling/make_examples.py [--ckpt outputs/demo/checkpoints/last.ckpt]

Every image uses the library calls that sample.py makes; the command-line equivalents are in docs/sampling.md.
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
OUT = Path(__file__).resolve().parent

from text_ldm.sampling import mixing  # noqa: E402
from text_ldm.sampling.checkpoint import load_diffusion  # noqa: E402
from text_ldm.sampling.img2img import encode_image, load_image  # noqa: E402
from text_ldm.sampling.pipeline import decode, generate  # noqa: E402
from text_ldm.sampling.schedulers import make_sampler  # noqa: E402
from text_ldm.sampling.trajectory import X0Recorder, forward_noise, write_strip_and_gif  # noqa: E402
from text_ldm.utils.atomic import atomic_save_png  # noqa: E402
from text_ldm.utils.grid import captioned_grid  # noqa: E402

SEEDS = [0, 1, 2, 3]
STEPS = 20


def gen(model, prompts, seeds, **kw):
    return generate(model.unet, make_sampler("dpmpp_2m", model.noise_scheduler.config), model.text_encoder,
                    model.autoencoder, prompts, seeds, model.latent_shape, steps=STEPS, **kw)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt", default=str(ROOT / "outputs/demo/checkpoints/last.ckpt"))
    parser.add_argument("--init-image", default=str(ROOT / "data/toy_faces/CelebA-HQ-img/4086.png"))
    args = parser.parse_args()
    model = load_diffusion(args.ckpt, "cpu")
    size = int(model.hparams.image_size)
    te = model.text_encoder

    # prompt mixing: token-level weights of "woman" against "man", and one whole-embedding blend
    rows, captions = [], []
    for w in (0.0, 0.25, 0.5, 0.75, 1.0):
        spec = "This {man|woman:%g} has blond hair." % w
        rows.append(gen(model, [spec] * 4, SEEDS, prompt_embeds=mixing.encode_prompts(te, [spec] * 4)))
        captions.append(spec)
    blend = "This man has blond hair. | This woman has blond hair."
    rows.append(gen(model, [blend] * 4, SEEDS, prompt_embeds=mixing.encode_prompts(te, [blend] * 4)))
    captions.append(blend + "  (whole-embedding blend, 0.5 / 0.5)")
    atomic_save_png(captioned_grid(rows, captions), OUT / "mixing_grid.png")

    # img2img: input, reconstruction (strength 0) and increasing strength, same seed
    prompt = "This woman has black hair. She wears no eyeglasses, is smiling, wears lipstick and wears no hat."
    init = encode_image(model.autoencoder, args.init_image, size)
    row = [(load_image(args.init_image, size)[0] + 1) / 2]
    for strength in (0.0, 0.3, 0.6, 0.8, 1.0):
        row.append(gen(model, [prompt], [0], init_latents=init, strength=strength)[0])
    atomic_save_png(captioned_grid([torch.stack(row)], [f"input | strength 0, 0.3, 0.6, 0.8, 1.0: {prompt}"]),
                    OUT / "img2img.png")

    # trajectory: predicted x0 every 2 steps
    recorder = X0Recorder(2)
    gen(model, [prompt], [0], on_step=recorder)
    write_strip_and_gif(recorder.decoded(model.autoencoder), OUT, ["trajectory"], [f"predicted x0: {prompt}"])

    # forward noising of the input image
    frames = forward_noise(model.autoencoder, model.noise_scheduler, init, [0, 50, 100, 200, 400, 600, 800, 999], 0)
    write_strip_and_gif(frames, OUT, ["forward_noise"], ["q(x_t | x_0) of a toy face"])

    # precision: fp32 against bf16 UNet, same seeds
    fp32 = gen(model, [prompt] * 4, SEEDS)
    low = copy.deepcopy(model)
    low.unet.to(torch.bfloat16)
    bf16 = gen(low, [prompt] * 4, SEEDS)
    diff = (bf16 - fp32).abs()
    atomic_save_png(captioned_grid([fp32, bf16], ["fp32", f"bf16 UNet: mean |diff| {diff.mean():.4f}, max {diff.max():.3f}"]),
                    OUT / "precision.png")

    # export: the diffusers pipeline loaded with DiffusionPipeline.from_pretrained against sample.py's loop
    from diffusers import DiffusionPipeline

    from text_ldm.sampling.export import export_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        export_pipeline(model, "dpmpp_2m", Path(tmp) / "pipe")
        pipe = DiffusionPipeline.from_pretrained(str(Path(tmp) / "pipe"), trust_remote_code=True)
        exported = pipe([prompt] * 4, seeds=SEEDS, num_inference_steps=STEPS, output_type="pt").images
    diff = (exported - fp32).abs().max()
    atomic_save_png(captioned_grid([fp32, exported], ["sample.py (dpmpp_2m, 20 steps)",
                                                      f"exported diffusers pipeline: max |diff| {diff:.2e}"]),
                    OUT / "export.png")


if __name__ == "__main__":
    main()
