"""Attribute accuracy of an evaluate.py run, split by what each prompt says (yes vs no): shows whether
misses are the rare negations ("wears no lipstick") or the positives.

    python bench/probes/fidelity_by_target.py outputs/<evaluate run dir> [Wearing_Lipstick No_Beard Smiling] [--current-judge]
Reads the run's metrics.json (prompts, targets, sample files) and scores its samples with the dataset's
cached attribute classifier: the one that run's evaluate.py used, or with --current-judge today's default
ClassifierConfig (so runs evaluated under an older judge can be rescored), then also the mean per-attribute
accuracy and FD / KD on that classifier's features against the real held-out images.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from text_ldm.data.celeba_layout import CelebALayout, read_attributes
from text_ldm.evaluation.attribute_classifier import ClassifierConfig, get_classifier, predict

current_judge = "--current-judge" in sys.argv
args = [a for a in sys.argv[1:] if a != "--current-judge"]
run = Path(args[0])
attributes = args[1:] or ["Wearing_Lipstick", "No_Beard", "Smiling"]
metrics = json.loads((run / "metrics.json").read_text())
layout = CelebALayout(Path(metrics["data_root"]))
names, rows = read_attributes(layout.attribute_path)
classifier, _ = get_classifier(layout.root, names, rows, layout.split_ids("train"), metrics["image_size"],
                               ClassifierConfig() if current_judge
                               else ClassifierConfig(**metrics.get("classifier", {}).get("config", {})))
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
if current_judge:
    from text_ldm.evaluation.attribute_classifier import ClassifierFeatures, load_images
    from text_ldm.evaluation.fidelity import accuracy_vs_targets
    from text_ldm.evaluation.image_metrics import fid_kid

    scores = accuracy_vs_targets(predictions, [p["targets"] for p in metrics["prompts"]], names)
    print("mean accuracy " + f"{100 * scores['mean']:.1f}: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in scores.items()
                                                                      if k != "mean" and v is not None))
    real = load_images(layout.root, layout.split_ids("test"), size)
    print(fid_kid(real, images, ClassifierFeatures(classifier).eval(), "attr-clf")["line"])
