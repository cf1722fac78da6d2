"""How often an item's drawn training caption states its rare negation, per data.caption_length_power.

    python bench/caption_weighting.py [powers, default 0,1,2,4,6]
Exact expectations over the toy-faces training split (weights (word count)^p, as LatentCaptionDataset draws):
the share of draws that say "no lipstick" for lipstick-free women and "no beard" for beardless men.
"""
import re
import sys
from pathlib import Path

import numpy as np

from text_ldm.data.celeba_layout import CelebALayout, read_attributes, read_captions

layout = CelebALayout(Path("data/toy_faces"))
names, rows = read_attributes(layout.attribute_path)
ids = layout.split_ids("train")
captions = {i: read_captions(layout.caption_path(i)) for i in ids}
groups = {"lipstick-free women": ([i for i in ids if not rows[i]["Male"] and not rows[i]["Wearing_Lipstick"]],
                                  re.compile(r"no lipstick|not wearing lipstick")),
          "beardless men": ([i for i in ids if rows[i]["Male"] and rows[i]["No_Beard"]],
                            re.compile(r"no beard|clean-shaven"))}
print("| power | mean words drawn | " + " | ".join(f"{g}: negation stated" for g in groups) + " |")
print("|---|---|" + "---|" * len(groups))
for power in [float(p) for p in (sys.argv[1] if len(sys.argv) > 1 else "0,1,2,4,6").split(",")]:
    def weights(item):
        w = np.array([len(c.split()) ** power for c in captions[item]])
        return w / w.sum()
    words = np.mean([weights(i) @ [len(c.split()) for c in captions[i]] for i in ids])
    shares = [np.mean([weights(i) @ [bool(pattern.search(c)) for c in captions[i]] for i in members])
              for members, pattern in groups.values()]
    print(f"| {power:g} | {words:.1f} | " + " | ".join(f"{100 * s:.0f} %" for s in shares) + " |")
