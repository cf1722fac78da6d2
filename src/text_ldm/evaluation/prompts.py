"""Prompts built from held-out attribute rows, each with the attributes its text states.

A prompt is scored only on the attributes it states: `Prompt.targets` holds exactly those.
Toy-face attribute names reuse `toy_faces.caption_for`'s canonical wording; any other attribute
set gets a generic "A photo of a person with X and Y, without Z." template stating every attribute.
`free_prompt` words the same facts the way a person might, in words and orders the training
captions never use: the held-out phrasing set (`evaluate.py phrasing=free`).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from text_ldm.data.toy_faces import ATTRIBUTES, HAIR_COLOURS, caption_for, stated_attributes


class Prompt(NamedTuple):
    text: str
    targets: dict[str, bool]  # attribute -> expected value, only for attributes the text states
    source_id: str | None = None  # the held-out row it was written from: its real image is the ideal sample


def is_toy(names: Sequence[str]) -> bool:
    return set(names) == set(ATTRIBUTES)


def toy_prompt(attrs: dict[str, bool]) -> Prompt:
    """caption_for's canonical caption, scored on the attributes it states."""
    return Prompt(caption_for(attrs), stated_attributes(attrs))


# Synonyms and negations that no training caption uses (toy_faces._CLAUSES holds theirs).
_FREE_NOUNS = {True: ("guy", "male person", "bloke"), False: ("girl", "female person", "gal")}
_FREE_HAIR = {"Blond_Hair": ("blonde", "golden"), "Black_Hair": ("jet-black", "raven"),
              "Brown_Hair": ("chestnut", "brunette"), "Gray_Hair": ("grey", "silver")}
_FREE_CLAUSES = {
    "Eyeglasses": (("with spectacles", "glasses on"), ("without glasses", "no specs")),
    "Smiling": (("grinning", "with a smile"), ("with a serious face", "not grinning")),
    "Wearing_Lipstick": (("with red lips", "lipstick on"), ("without any lipstick", "bare lips, no lipstick")),
    "beard": (("bearded", "with facial hair"), ("beardless", "without a beard")),
    "Wearing_Hat": (("with a hat on", "in a hat"), ("bareheaded", "without a hat")),
}


def free_prompt(attrs: dict[str, bool], rng: np.random.Generator) -> Prompt:
    """The facts `caption_for(attrs)` states, in held-out words (synonyms, other negations), shuffled,
    joined by commas or "and" in one of three sentence shapes; scored on the same attributes."""
    hair = next(h for h in HAIR_COLOURS if attrs[h])
    noun = _FREE_NOUNS[attrs["Male"]][int(rng.integers(3))]
    colour = _FREE_HAIR[hair][int(rng.integers(2))]
    stated = stated_attributes(attrs)
    clauses = []
    for key in ("Eyeglasses", "Smiling", "Wearing_Lipstick", "beard", "Wearing_Hat"):
        attribute = "No_Beard" if key == "beard" else key
        if attribute in stated:
            value = not stated[attribute] if key == "beard" else stated[attribute]
            clauses.append(_FREE_CLAUSES[key][0 if value else 1][int(rng.integers(2))])
    clauses = [clauses[j] for j in rng.permutation(len(clauses))]
    shape = int(rng.integers(3))
    if shape == 0:  # "A raven haired guy, grinning, beardless, in a hat"
        text = f"A {colour} haired {noun}, " + ", ".join(clauses)
    elif shape == 1:  # "grinning and in a hat: a guy with raven hair"
        text = f"{_join(clauses).capitalize()}: a {noun} with {colour} hair."
    else:  # "Portrait of a guy. Raven hair, grinning, beardless."
        text = f"Portrait of a {noun}. {colour.capitalize()} hair, " + ", ".join(clauses) + "."
    return Prompt(text, stated)


def humanise(name: str) -> str:
    return name.replace("_", " ").lower()


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def generic_prompt(attrs: dict[str, bool], names: Sequence[str]) -> Prompt:
    pos = [humanise(n) for n in names if attrs[n]]
    neg = [humanise(n) for n in names if not attrs[n]]
    parts = []
    if pos:
        parts.append(f"with {_join(pos)}")
    if neg:
        parts.append(f"without {_join(neg)}")
    return Prompt(f"A photo of a person {', '.join(parts)}.", {n: attrs[n] for n in names})


PHRASINGS = ("templates", "free")


def build_prompts(names: Sequence[str], rows: dict[str, dict[str, bool]], held_out_ids: Sequence[str],
                  n_prompts: int, seed: int = 0, phrasing: str = "templates") -> list[Prompt]:
    """`n_prompts` prompts from distinct held-out rows (a seeded random choice, in id order), in the
    training captions' canonical wording or, with phrasing="free" (toy faces only), in `free_prompt`'s."""
    if phrasing not in PHRASINGS:
        raise ValueError(f"phrasing={phrasing!r}; choose one of {PHRASINGS}")
    if n_prompts < 1:
        raise ValueError(f"n_prompts={n_prompts} must be >= 1")
    ids = [i for i in held_out_ids if i in rows]
    if n_prompts > len(ids):
        raise ValueError(f"n_prompts={n_prompts} exceeds the {len(ids)} held-out rows with attributes")
    chosen = sorted(np.random.default_rng(seed).choice(len(ids), size=n_prompts, replace=False).tolist())
    toy = is_toy(names)
    if phrasing == "free":
        if not toy:
            raise ValueError("phrasing=free rewords the toy faces' attributes; other datasets have templates only")
        wording = np.random.default_rng([seed, 1])
        return [free_prompt(rows[ids[j]], wording)._replace(source_id=ids[j]) for j in chosen]
    return [(toy_prompt(rows[ids[j]]) if toy else generic_prompt(rows[ids[j]], names))._replace(source_id=ids[j])
            for j in chosen]


def twin_prompts(rows: dict[str, dict[str, bool]], ids: Sequence[str], attribute: str,
                 n_pairs: int) -> tuple[list[str], list[str], list[str]]:
    """Counterfactual toy prompts: for the first `n_pairs` of `ids` whose canonical caption states
    `attribute` either way (lipstick: women; beard: men), the caption with it True and its twin with
    only it False. Returns (the rows' ids, texts saying yes, texts saying no), aligned."""
    chosen = [i for i in ids if all(attribute in toy_prompt({**rows[i], attribute: v}).targets
                                    for v in (True, False))][:n_pairs]
    return (chosen, [toy_prompt({**rows[i], attribute: True}).text for i in chosen],
            [toy_prompt({**rows[i], attribute: False}).text for i in chosen])
