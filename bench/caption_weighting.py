"""How often an item's drawn training caption states its rare negation, per data.caption_length_power.

    python bench/caption_weighting.py [powers, default 0,1,2,4,6] [--boost REGEX FACTOR ...]
Exact expectations over the toy-faces training split (weights (word count)^p times any data.caption_boost
factors, as LatentCaptionDataset draws): the share of draws that say "no lipstick" for lipstick-free women and
"no beard" for beardless men, and "lipstick" for the women who wear it.
"""
import argparse
import re
from pathlib import Path

import numpy as np

from text_ldm.data.celeba_layout import CelebALayout, read_attributes, read_captions
from text_ldm.data.datamodule import caption_weight, compile_caption_boost

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("powers", nargs="?", default="0,1,2,4,6")
parser.add_argument("--boost", nargs=2, action="append", default=[], metavar=("REGEX", "FACTOR"),
                    help="as data.caption_boost={REGEX: FACTOR}; repeatable")
args = parser.parse_args()
boosts = compile_caption_boost({regex: float(factor) for regex, factor in args.boost})

layout = CelebALayout(Path("data/toy_faces"))
names, rows = read_attributes(layout.attribute_path)
ids = layout.split_ids("train")
captions = {i: read_captions(layout.caption_path(i)) for i in ids}
women = [i for i in ids if not rows[i]["Male"]]
groups = {"lipstick-free women: negation stated": ([i for i in women if not rows[i]["Wearing_Lipstick"]],
                                                   re.compile(r"no lipstick|not wearing lipstick")),
          "beardless men: negation stated": ([i for i in ids if rows[i]["Male"] and rows[i]["No_Beard"]],
                                             re.compile(r"no beard|clean-shaven")),
          "women with lipstick: stated": ([i for i in women if rows[i]["Wearing_Lipstick"]],
                                          re.compile(r"wears lipstick|wearing red lipstick"))}
if boosts:
    print("boost: " + ", ".join(f"x{factor:g} for {regex.pattern!r}" for regex, factor in boosts) + "\n")
print("| power | mean words drawn | " + " | ".join(groups) + " |")
print("|---|---|" + "---|" * len(groups))
for power in [float(p) for p in args.powers.split(",")]:
    def weights(item):
        w = np.array([caption_weight(c, power, boosts) for c in captions[item]])
        return w / w.sum()
    words = np.mean([weights(i) @ [len(c.split()) for c in captions[i]] for i in ids])
    shares = [np.mean([weights(i) @ [bool(pattern.search(c)) for c in captions[i]] for i in members])
              for members, pattern in groups.values()]
    print(f"| {power:g} | {words:.1f} | " + " | ".join(f"{100 * s:.0f} %" for s in shares) + " |")
