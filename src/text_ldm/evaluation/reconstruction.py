"""Does the autoencoder keep the attributes? The attribute classifier's accuracy on decoded
reconstructions of the held-out images, next to its accuracy on the originals.

A latent diffusion model can be no more faithful than its decoder: an attribute the autoencoder
blurs away (glasses frames, an open grin) is lost to every sample. The issue's target is a gap of
at most 0.01 in mean accuracy.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from text_ldm.evaluation.fidelity import Scores, accuracy_vs_targets


@torch.no_grad()
def reconstruct(autoencoder, images: torch.Tensor, batch_size: int = 64, image_size: int | None = None) -> torch.Tensor:
    """uint8 images (N, 3, S, S) -> uint8 decode(encode(x)) (N, 3, S, S).

    `image_size`: the autoencoder's working size when it differs from S (images are resized to it
    and the reconstructions back to S, both antialiased)."""
    size = images.shape[-1]
    device = next(autoencoder.parameters(), torch.empty(0)).device
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc="reconstructions", unit="batch", leave=False):
        x = images[start: start + batch_size].float().div(255).to(device)
        if image_size and image_size != size:
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
        y = (autoencoder.decode(autoencoder.encode(x * 2 - 1)).float() + 1) / 2
        if y.shape[-1] != size:
            y = F.interpolate(y, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append((y.clamp(0, 1) * 255).round().to(torch.uint8).cpu())
    return torch.cat(out) if out else images.clone()


def reconstruction_gap(original: Scores, reconstructed: Scores) -> dict[str, float | None]:
    """Per-attribute (and mean) accuracy drop, original - reconstructed (positive = worse)."""
    return {k: (None if original.get(k) is None or reconstructed.get(k) is None else original[k] - reconstructed[k])
            for k in original}


def reconstruction_fidelity(classifier, predict, autoencoder, images: torch.Tensor,
                            targets: Sequence[Mapping[str, bool]], names: Sequence[str],
                            image_size: int | None = None) -> dict[str, Scores]:
    """{"original": scores on `images`, "reconstructed": scores on their reconstructions,
    "gap": original - reconstructed}. images: (N, 3, S, S) uint8; targets: N dicts (all attributes)."""
    original = accuracy_vs_targets(predict(classifier, images), targets, names)
    recon = accuracy_vs_targets(predict(classifier, reconstruct(autoencoder, images, image_size=image_size)),
                                targets, names)
    return {"original": original, "reconstructed": recon, "gap": reconstruction_gap(original, recon)}
