"""How much of the denoising loss can each clause move? Twin faces differing in one attribute, in latent space.

    python bench/probes/clause_footprint.py [--autoencoder artifacts/toy_vq] [--pairs 64]

Each pair is one toy face rendered twice from the same random state with a single attribute flipped (the
renderer draws its nuisances in a fixed order, so only that attribute's pixels change). The squared latent
difference is what the noise-prediction MSE can gain, per sample, from reading the clause: a clause whose
footprint is small teaches the UNet little per step, however often it is stated.
"""
import argparse

import numpy as np
import torch

from text_ldm.data.image_dataset import to_tensor
from text_ldm.data.toy_faces import render_face, sample_attributes
from text_ldm.models.autoencoder import FrozenAutoencoder

# (attribute, the sex whose captions state it both ways)
CLAUSES = [("Wearing_Lipstick", False), ("Smiling", False), ("Eyeglasses", False), ("Wearing_Hat", False),
           ("No_Beard", True)]

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--autoencoder", default="artifacts/toy_vq")
parser.add_argument("--pairs", type=int, default=64)
parser.add_argument("--threads", type=int, default=2)
args = parser.parse_args()
torch.set_num_threads(args.threads)
autoencoder = FrozenAutoencoder.from_pretrained(args.autoencoder, kind="vq")


def twin_faces(attribute: str, male: bool, pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pairs, 3, 64, 64) x 2 in [-1, 1]: the same faces with the attribute True, then False."""
    attrs_rng, with_attr, without_attr = np.random.default_rng(0), [], []
    while len(with_attr) < pairs:
        attrs = sample_attributes(attrs_rng)
        if attrs["Male"] != male:
            continue
        face_seed = len(with_attr)
        for value, out in ((True, with_attr), (False, without_attr)):
            out.append(to_tensor(render_face({**attrs, attribute: value}, np.random.default_rng(face_seed))))
    return torch.stack(with_attr), torch.stack(without_attr)


rows = []
with torch.no_grad():
    for attribute, male in CLAUSES:
        images_yes, images_no = twin_faces(attribute, male, args.pairs)
        latents_yes, latents_no = autoencoder.encode(images_yes), autoencoder.encode(images_no)
        delta = latents_yes - latents_no
        footprint = delta.pow(2).sum(dim=(1, 2, 3)).mean().item()
        pixels = (images_yes - images_no).pow(2).sum(dim=(1, 2, 3)).mean().item()
        # latent positions where some channel moves by more than a tenth of the latents' spread
        moved = (delta.abs().amax(dim=1) > 0.1 * latents_yes.std()).float().sum(dim=(1, 2)).mean().item()
        rows.append((attribute, "men" if male else "women", pixels, footprint, moved))

reference = dict((r[0], r[3]) for r in rows)["Smiling"]
h, w = latents_yes.shape[-2:]
print(f"{args.pairs} twin pairs per attribute, autoencoder {args.autoencoder} (latents {h} x {w})\n")
print("| attribute | faces | pixel sq. difference | latent sq. difference | latent positions moved | vs Smiling |")
print("|---|---|---|---|---|---|")
for attribute, faces, pixels, footprint, moved in rows:
    print(f"| {attribute} | {faces} | {pixels:.1f} | {footprint:.1f} | {moved:.1f} of {h * w} | {footprint / reference:.2f}x |")
