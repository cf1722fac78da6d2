"""Does the attribute judge read attributes, or sharpness? Its accuracy on the real held-out images,
sharp and degraded (Gaussian blur, noise, 2x down-and-up sampling), for the judge trained on sharp
images only and for today's default (blur augmentation), side by side; also with the whole image shifted by 1-2 px
(the toy faces' centres already vary by up to 2.5 px):

    python bench/probes/judge_robustness.py [data_root=data/toy_faces] [image_size=64]

Samples from a small latent diffusion model are softer than the data, so a judge whose lipstick verdict
flips under mild blur scores "wears lipstick" prompts low and "wears no lipstick" prompts high whatever
the generator drew. Both judges are trained once and cached beside the data (.eval_cache).
"""
import dataclasses
import sys
from pathlib import Path

import torch
from torchvision.transforms.functional import gaussian_blur, resize

from text_ldm.data.celeba_layout import CelebALayout, read_attributes
from text_ldm.evaluation.attribute_classifier import (ClassifierConfig, get_classifier, load_images, predict,
                                                      targets_of)

root = Path(sys.argv[1] if len(sys.argv) > 1 else "data/toy_faces")
size = int(sys.argv[2]) if len(sys.argv) > 2 else 64
torch.set_num_threads(2)
layout = CelebALayout(root)
names, rows = read_attributes(layout.attribute_path)
test_ids = layout.split_ids("test")
images, targets = load_images(root, test_ids, size), targets_of(names, rows, test_ids)
judges = {"sharp-only": dataclasses.replace(ClassifierConfig(), blur_sigma_max=0.0), "default": ClassifierConfig()}
judges = {name: get_classifier(root, names, rows, layout.split_ids("train"), size, cfg)[0] for name, cfg in judges.items()}


def degrade(kind: str, amount: float) -> torch.Tensor:
    x = images.float() / 255
    if kind == "blur":
        x = gaussian_blur(x, kernel_size=5, sigma=amount)
    elif kind == "noise":
        x = x + amount * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    elif kind == "down-up":
        x = resize(resize(x, size // int(amount), antialias=True), size, antialias=True)
    elif kind == "shift":  # the whole image moved down and right by `amount` px, edges repeated
        s = int(amount)
        x = torch.nn.functional.pad(x, (s, 0, s, 0), mode="replicate")[:, :, :size, :size]
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


lip, women = names.index("Wearing_Lipstick"), ~targets[:, names.index("Male")]
print(f"{'judge':11s} {'images':14s} {'mean acc':>8s} {'lipstick: wearers':>18s} {'bare women':>11s} {'worst attribute':>24s}")
for kind, amount in [("sharp", 0), ("blur", 0.6), ("blur", 1.0), ("noise", 0.06), ("down-up", 2), ("shift", 1), ("shift", 2)]:
    x = degrade(kind, amount)
    for judge_name, judge in judges.items():
        p = predict(judge, x)
        per_attr = (p == targets).float().mean(0)
        worst = int(per_attr.argmin())
        wearers = p[women & targets[:, lip], lip].float().mean()
        bare = (~p[women & ~targets[:, lip], lip]).float().mean()
        label = kind if kind == "sharp" else f"{kind} {amount:g}"
        print(f"{judge_name:11s} {label:14s} {100 * per_attr.mean():8.1f} {100 * wearers:18.1f} {100 * bare:11.1f} "
              f"{names[worst] + f' {100 * per_attr[worst]:.1f}':>24s}")
