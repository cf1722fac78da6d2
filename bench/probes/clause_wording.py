"""Does a trained model draw a clause the same whatever its wording? One clause reworded in held-out prompts.

    python bench/probes/clause_wording.py <ckpt> [--prompts 24] [--data-root data/toy_faces]

For each of "has no beard", "has a beard" and "wears no lipstick", the held-out template prompts that hold it
are sampled again with the clause swapped for each training wording of the same fact (toy_faces._CLAUSES),
from the same seeds, at the checkpoint's sampling, and judged by the evaluator's attribute classifier. A row
well under the others means the model reads that wording's words, not the fact: "has no beard" drawn with a
beard where "is shaved" is not says the noun "beard" is taken as evidence for one, the negation half read.
"""
import argparse

import torch

from text_ldm.data.celeba_layout import CelebALayout, read_attributes
from text_ldm.data.toy_faces import _CLAUSES
from text_ldm.evaluation.app import sample_images, to_uint8
from text_ldm.evaluation.attribute_classifier import ClassifierConfig, get_classifier, predict
from text_ldm.evaluation.prompts import build_prompts
from text_ldm.models.components import DiffusionComponents
from text_ldm.sampling.guidance import Guidance

# (canonical clause, its _CLAUSES key, judged attribute, the value the clause asks for)
CLAUSES = [("has no beard", ("beard", False), "No_Beard", True),
           ("has a beard", ("beard", True), "No_Beard", False),
           ("wears no lipstick", ("Wearing_Lipstick", False), "Wearing_Lipstick", False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt")
    parser.add_argument("--prompts", type=int, default=24, help="prompts a clause (each sampled once per wording)")
    parser.add_argument("--data-root", default="data/toy_faces")
    args = parser.parse_args()

    layout = CelebALayout(args.data_root)
    names, rows = read_attributes(layout.attribute_path)
    classifier, _ = get_classifier(layout.root, names, rows, layout.split_ids("train"), 64, ClassifierConfig())
    test_ids = layout.split_ids("test")
    prompts = build_prompts(names, rows, test_ids, len(test_ids), 0, "templates")
    model = DiffusionComponents.from_checkpoint(args.ckpt, use_ema=True)
    settings = model.sampling
    guidance = Guidance(float(settings["guidance_scale"]), 0.0, settings.get("guidance_interval"))
    print(f"{'clause':18s} {'reworded as':28s} {'drawn as asked':>14s}")
    for canonical, key, attribute, wanted in CLAUSES:
        texts = [p.text for p in prompts if canonical in p.text][:args.prompts]
        for wording in _CLAUSES[key]:
            reworded = [text.replace(canonical, wording) for text in texts]
            images = sample_images(model, settings["sampler"], reworded, list(range(len(reworded))),
                                   int(settings["steps"]), guidance, 32, wording)
            drawn = predict(classifier, to_uint8(images, 64))[:, names.index(attribute)].bool()
            share = 100 * float((drawn == wanted).float().mean())
            print(f"{canonical:18s} {wording:28s} {share:9.1f} % of {len(texts)}", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
