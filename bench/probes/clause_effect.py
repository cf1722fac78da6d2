"""Does the model listen to a clause? Counterfactual prompt pairs on the same noise.

    python bench/probes/clause_effect.py <ckpt> [--pairs 24] [--guidance 9] [--data-root data/toy_faces] [--attributes Wearing_Lipstick ...]
    python bench/probes/clause_effect.py <ckpt> --timesteps 950 800 600 400 200   # one-step probe, about 20 s

For each attribute, held-out toy rows where the caption states it (lipstick: women; beard: men) give a
prompt and its twin with only that attribute flipped ("wears lipstick" <-> "wears no lipstick"). Both are
sampled from the same seed (DDIM 50) and judged by the evaluator's attribute classifier. A model that ignores
the clause draws the same face twice, whatever its prior: the effect (share showing the attribute when the
prompt says yes, minus when it says no, same seeds) is then 0, and 100 when the clause alone decides it.
Plain accuracy mixes this with the data's prior (80 % of the toy women wear lipstick).

With --timesteps, at which noise level the model reads the clause: each row's real image is noised to t (the
same noise for both prompts), the UNet predicts once with guidance, and the decoded one-step x0 is judged. Equal
shares mean the prediction ignores the clause at that t. It also prints how far the clause moves the frozen text
encoder's mean token vector and the UNet's learned pooled text vector (addition_embed_type "text"), each relative to
its spread over the prompts: the first is what the text offers, the second what training made of it.
"""
import argparse
from pathlib import Path

import torch

from text_ldm.data.celeba_layout import CelebALayout, read_attributes
from text_ldm.data.image_dataset import ImageDataset
from text_ldm.evaluation.app import sample_images, to_uint8
from text_ldm.evaluation.attribute_classifier import ClassifierConfig, get_classifier, predict
from text_ldm.evaluation.prompts import twin_prompts
from text_ldm.models.components import DiffusionComponents

CLAUSES = ["Wearing_Lipstick", "No_Beard", "Smiling", "Eyeglasses", "Wearing_Hat"]

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("ckpt")
parser.add_argument("--pairs", type=int, default=24, help="prompt pairs per attribute")
parser.add_argument("--guidance", type=float, default=9.0)
parser.add_argument("--steps", type=int, default=50)
parser.add_argument("--timesteps", type=int, nargs="+", default=None,
                    help="one-step probe from real images noised to these timesteps instead of sampling")
parser.add_argument("--data-root", default="data/toy_faces")
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--attributes", nargs="+", default=CLAUSES, choices=CLAUSES)
parser.add_argument("--vae-pretrained", default=None, help="the autoencoder's directory, if it moved since training")
args = parser.parse_args()
torch.set_num_threads(args.threads)

layout = CelebALayout(Path(args.data_root))
names, rows = read_attributes(layout.attribute_path)
model = DiffusionComponents.from_checkpoint(args.ckpt, use_ema=True, vae_pretrained=args.vae_pretrained)
size = model.image_size
classifier, _ = get_classifier(layout.root, names, rows, layout.split_ids("train"), size, ClassifierConfig())
test_ids = layout.split_ids("test")


def sampled_effects() -> None:
    print(f"{'attribute':18s} {'pairs':>5s} {'shown | yes':>12s} {'shown | no':>11s} {'effect':>7s} {'both right':>11s}")
    for attribute in args.attributes:
        _, yes_texts, no_texts = twin_prompts(rows, test_ids, attribute, args.pairs)
        seeds = list(range(len(yes_texts)))
        column = names.index(attribute)
        shown = {}
        for label, texts in (("yes", yes_texts), ("no", no_texts)):
            images = sample_images(model, "ddim", texts, seeds, args.steps, args.guidance, 24, f"{attribute} {label}")
            shown[label] = predict(classifier, to_uint8(images, size))[:, column]
        yes, no = shown["yes"].float().mean().item(), shown["no"].float().mean().item()
        both = (shown["yes"] & ~shown["no"]).float().mean().item()
        print(f"{attribute:18s} {len(seeds):5d} {100 * yes:11.1f}% {100 * no:10.1f}% {100 * (yes - no):+7.1f} "
              f"{100 * both:10.1f}%")


@torch.no_grad()
def shown_at(t: int, latents: torch.Tensor, noise: torch.Tensor, context: torch.Tensor, empty: torch.Tensor,
             column: int) -> float:
    """Share of the one-step guided x0 predictions from timestep t that the classifier reads as showing it."""
    a = model.noise_scheduler.alphas_cumprod[t]
    noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
    steps = torch.full((len(latents),), t)
    uncond = model.unet(noisy, steps, encoder_hidden_states=empty).sample
    eps = uncond + args.guidance * (model.unet(noisy, steps, encoder_hidden_states=context).sample - uncond)
    x0 = (noisy - (1 - a).sqrt() * eps) / a.sqrt()
    images = (model.autoencoder.decode(x0) + 1) / 2
    return predict(classifier, to_uint8(images, size))[:, column].float().mean().item()


def relative_shift(yes: torch.Tensor, no: torch.Tensor) -> str:
    """Mean |yes - no| over the pairs, relative to the mean distance of the yes vectors from their centre."""
    spread = (yes - yes.mean(0)).norm(dim=1).mean()
    return f"{((yes - no).norm(dim=1).mean() / spread).item():.2f}"


@torch.no_grad()
def pooled_shift(yes_ctx: torch.Tensor, no_ctx: torch.Tensor) -> str:
    """The shift in the UNet's learned pooled text vector (what training made of the clause)."""
    if model.unet.config.addition_embed_type != "text":
        return "n/a"
    return relative_shift(model.unet.add_embedding(yes_ctx), model.unet.add_embedding(no_ctx))


def encoder_shift(yes_texts: list[str], no_texts: list[str], yes_ctx: torch.Tensor, no_ctx: torch.Tensor) -> str:
    """The same for the frozen encoder's own mean over real tokens (what the text offers the UNet)."""
    def mean_pooled(texts, ctx):
        mask = model.text_encoder.token_embeddings(texts)[1].unsqueeze(-1).to(ctx.dtype)
        return (ctx * mask).sum(1) / mask.sum(1)
    return relative_shift(mean_pooled(yes_texts, yes_ctx), mean_pooled(no_texts, no_ctx))


def one_step_effects(timesteps: list[int]) -> None:
    if model.noise_scheduler.config.prediction_type != "epsilon":
        raise SystemExit("--timesteps reads epsilon predictions; the checkpoint predicts "
                         f"{model.noise_scheduler.config.prediction_type}")
    print(f"guidance {args.guidance}; per timestep: % showing the attribute when the prompt says yes / no\n")
    print("| attribute | pairs | text-encoder shift | pooled-vector shift | " + " | ".join(f"t={t}" for t in timesteps) + " |")
    print("|---|---|---|---|" + "---|" * len(timesteps))
    for attribute in args.attributes:
        ids, yes_texts, no_texts = twin_prompts(rows, test_ids, attribute, args.pairs)
        latents = model.autoencoder.encode(torch.stack([item["image"] for item in ImageDataset(layout.root, ids, size)]))
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
        yes_ctx, no_ctx = model.text_encoder(yes_texts), model.text_encoder(no_texts)
        empty = model.text_encoder([""] * len(ids))
        column = names.index(attribute)
        cells = [f"{100 * shown_at(t, latents, noise, yes_ctx, empty, column):.0f} / "
                 f"{100 * shown_at(t, latents, noise, no_ctx, empty, column):.0f}" for t in timesteps]
        shifts = f"{encoder_shift(yes_texts, no_texts, yes_ctx, no_ctx)} | {pooled_shift(yes_ctx, no_ctx)}"
        print(f"| {attribute} | {len(ids)} | {shifts} | " + " | ".join(cells) + " |", flush=True)


if args.timesteps:
    one_step_effects(args.timesteps)
else:
    sampled_effects()
