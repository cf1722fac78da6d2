"""Attribute accuracy of the shipped autoencoder's reconstructions vs the originals (held-out split).

    python bench/recon_fidelity.py [autoencoder_dir]   # default artifacts/toy_vq
"""
import sys
from pathlib import Path

import torch

from text_ldm.data.celeba_layout import CelebALayout, read_attributes
from text_ldm.evaluation.attribute_classifier import ClassifierConfig, get_classifier, load_images, predict
from text_ldm.evaluation.fidelity import format_table
from text_ldm.evaluation.reconstruction import reconstruction_fidelity
from text_ldm.models.autoencoder import FrozenAutoencoder

torch.set_num_threads(2)
root = Path("data/toy_faces")
layout = CelebALayout(root)
names, rows = read_attributes(layout.attribute_path)
train_ids, test_ids = layout.split_ids("train"), layout.split_ids("test")
clf, _ = get_classifier(root, names, rows, train_ids, 64, ClassifierConfig())
ae = FrozenAutoencoder.from_pretrained(sys.argv[1] if len(sys.argv) > 1 else "artifacts/toy_vq", kind="vq",
                                       force_not_quantize=True)
real = load_images(root, test_ids, 64)
res = reconstruction_fidelity(clf, predict, ae, real, [rows[i] for i in test_ids], names)
print(format_table(names, {"original": res["original"], "reconstructed": res["reconstructed"]}))
print(f"mean gap (original - reconstructed): {res['gap']['mean']:.4f}")
