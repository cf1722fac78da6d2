"""Prompt mixing: weighted blends of prompts or single words, before or after the text encoder.

Syntax (any prompt given to sample.py):
- `a {man|woman:0.3} with glasses`: TOKEN-level mix. Each choice of the braces is written out as a
  full prompt ("a man with glasses", "a woman with glasses"); their word embeddings, the text
  transformer's input, are averaged position by position with the weights, and the transformer
  runs once on the blend (the seed's "half puppy, half skunk" trick, via `inputs_embeds`).
  Several brace groups multiply out (weights multiply). Alternatives of different token counts
  are still mixed position by position, with a warning, since the rest of the prompt then shifts.
  With `text_encoder.granularity=clauses` the alternatives' clause vectors are mixed, slot by slot.
- `a blond man:0.7 | a woman with a hat:0.3`: WHOLE-EMBEDDING blend. Each part goes through the
  encoder on its own and the output token embeddings (L, D) are averaged with the weights.
- Weights: a missing weight gets an equal share of what the given ones leave of 1 (so
  `{man|woman:0.3}` is 0.7 / 0.3 and `{man|woman}` is 0.5 / 0.5); the weights are then scaled to sum to 1.
"""
from __future__ import annotations

import itertools
import re
import warnings
from collections.abc import Sequence

import torch

from text_ldm.models.text_encoder import FrozenTextEncoder

_WEIGHT = re.compile(r"^(.*?):\s*([0-9]*\.?[0-9]+)\s*$", re.S)
_GROUP = re.compile(r"\{([^{}]*)\}")


def is_mixed(prompt: str) -> bool:
    return "{" in prompt or "|" in prompt


def _split_top_level(text: str, sep: str = "|") -> list[str]:
    parts, depth, current = [], 0, []
    for ch in text:
        depth += ch == "{"
        depth -= ch == "}"
        if depth < 0:
            raise ValueError(f"prompt {text!r}: a '}}' has no matching '{{'")
        if ch == sep and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth:
        raise ValueError(f"prompt {text!r}: a '{{' is never closed")
    return parts + ["".join(current)]


def weighted_choices(items: Sequence[str], context: str) -> list[tuple[str, float]]:
    """["man", "woman:0.3"] -> [("man", 0.7), ("woman", 0.3)] (weights sum to 1)."""
    parsed = []
    for item in items:
        match = _WEIGHT.match(item)
        parsed.append((match.group(1).strip(), float(match.group(2))) if match else (item.strip(), None))
    given = sum(w for _, w in parsed if w is not None)
    free = [i for i, (_, w) in enumerate(parsed) if w is None]
    share = max(0.0, 1.0 - given) / len(free) if free else 0.0
    weights = [share if w is None else w for _, w in parsed]
    total = sum(weights)
    if total <= 0:
        raise ValueError(f"prompt mix {context!r}: the weights sum to 0; give at least one positive weight")
    return [(text, w / total) for (text, _), w in zip(parsed, weights)]


def expand(part: str) -> list[tuple[str, float]]:
    """'a {man|woman:0.3} smiles' -> [("a man smiles", 0.7), ("a woman smiles", 0.3)]."""
    groups = [weighted_choices(g.split("|"), g) for g in _GROUP.findall(part)]
    pieces = _GROUP.split(part)[0::2]  # the text between groups
    out = []
    for combo in itertools.product(*groups):
        text = pieces[0] + "".join(choice + piece for (choice, _), piece in zip(combo, pieces[1:]))
        weight = 1.0
        for _, w in combo:
            weight *= w
        if weight > 0:  # a zero-weight choice changes nothing; skipping it keeps 0/1 mixes exact
            out.append((re.sub(r"\s+", " ", text).strip(), weight))
    return out


def parse(prompt: str) -> list[tuple[float, list[tuple[str, float]]]]:
    """prompt -> [(part weight, [(full prompt, token-mix weight), ...]), ...] (see module doc)."""
    parts = weighted_choices(_split_top_level(prompt), prompt)
    return [(w, expand(text)) for text, w in parts]


def token_mix(text_encoder: FrozenTextEncoder, choices: Sequence[tuple[str, float]]) -> torch.Tensor:
    """Mix word embeddings of the written-out prompts, then encode once -> (L, D). A clause-vector encoder has
    no token sequence to mix: there the alternatives' clause vectors are mixed, slot by slot."""
    weights = torch.tensor([w for _, w in choices])
    if text_encoder.granularity == "clauses":
        encoded = text_encoder([p for p, _ in choices])
        return torch.einsum("n,nld->ld", weights.to(encoded), encoded)
    embeds, masks = text_encoder.token_embeddings([p for p, _ in choices])
    lengths = masks.sum(dim=1)
    if (lengths != lengths[0]).any():
        warnings.warn(f"token-level mix of {[p for p, _ in choices]}: the alternatives have {lengths.tolist()} "
                      "tokens, so the words after them are mixed out of step", stacklevel=2)
    mixed = torch.einsum("n,nld->ld", weights.to(embeds), embeds)
    return text_encoder.encode_embeddings(mixed[None], masks.amax(dim=0)[None])[0]


@torch.no_grad()
def encode_prompt(text_encoder: FrozenTextEncoder, prompt: str) -> torch.Tensor:
    """One prompt in the mixing syntax -> its conditioning (L, D); a plain prompt is just encoded."""
    if not is_mixed(prompt):
        return text_encoder([prompt])[0]
    out = None
    for weight, choices in parse(prompt):
        if len(choices) == 1:
            emb = text_encoder([choices[0][0]])[0]
        else:
            emb = token_mix(text_encoder, choices)
        out = weight * emb if out is None else out + weight * emb
    return out


def encode_prompts(text_encoder: FrozenTextEncoder, prompts: Sequence[str]) -> torch.Tensor | None:
    """(B, L, D) conditioning for prompts in the mixing syntax, or None when none of them mixes
    (then the caller's ordinary, memoised path applies)."""
    if not any(is_mixed(p) for p in prompts):
        return None
    return torch.stack([encode_prompt(text_encoder, p) for p in prompts])
