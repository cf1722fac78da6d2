"""Procedural toy faces: an offline stand-in for CelebA-HQ + MM-CelebA-HQ captions.

``build_toy_faces`` writes exactly the layout ``celeba_layout`` reads (PNG images
``<id>.png`` with ids 0..N-1, caption files, attribute file, train.txt/test.txt), so
the training code cannot tell toy data from real data. Every attribute is drawn as a
cue that survives 64x64 (hair colour, glasses frames, grin vs flat mouth, red lips,
beard, hat, long vs short hair); nuisance factors (skin tone, background, clothing,
small shifts/scale, hat colour, hair shape) keep the images from being trivial.
"""

from __future__ import annotations

import colorsys
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from text_ldm.data.celeba_layout import ATTRIBUTE_FILE, CAPTION_DIR, IMAGE_DIR, DatasetLayoutError, write_attributes

ATTRIBUTES = ["Male", "Blond_Hair", "Black_Hair", "Brown_Hair", "Gray_Hair", "Eyeglasses",
              "Smiling", "Wearing_Lipstick", "No_Beard", "Wearing_Hat"]
HAIR_COLOURS = ["Blond_Hair", "Black_Hair", "Brown_Hair", "Gray_Hair"]
META_FILE = "toy_faces.json"
# Bump whenever rendering/captions change so stale cached datasets are refused.
VERSION = 2

_HAIR_RGB = {"Blond_Hair": (236, 200, 70), "Black_Hair": (28, 24, 26),
             "Brown_Hair": (115, 64, 28), "Gray_Hair": (178, 178, 184)}
_HAIR_WORD = {"Blond_Hair": "blond", "Black_Hair": "black", "Brown_Hair": "brown", "Gray_Hair": "gray"}
_HAT_RGB = [(200, 35, 40), (35, 70, 190), (30, 135, 60), (120, 45, 150), (20, 120, 130)]
_LIPSTICK_RGB = (205, 20, 45)
_SS = 4  # supersampling factor: draw at 4x, LANCZOS down for smooth edges


def sample_attributes(rng: np.random.Generator) -> dict[str, bool]:
    """One face's attributes: exactly one hair colour; beard only on men, lipstick only on women."""
    male = bool(rng.random() < 0.5)
    hair = HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))]
    attrs = {name: False for name in ATTRIBUTES}
    attrs.update({"Male": male, hair: True,
                  "Eyeglasses": bool(rng.random() < 0.45),
                  "Smiling": bool(rng.random() < 0.5),
                  # 80% within the sex => ~40% overall, and both classes exist within each sex.
                  "Wearing_Lipstick": (not male) and bool(rng.random() < 0.8),
                  "No_Beard": (not male) or bool(rng.random() < 0.2),
                  "Wearing_Hat": bool(rng.random() < 0.45)})
    return attrs


def _hair_of(attrs: dict[str, bool]) -> str:
    hairs = [h for h in HAIR_COLOURS if attrs.get(h)]
    if len(hairs) != 1:
        raise ValueError(f"need exactly one of {HAIR_COLOURS}, got {hairs}")
    return hairs[0]


def _clip255(v: float) -> int:
    return int(min(255.0, max(0.0, v)))  # plain Python: np.clip on scalars dominated runtime


def _jitter(rgb, rng: np.random.Generator, amount: float) -> tuple[int, int, int]:
    return tuple(_clip255(c + d) for c, d in zip(rgb, rng.uniform(-amount, amount, size=3)))


def _scale_rgb(rgb, f: float) -> tuple[int, int, int]:
    return tuple(_clip255(c * f) for c in rgb)


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))


def render_face(attrs: dict[str, bool], rng: np.random.Generator, image_size: int = 64) -> Image.Image:
    """Draw one face as an ``image_size`` x ``image_size`` RGB image.

    Geometry is specified in 64-pixel units relative to the face centre and scaled,
    so the cues have the same relative size at any ``image_size``.
    """
    hair_name = _hair_of(attrs)
    male = attrs["Male"]
    n = image_size * _SS
    u = n / 64.0  # pixels per 64-grid unit

    # Nuisance draws happen unconditionally and in a fixed order so that flipping one
    # attribute (same rng state) changes only that attribute's pixels.
    bg_hue = rng.uniform(0.45, 0.95)  # cyan..pink: avoids blond/brown hues
    bg_top = _hsv(bg_hue, rng.uniform(0.25, 0.5), rng.uniform(0.7, 0.92))
    bg_bot = _hsv(bg_hue + rng.uniform(-0.08, 0.08), rng.uniform(0.25, 0.5), rng.uniform(0.55, 0.8))
    t = rng.uniform(0.0, 0.8)
    skin = tuple(int(a + t * (b - a)) for a, b in zip((247, 222, 198), (165, 112, 78)))
    hair = _jitter(_HAIR_RGB[hair_name], rng, 10)
    cloth = _hsv(rng.uniform(0, 1), rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.75))
    hat = _jitter(_HAT_RGB[int(rng.integers(len(_HAT_RGB)))], rng, 15)
    cx, cy = 32 + rng.uniform(-2.5, 2.5), 33 + rng.uniform(-2, 2)
    k = rng.uniform(0.93, 1.05)
    hair_volume = rng.uniform(0.0, 1.5)
    hair_len = rng.uniform(16, 23)
    part = rng.uniform(-3, 3)
    crown_h = rng.uniform(10, 13)

    def P(x: float, y: float) -> tuple[float, float]:
        return ((cx + x * k) * u, (cy + y * k) * u)

    def box(x0, y0, x1, y1):
        return [P(x0, y0), P(x1, y1)]

    grad = np.linspace(0.0, 1.0, n, dtype=np.float32)[:, None, None]
    column = (1 - grad) * np.array(bg_top, np.float32) + grad * np.array(bg_bot, np.float32)
    img = Image.fromarray(column.round().astype(np.uint8), "RGB").resize((n, n), Image.Resampling.NEAREST)
    d = ImageDraw.Draw(img)
    w = lambda units: max(1, int(round(units * u * k)))  # noqa: E731 - line width in units

    # Torso and neck first; long hair then falls in front of the shoulders.
    d.ellipse(box(-24, 20, 24, 50), fill=cloth)
    if not male:
        d.rounded_rectangle(box(-15 - hair_volume, -16, 15 + hair_volume, hair_len), radius=10 * u * k, fill=hair)
    d.rectangle(box(-5, 8, 5, 22), fill=_scale_rgb(skin, 0.9))

    # Ears, then head: men get a wider, squarer jaw.
    for s in (-1, 1):
        d.ellipse(box(s * 11 - 2, -4, s * 11 + 2, 4), fill=_scale_rgb(skin, 0.95))
    if male:
        d.ellipse(box(-11.5, -15, 11.5, 9), fill=skin)
        d.rounded_rectangle(box(-10.5, -2, 10.5, 14), radius=6 * u * k, fill=skin)
    else:
        d.ellipse(box(-10.5, -15, 10.5, 14), fill=skin)

    # Hair cap over the forehead (part position varies), sideburns for short hair.
    d.chord(box(-12.5 - hair_volume, -17.5 - hair_volume, 12.5 + hair_volume, 3), 180, 360, fill=hair)
    d.polygon([P(part - 4, -7.5), P(part + 5, -7.5), P(part + 9, -4)], fill=hair)
    if male:
        for s in (-1, 1):
            d.rectangle(box(min(s * 12, s * 9.3), -8, max(s * 12, s * 9.3), 1), fill=hair)

    if not attrs["No_Beard"]:
        beard = _scale_rgb(hair, 0.8)
        d.chord(box(-11.5, -14, 11.5, 15.5), 5, 175, fill=beard)
        d.rectangle(box(-11.5, 0, 11.5, 4), fill=beard)
        d.ellipse(box(-5.5, 4.5, 5.5, 7.5), fill=beard)  # moustache

    # Eyes, eyebrows, nose.
    for s in (-1, 1):
        d.ellipse(box(s * 5 - 2.2, -2.3, s * 5 + 2.2, 0.3), fill=(250, 250, 250))
        d.ellipse(box(s * 5 - 1.1, -2.1, s * 5 + 1.1, 0.1), fill=(40, 30, 30))
        d.line([P(s * 7.5, -4.3), P(s * 2.8, -4.8)], fill=_scale_rgb(hair, 0.7), width=w(1.0))
    d.line([P(0, 0.5), P(-0.8, 4), P(0.6, 4.3)], fill=_scale_rgb(skin, 0.72), width=w(0.7))

    lips = _LIPSTICK_RGB if attrs["Wearing_Lipstick"] else _scale_rgb((skin[0], skin[1] * 0.85, skin[2] * 0.85), 0.85)
    # Full lips: at 9 x 3 units the lipstick moved the latents 13 times less than a smile, too little to
    # learn in a CPU demo (bench/probes/clause_footprint.py).
    if attrs["Smiling"]:
        # Open grin (lower half-disc with teeth) reads as a smile even at 64px.
        d.chord(box(-6.5, 3.0, 6.5, 13.5), 0, 180, fill=lips)
        d.chord(box(-4.2, 5.6, 4.2, 10.2), 0, 180, fill=(250, 250, 245))
    else:
        d.ellipse(box(-6.0, 6.3, 6.0, 11.0), fill=lips)
        d.line([P(-5.6, 8.6), P(5.6, 8.6)], fill=_scale_rgb(lips, 0.55), width=w(0.6))

    if attrs["Eyeglasses"]:
        frame = (18, 18, 22)
        for s in (-1, 1):
            d.rounded_rectangle(box(s * 5 - 4, -4, s * 5 + 4, 2), radius=1.5 * u * k,
                                outline=frame, width=w(1.4))
            d.line([P(s * 9, -2.5), P(s * 11.8, -3.2)], fill=frame, width=w(1.2))
        d.line([P(-1.4, -1.8), P(1.4, -1.8)], fill=frame, width=w(1.2))

    if attrs["Wearing_Hat"]:
        # Crown + band + wide brim sitting above the hairline, so hair stays visible below.
        d.rounded_rectangle(box(-10, -11 - crown_h, 10, -11), radius=3 * u * k, fill=hat)
        d.rectangle(box(-10, -14, 10, -11.5), fill=_scale_rgb(hat, 0.45))
        d.ellipse(box(-17, -13.5, 17, -9), fill=_scale_rgb(hat, 0.85))

    # reducing_gap: a 2x box pre-reduction before LANCZOS halves the build time, same look.
    return img.resize((image_size, image_size), Image.Resampling.LANCZOS, reducing_gap=2.0)


# --------------------------------------------------------------------------- captions
# Variant 0 of each clause is the canonical wording used by caption_for(rng=None). Several wordings per
# clause, drawn per clause, and five sentence shapes: with two wordings per caption, prompts worded in
# other words lost about 16 points. evaluation/prompts.py's free wording uses none of these words
# ("without", "-less", synonyms) and none of these shapes: it stays a held-out test.
_NOUNS = {True: ("man", "gentleman", "fellow"), False: ("woman", "lady", "young woman")}
_CLAUSES = {
    ("hair", True): ("has {c} hair", "has {c} colored hair", "has hair that is {c}"),
    ("Eyeglasses", True): ("wears eyeglasses", "is wearing glasses", "has glasses", "wears a pair of glasses"),
    ("Eyeglasses", False): ("wears no eyeglasses", "does not wear glasses", "has no glasses",
                            "is not wearing eyeglasses"),
    ("Smiling", True): ("is smiling", "has a big smile", "smiles", "has a smiling face"),
    ("Smiling", False): ("is not smiling", "does not smile", "has a neutral expression", "has a closed mouth"),
    ("Wearing_Lipstick", True): ("wears lipstick", "is wearing red lipstick", "has red lipstick",
                                 "wears bright lipstick"),
    ("Wearing_Lipstick", False): ("wears no lipstick", "is not wearing lipstick", "has no lipstick",
                                  "does not wear lipstick"),
    ("beard", True): ("has a beard", "has a full beard", "has a thick beard", "wears a beard"),
    ("beard", False): ("has no beard", "is clean-shaven", "is shaved", "does not have a beard"),
    ("Wearing_Hat", True): ("wears a hat", "is wearing a hat", "has a hat", "wears a brimmed hat"),
    ("Wearing_Hat", False): ("wears no hat", "is not wearing a hat", "has no hat", "does not wear a hat"),
}
_STYLES = 5
_MAX_WORDS = 19  # at most 32 MiniLM tokens: the demo's text encoder keeps 32
_NEGATIVE_STATED = 0.4  # how often a caption states a negative fact: the template prompts state them all


def _facts(attrs: dict[str, bool]) -> list[tuple[str, bool]]:
    """(clause key, value) for every attribute worth stating, in canonical order."""
    male = attrs["Male"]
    facts = [("hair", True), ("Eyeglasses", attrs["Eyeglasses"]), ("Smiling", attrs["Smiling"])]
    # "He wears no lipstick" / "She has no beard" never occur in real captions, so these
    # are only stated when they carry information (the dataset never samples those cases).
    if not male or attrs["Wearing_Lipstick"]:
        facts.append(("Wearing_Lipstick", attrs["Wearing_Lipstick"]))
    if male or not attrs["No_Beard"]:
        facts.append(("beard", not attrs["No_Beard"]))
    facts.append(("Wearing_Hat", attrs["Wearing_Hat"]))
    return facts


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _compose(attrs: dict[str, bool], facts: list[tuple[str, bool]], noun: str, style: int,
             variants: list[int]) -> str:
    """One caption: `variants[i]` picks the wording of `facts[i]`; `style` the sentence shape."""
    colour = _HAIR_WORD[_hair_of(attrs)]
    clauses = [_CLAUSES[f][v].format(c=colour) for f, v in zip(facts, variants)]
    pron = "He" if attrs["Male"] else "She"
    hair_first = facts[0][0] == "hair"
    if style == 2 and hair_first:  # "The woman with black hair wears a hat and is smiling."
        rest = _join(clauses[1:]) if len(clauses) > 1 else ""
        return f"The {noun} with {colour} hair{' ' + rest if rest else ''}."
    if style == 3:  # "A woman who has black hair, wears a hat and is smiling."
        return f"A {noun} who {_join(clauses)}."
    if style == 4 and hair_first and len(clauses) > 1:  # "A photo of a woman with black hair. She wears a hat."
        return f"A photo of a {noun} with {colour} hair. {pron} {_join(clauses[1:])}."
    det = "This" if style == 0 else "The"
    # style 1 packs two facts into the first sentence and splits the rest into pairs.
    first = 2 if style == 1 and len(clauses) >= 3 else 1
    sentences = [f"{det} {noun} {_join(clauses[:first])}."]
    rest_clauses = clauses[first:]
    step = 2 if style == 1 else 4
    for i in range(0, len(rest_clauses), step):
        sentences.append(f"{pron} {_join(rest_clauses[i:i + step])}.")
    return " ".join(sentences)


def _random_caption(attrs: dict[str, bool], facts: list[tuple[str, bool]], rng: np.random.Generator) -> str:
    """`facts` in a random noun, shape and wording; wordings are redrawn until the caption fits
    `_MAX_WORDS` (the canonical wording, the shortest, if none does), so every fact reaches the encoder."""
    nouns = _NOUNS[attrs["Male"]]
    for _ in range(8):
        noun = nouns[int(rng.integers(len(nouns)))]
        variants = [int(rng.integers(len(_CLAUSES[f]))) for f in facts]
        caption = _compose(attrs, facts, noun, int(rng.integers(_STYLES)), variants)
        if len(caption.split()) <= _MAX_WORDS:
            return caption
    return _compose(attrs, facts, nouns[0], 0, [0] * len(facts))


def make_captions(attrs: dict[str, bool], rng: np.random.Generator, n: int = 10) -> list[str]:
    """``n`` varied MM-CelebA-HQ-style captions; some omit attributes, negatives are rarer."""
    out: list[str] = []
    # Real MM-CelebA-HQ files hold distinct sentences; retry duplicates a bounded number of
    # times because faces with few statable facts may not have n distinct captions.
    for _ in range(8 * n):
        if len(out) == n:
            break
        facts = []
        for key, value in _facts(attrs):
            p = 0.9 if key == "hair" else (0.7 if value else _NEGATIVE_STATED)
            if rng.random() < p:
                facts.append((key, value))
        if not facts:
            facts = [("hair", True)]
        # Hair usually leads (as in MM-CelebA-HQ); the other facts come in any order.
        head, tail = (facts[:1], facts[1:]) if facts[0][0] == "hair" else ([], facts)
        tail = [tail[j] for j in rng.permutation(len(tail))]
        caption = _random_caption(attrs, head + tail, rng)
        if caption not in out:
            out.append(caption)
    return out + [out[i % len(out)] for i in range(n - len(out))]  # repeats only if retries ran out


def caption_for(attrs: dict[str, bool], rng: np.random.Generator | None = None) -> str:
    """One caption stating every attribute (positive or negative); canonical wording if rng is None.

    Lipstick is not mentioned for men without it and beards not for women without one,
    matching the training captions (see ``_facts``).
    """
    facts = _facts(attrs)
    if rng is None:
        return _compose(attrs, facts, _NOUNS[attrs["Male"]][0], 0, [0] * len(facts))
    return _random_caption(attrs, facts, rng)


def stated_attributes(attrs: dict[str, bool]) -> dict[str, bool]:
    """attribute -> value for exactly what `caption_for(attrs)` states: sex via the noun/pronoun, the hair
    colour (which also rules out the other colours), and lipstick / beard only where it mentions them."""
    stated = {"Male": attrs["Male"]}
    for key, value in _facts(attrs):
        if key == "hair":
            stated.update({h: attrs[h] for h in HAIR_COLOURS})
        elif key == "beard":
            stated["No_Beard"] = not value
        else:
            stated[key] = value
    return stated


# --------------------------------------------------------------------------- builder


def _meta(num_train: int, num_test: int, image_size: int, seed: int) -> dict:
    return {"format": "text_ldm.toy_faces", "version": VERSION, "num_train": num_train,
            "num_test": num_test, "image_size": image_size, "seed": seed}


def _existing_matches(root: Path, meta: dict) -> bool:
    """True if ``root`` already holds this exact dataset, False if absent/empty; else refuse."""
    if not root.exists():
        return False
    if not root.is_dir():
        raise DatasetLayoutError(f"{root} exists and is not a directory; choose another path")
    if not any(root.iterdir()):
        return False
    meta_path = root / META_FILE
    try:
        old = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise DatasetLayoutError(
            f"{root} exists but is not a toy-faces dataset (no readable {meta_path}); refusing to "
            "overwrite it. Delete it yourself or choose another directory.") from None
    if old != meta:
        raise DatasetLayoutError(
            f"{meta_path} was built with {old}, but {meta} was requested. "
            f"Delete {root} or choose another directory.")
    return True


def _progress(iterable, total: int, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress bars are cosmetic; never fail a build over them
        return iterable
    return tqdm(iterable, total=total, disable=not enabled, desc="toy faces", unit="img")


def build_toy_faces(root: str | Path, num_train: int = 4000, num_test: int = 400, image_size: int = 64,
                    seed: int = 0, progress: bool = True) -> Path:
    """Build (or reuse) a toy dataset at ``root`` in the CelebA-HQ layout; returns ``root``.

    Deterministic: face ``i`` depends only on ``(seed, i)``, so the same arguments give
    byte-identical files. Ids ``0..num_train-1`` are train, the next ``num_test`` test.
    """
    root = Path(root)
    meta = _meta(num_train, num_test, image_size, seed)
    if _existing_matches(root, meta):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    # Build next to root and rename at the end so an interrupted build never leaves a
    # half-written directory that a later run would mistake for a finished dataset.
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        (tmp / IMAGE_DIR).mkdir()
        (tmp / CAPTION_DIR).mkdir()
        rows: dict[str, dict[str, bool]] = {}
        total = num_train + num_test
        for i in _progress(range(total), total, progress):
            # Independent streams: caption changes never alter images and vice versa.
            r_attr, r_img, r_cap = (np.random.default_rng(s) for s in np.random.SeedSequence([seed, i]).spawn(3))
            attrs = sample_attributes(r_attr)
            render_face(attrs, r_img, image_size).save(tmp / IMAGE_DIR / f"{i}.png", format="PNG")
            caps = make_captions(attrs, r_cap)
            (tmp / CAPTION_DIR / f"{i}.txt").write_text("\n".join(caps) + "\n", encoding="utf-8")
            rows[str(i)] = attrs
        write_attributes(tmp / ATTRIBUTE_FILE, ATTRIBUTES, rows, ext=".png")
        (tmp / "train.txt").write_text("".join(f"{i}\n" for i in range(num_train)), encoding="utf-8")
        (tmp / "test.txt").write_text("".join(f"{i}\n" for i in range(num_train, total)), encoding="utf-8")
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if root.is_dir():
            root.rmdir()  # only reached when empty (checked above); rename needs it gone
        try:
            os.replace(tmp, root)
        except OSError:
            # Lost a race with a concurrent build: accept its result if it matches.
            if _existing_matches(root, meta):
                shutil.rmtree(tmp, ignore_errors=True)
                return root
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
