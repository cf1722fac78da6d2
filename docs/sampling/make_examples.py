"""Regenerate the example images of docs/sampling.md from the demo checkpoint (about 3 min on 2 CPU cores):

    python docs/sampling/make_examples.py [--ckpt outputs/demo/checkpoints/last.ckpt] [--only guidance ...]

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
from text_ldm.models.components import DiffusionComponents  # noqa: E402
from text_ldm.sampling.img2img import encode_image, load_image  # noqa: E402
from text_ldm.sampling.pipeline import generate  # noqa: E402
from text_ldm.sampling.schedulers import make_sampler  # noqa: E402
from text_ldm.sampling.trajectory import X0Recorder, forward_noise, write_strip_and_gif  # noqa: E402
from text_ldm.utils.atomic import atomic_save_png  # noqa: E402
from text_ldm.utils.grid import captioned_grid  # noqa: E402

SEEDS = [0, 1, 2, 3]
STEPS = 20
PROMPT = "This woman has black hair. She wears no eyeglasses, is smiling, wears lipstick and wears no hat."


# A flow-matching checkpoint (the demo's) takes the flow samplers of the same order instead.
FLOW_EQUIVALENT = {"dpmpp_2m": "flow_dpmpp_2m", "ddim": "flow_euler"}


def sampler_for(model, name: str) -> str:
    return FLOW_EQUIVALENT.get(name, name) if model.objective == "flow_matching" else name


def gen(model, prompts, seeds, sampler="dpmpp_2m", steps=STEPS, **kw):
    sampler = sampler_for(model, sampler)
    return generate(model.unet, make_sampler(sampler, model.noise_scheduler.config), model.text_encoder,
                    model.autoencoder, prompts, seeds, model.latent_shape, steps=steps, **kw)


def mixing_figure(model, args) -> None:
    """Token-level weights of "woman" against "man", and one whole-embedding blend."""
    te = model.text_encoder
    rows, captions = [], []
    for w in (0.0, 0.25, 0.5, 0.75, 1.0):
        spec = "This {man|woman:%g} has blond hair." % w
        rows.append(gen(model, [spec] * 4, SEEDS, prompt_embeds=mixing.encode_prompts(te, [spec] * 4)))
        captions.append(spec)
    blend = "This man has blond hair. | This woman has blond hair."
    rows.append(gen(model, [blend] * 4, SEEDS, prompt_embeds=mixing.encode_prompts(te, [blend] * 4)))
    captions.append(blend + "  (whole-embedding blend, 0.5 / 0.5)")
    atomic_save_png(captioned_grid(rows, captions), OUT / "mixing_grid.png")


def img2img_figure(model, args) -> None:
    """Input, reconstruction (strength 0) and increasing strength, same seed."""
    prompt, size = PROMPT, model.image_size
    init = encode_image(model.autoencoder, args.init_image, size)
    row = [(load_image(args.init_image, size)[0] + 1) / 2]
    for strength in (0.0, 0.3, 0.6, 0.8, 1.0):
        row.append(gen(model, [prompt], [0], init_latents=init, strength=strength)[0])
    atomic_save_png(captioned_grid([torch.stack(row)], [f"input | strength 0, 0.3, 0.6, 0.8, 1.0: {prompt}"]),
                    OUT / "img2img.png")


def trajectory_figure(model, args) -> None:
    """Predicted x0 every 2 steps."""
    recorder = X0Recorder(2)
    gen(model, [PROMPT], [0], on_step=recorder)
    write_strip_and_gif(recorder.decoded(model.autoencoder), OUT, ["trajectory"], [f"predicted x0: {PROMPT}"])


def forward_noise_figure(model, args) -> None:
    """q(x_t | x_0) of the input image."""
    init = encode_image(model.autoencoder, args.init_image, model.image_size)
    frames = forward_noise(model, init, [0, 50, 100, 200, 400, 600, 800, 999], 0)
    write_strip_and_gif(frames, OUT, ["forward_noise"], ["q(x_t | x_0) of a toy face"])


def precision_figure(model, args) -> None:
    """fp32 against a bf16 UNet, same seeds."""
    fp32 = gen(model, [PROMPT] * 4, SEEDS)
    low = copy.deepcopy(model)
    low.unet.to(torch.bfloat16)
    bf16 = gen(low, [PROMPT] * 4, SEEDS)
    diff = (bf16 - fp32).abs()
    atomic_save_png(captioned_grid([fp32, bf16], ["fp32", f"bf16 UNet: mean |diff| {diff.mean():.4f}, max {diff.max():.3f}"]),
                    OUT / "precision.png")


def export_figure(model, args) -> None:
    """The diffusers pipeline loaded with DiffusionPipeline.from_pretrained against sample.py's loop."""
    from diffusers import DiffusionPipeline

    from text_ldm.sampling.export import export_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        export_pipeline(model, sampler_for(model, "dpmpp_2m"), Path(tmp) / "pipe")
        pipe = DiffusionPipeline.from_pretrained(str(Path(tmp) / "pipe"), trust_remote_code=True)
        # generate()'s own guidance (3.0 at every step), not the checkpoint's recommended one the export carries
        exported = pipe([PROMPT] * 4, seeds=SEEDS, num_inference_steps=STEPS, guidance_scale=3.0,
                        guidance_interval=(0, 1000), output_type="pt").images
    fp32 = gen(model, [PROMPT] * 4, SEEDS)
    diff = (exported - fp32).abs().max()
    atomic_save_png(captioned_grid([fp32, exported], [f"sample.py ({sampler_for(model, 'dpmpp_2m')}, 20 steps)",
                                                      f"exported diffusers pipeline: max |diff| {diff:.2e}"]),
                    OUT / "export.png")


def guidance_figure(model, args) -> None:
    """Classifier-free guidance settings side by side (DDIM 50, as evaluate.py measured them)."""
    settings = [("no guidance (scale 1)", {"guidance_scale": 1.0}),
                ("scale 9 at every step", {"guidance_scale": 9.0}),
                ("scale 9, rescale 0.7", {"guidance_scale": 9.0, "guidance_rescale": 0.7}),
                ("scale 12, rescale 0.7", {"guidance_scale": 12.0, "guidance_rescale": 0.7}),
                ("scale 9, interval t in [0, 800]", {"guidance_scale": 9.0, "guidance_interval": (0, 800)}),
                ("scale 9, interval t in [200, 999]", {"guidance_scale": 9.0, "guidance_interval": (200, 999)})]
    rows = [gen(model, [PROMPT] * 4, SEEDS, sampler="ddim", steps=50, **kw) for _, kw in settings]
    atomic_save_png(captioned_grid(rows, [f"{name}: {PROMPT}" if i == 0 else name
                                          for i, (name, _) in enumerate(settings)]), OUT / "guidance.png")


FIGURES = {"mixing": mixing_figure, "img2img": img2img_figure, "trajectory": trajectory_figure,
           "forward_noise": forward_noise_figure, "precision": precision_figure, "export": export_figure,
           "guidance": guidance_figure}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt", default=str(ROOT / "outputs/demo/checkpoints/last.ckpt"))
    parser.add_argument("--init-image", default=str(ROOT / "data/toy_faces/CelebA-HQ-img/4086.png"))
    parser.add_argument("--only", nargs="+", choices=sorted(FIGURES), default=sorted(FIGURES))
    args = parser.parse_args()
    model = DiffusionComponents.from_checkpoint(args.ckpt)
    for name in args.only:
        FIGURES[name](model, args)


if __name__ == "__main__":
    main()
