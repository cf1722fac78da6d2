"""At which noise level does the model read a clause? One guided prediction per timestep, no sampling loop.

    python bench/clause_effect_by_timestep.py <ckpt> [--pairs 24] [--guidance 9] [--timesteps 950 800 600 400 200]

For the counterfactual prompt pairs of bench/clause_effect.py ("wears lipstick" / "wears no lipstick", same row),
the held-out row's real image is noised to timestep t (the same noise for both prompts), the UNet predicts once
with classifier-free guidance, and the predicted clean latent is decoded and judged by the evaluator's classifier.
Per timestep: the share of samples showing the attribute when the prompt says yes / no. Equal shares mean the
prediction ignores the clause at that noise level. About 20 s on 2 CPU cores, against minutes for
clause_effect.py, so it can follow a training run; also printed: how far the clause moves the UNet's pooled text
vector (addition_embed_type "text"), relative to that vector's spread over the prompts.
"""
import argparse
from pathlib import Path

import torch

from text_ldm.data.celeba_layout import CelebALayout, read_attributes
from text_ldm.data.image_dataset import ImageDataset
from text_ldm.evaluation.app import to_uint8
from text_ldm.evaluation.attribute_classifier import ClassifierConfig, get_classifier, predict
from text_ldm.evaluation.prompts import twin_prompts
from text_ldm.sampling.checkpoint import load_diffusion

CLAUSES = ["Wearing_Lipstick", "No_Beard", "Smiling", "Eyeglasses", "Wearing_Hat"]

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("ckpt")
parser.add_argument("--pairs", type=int, default=24)
parser.add_argument("--guidance", type=float, default=9.0)
parser.add_argument("--timesteps", type=int, nargs="+", default=[950, 800, 600, 400, 200])
parser.add_argument("--data-root", default="data/toy_faces")
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--attributes", nargs="+", default=CLAUSES, choices=CLAUSES)
parser.add_argument("--vae-pretrained", default=None, help="the autoencoder's directory, if it moved since training")
args = parser.parse_args()
torch.set_num_threads(args.threads)

layout = CelebALayout(Path(args.data_root))
names, rows = read_attributes(layout.attribute_path)
model = load_diffusion(args.ckpt, "cpu", use_ema=True, vae_pretrained=args.vae_pretrained)
size = int(model.hparams.image_size)
classifier, _ = get_classifier(layout.root, names, rows, layout.split_ids("train"), size, ClassifierConfig(),
                               progress=False)
alphas_cumprod = model.noise_scheduler.alphas_cumprod
if model.noise_scheduler.config.prediction_type != "epsilon":
    raise SystemExit("this probe reads epsilon predictions; the checkpoint predicts "
                     f"{model.noise_scheduler.config.prediction_type}")


@torch.no_grad()
def shown_at(t: int, latents: torch.Tensor, noise: torch.Tensor, context: torch.Tensor, empty: torch.Tensor,
             column: int) -> float:
    """Share of the one-step guided x0 predictions from timestep t that the classifier reads as showing it."""
    a = alphas_cumprod[t]
    noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
    steps = torch.full((len(latents),), t)
    uncond = model(noisy, steps, empty)
    eps = uncond + args.guidance * (model(noisy, steps, context) - uncond)
    x0 = (noisy - (1 - a).sqrt() * eps) / a.sqrt()
    images = (model.autoencoder.decode(x0) + 1) / 2
    return predict(classifier, to_uint8(images, size))[:, column].float().mean().item()


print(f"guidance {args.guidance}; per timestep: % showing the attribute when the prompt says yes / no\n")
print("| attribute | pairs | pooled-vector shift | " + " | ".join(f"t={t}" for t in args.timesteps) + " |")
print("|---|---|---|" + "---|" * len(args.timesteps))
for attribute in args.attributes:
    ids, yes_texts, no_texts = twin_prompts(rows, layout.split_ids("test"), attribute, args.pairs)
    images = torch.stack([item["image"] for item in ImageDataset(layout.root, ids, size)])
    latents = model.autoencoder.encode(images)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    yes_ctx, no_ctx = model.text_encoder(yes_texts), model.text_encoder(no_texts)
    empty = model.text_encoder([""] * len(ids))
    shift = "n/a"
    if getattr(model.unet, "add_embedding", None) is not None and model.unet.config.addition_embed_type == "text":
        with torch.no_grad():
            pooled_yes, pooled_no = model.unet.add_embedding(yes_ctx), model.unet.add_embedding(no_ctx)
        spread = (pooled_yes - pooled_yes.mean(0)).norm(dim=1).mean()
        shift = f"{((pooled_yes - pooled_no).norm(dim=1).mean() / spread).item():.2f}"
    column = names.index(attribute)
    cells = [f"{100 * shown_at(t, latents, noise, yes_ctx, empty, column):.0f} / "
             f"{100 * shown_at(t, latents, noise, no_ctx, empty, column):.0f}" for t in args.timesteps]
    print(f"| {attribute} | {len(ids)} | {shift} | " + " | ".join(cells) + " |", flush=True)
