"""A small CNN multi-label attribute classifier, trained once per dataset and cached beside it.

It is the judge of attribute fidelity: its accuracy on the real held-out images is the ceiling
any generator can be measured at, and its penultimate features are the offline stand-in for
Inception features in `image_metrics`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision.transforms.functional import gaussian_blur
from tqdm.auto import tqdm

from text_ldm.data.celeba_layout import CelebALayout, load_image
from text_ldm.utils.atomic import atomic_path, atomic_write_text

# Bump when the architecture or the training recipe changes: old caches are then ignored.
CLASSIFIER_VERSION = 1
FEATURE_NAME = "attr-clf"  # how the penultimate features are named in reports


@dataclass(frozen=True)
class ClassifierConfig:
    # 10, not 3: at 3 epochs 35 % of the women without lipstick (a 10 % subgroup) read as wearing it.
    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    width: int = 32
    seed: int = 0
    # Half of each batch is blurred with sigma ~ U(0.3, blur_sigma_max) px (0: never). Trained on sharp images
    # only, the judge read 39 % of held-out lipstick wearers as bare once downsampled 2x and back, i.e. it
    # judged sharpness; generated samples are softer than the data (bench/probes/judge_robustness.py).
    blur_sigma_max: float = 1.2


class AttributeClassifier(nn.Module):
    """Images (N, 3, H, W) in [0, 1] -> one logit per attribute; `features` is the pooled
    penultimate layer (width * 4 numbers), usable as a torchmetrics FID/KID `feature` module."""

    def __init__(self, num_attributes: int, width: int = 32):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1], num_attributes)
        self.num_features = chans[-1]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images.float() * 2 - 1).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class ClassifierFeatures(nn.Module):
    """The classifier's penultimate features as an nn.Module of its own (for torchmetrics)."""

    def __init__(self, classifier: AttributeClassifier):
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            images = images.float() / 255
        return self.classifier.features(images)


def fingerprint(names: Sequence[str], train_ids: Sequence[str], image_size: int, config: ClassifierConfig) -> str:
    payload = json.dumps({"names": list(names), "train_ids": list(train_ids), "image_size": int(image_size),
                          "config": dataclasses.asdict(config), "version": CLASSIFIER_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def load_images(root: str | Path, ids: Sequence[str], image_size: int, desc: str = "images") -> torch.Tensor:
    """(N, 3, image_size, image_size) uint8 images of `ids`."""
    layout = CelebALayout(Path(root))
    out = torch.empty((len(ids), 3, image_size, image_size), dtype=torch.uint8)
    for i, item_id in enumerate(tqdm(ids, desc=desc, unit="img", leave=False)):
        image, _ = load_image(layout.image_path(item_id), image_size)
        out[i] = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
    return out


def targets_of(names: Sequence[str], rows: dict[str, dict[str, bool]], ids: Sequence[str]) -> torch.Tensor:
    """(N, A) bool attribute matrix for `ids` in `names` order."""
    return torch.tensor([[rows[i][n] for n in names] for i in ids], dtype=torch.bool).reshape(len(ids), len(names))


def train_classifier(images: torch.Tensor, targets: torch.Tensor, config: ClassifierConfig,
                     progress: bool = True) -> AttributeClassifier:
    """Train on uint8 images (N, 3, H, W) and bool targets (N, A) with BCE; flips and blur as augmentation."""
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    model = AttributeClassifier(targets.shape[1], config.width)
    n = len(images)
    steps = config.epochs * max(1, -(-n // config.batch_size))
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps, pct_start=0.2)
    model.train()
    bar = tqdm(total=steps, desc="attribute classifier", unit="step", disable=not progress)
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, config.batch_size):
            idx = order[start: start + config.batch_size]
            x = images[idx].float() / 255
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x[flip] = x[flip].flip(-1)
            if config.blur_sigma_max > 0:
                blur = torch.rand(len(idx), generator=gen) < 0.5
                sigma = 0.3 + (config.blur_sigma_max - 0.3) * torch.rand((), generator=gen).item()
                if blur.any():
                    x[blur] = gaussian_blur(x[blur], kernel_size=5, sigma=sigma)
            loss = F.binary_cross_entropy_with_logits(model(x), targets[idx].float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return model.eval()


def get_classifier(root: str | Path, names: Sequence[str], rows: dict[str, dict[str, bool]],
                   train_ids: Sequence[str], image_size: int, config: ClassifierConfig = ClassifierConfig(),
                   cache_dir: str | Path | None = None, progress: bool = True) -> tuple[AttributeClassifier, Path]:
    """The classifier for this dataset: loaded from `<cache_dir>/attr_clf-<fingerprint>.safetensors`
    when present (cache_dir defaults to `<root>/.eval_cache`), else trained on the train split and
    written there atomically. Returns (classifier in eval mode, weights path)."""
    cache = Path(cache_dir) if cache_dir is not None else Path(root) / ".eval_cache"
    key = fingerprint(names, train_ids, image_size, config)
    weights = cache / f"attr_clf-{key}.safetensors"
    if weights.is_file():
        model = AttributeClassifier(len(names), config.width)
        model.load_state_dict(load_file(weights))
        return model.eval(), weights
    images = load_images(root, train_ids, image_size, desc="train images")
    model = train_classifier(images, targets_of(names, rows, train_ids), config, progress=progress)
    meta = {"names": list(names), "num_train": len(train_ids), "image_size": int(image_size),
            "config": dataclasses.asdict(config), "version": CLASSIFIER_VERSION, "fingerprint": key}
    atomic_write_text(weights.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    with atomic_path(weights) as tmp:  # last: the weights' presence means the cache entry is complete
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    return model, weights


@torch.no_grad()
def predict(model: AttributeClassifier, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N, A) bool predictions for images in [0, 1] (float) or uint8, resized to nothing: the
    caller passes images at the classifier's size."""
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start: start + batch_size]
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        out.append(model(x) > 0)
    return torch.cat(out) if out else torch.zeros((0, model.head.out_features), dtype=torch.bool)
