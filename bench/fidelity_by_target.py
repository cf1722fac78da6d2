"""Attribute accuracy of an evaluate.py run, split by what each prompt says (yes vs no): shows whether
misses are the rare negations ("wears no lipstick") or the positives.

    python bench/fidelity_by_target.py outputs/<evaluate run dir> [Wearing_Lipstick No_Beard Smiling]
Reads the run's metrics.json (prompts, targets, sample files) and scores its samples with the dataset's
cached attribute classifier (the one evaluate.py trained).
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from text_ldm.data.celeba_layout import CelebALayout, read_attributes
from text_ldm.evaluation.attribute_classifier import ClassifierConfig, get_classifier, predict

run = Path(sys.argv[1])
attributes = sys.argv[2:] or ["Wearing_Lipstick", "No_Beard", "Smiling"]
metrics = json.loads((run / "metrics.json").read_text())
layout = CelebALayout(Path(metrics["data_root"]))
names, rows = read_attributes(layout.attribute_path)
classifier, _ = get_classifier(layout.root, names, rows, layout.split_ids("train"), metrics["image_size"],
                               ClassifierConfig(**metrics.get("classifier", {}).get("config", {})))
size = metrics["image_size"]
images = torch.stack([torch.from_numpy(np.asarray(Image.open(run / "samples" / p["files"][0]).convert("RGB")
                                                  .resize((size, size)))).permute(2, 0, 1)
                      for p in metrics["prompts"]])
predictions = predict(classifier, images)
print(f"{'attribute':18s} {'prompt says':>11s} {'n':>4s} {'accuracy':>9s}")
for name in attributes:
    column = names.index(name)
    for stated in (True, False):
        hits = [bool(predictions[i, column]) == stated for i, p in enumerate(metrics["prompts"])
                if p["targets"].get(name) is stated]
        accuracy = 100 * sum(hits) / len(hits) if hits else float("nan")
        print(f"{name:18s} {'yes' if stated else 'no':>11s} {len(hits):4d} {accuracy:9.1f}")
