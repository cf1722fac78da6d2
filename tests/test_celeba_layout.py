"""Tests for text_ldm.data.celeba_layout: every error path names the offending file."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from text_ldm.data.celeba_layout import (
    ATTRIBUTE_FILE,
    CAPTION_DIR,
    IMAGE_DIR,
    CelebALayout,
    DatasetLayoutError,
    load_image,
    read_attributes,
    read_captions,
    read_split,
    safe_load_pickle,
    write_attributes,
)

NAMES = ["Male", "Smiling"]


def make_dataset(root: Path, n: int = 4, ext: str = ".jpg") -> CelebALayout:
    """A minimal valid dataset with ids 0..n-1, all in train; test has id 0."""
    (root / IMAGE_DIR).mkdir(parents=True)
    (root / CAPTION_DIR).mkdir()
    rows = {}
    for i in range(n):
        Image.new("RGB", (40, 30), (i * 40, 10, 10)).save(root / IMAGE_DIR / f"{i}{ext}")
        (root / CAPTION_DIR / f"{i}.txt").write_text(f"caption {i}\nanother {i}\n", encoding="utf-8")
        rows[str(i)] = {"Male": i % 2 == 0, "Smiling": i % 3 == 0}
    write_attributes(root / ATTRIBUTE_FILE, NAMES, rows, ext=ext)
    (root / "train.txt").write_text("".join(f"{i}\n" for i in range(n)), encoding="utf-8")
    (root / "test.txt").write_text("0\n", encoding="utf-8")
    return CelebALayout(root)


# --------------------------------------------------------------------------- attributes


def test_attribute_round_trip_natural_order_and_whitespace(tmp_path):
    rows = {"10": {"Male": True, "Smiling": False}, "2": {"Male": False, "Smiling": True}}
    path = tmp_path / ATTRIBUTE_FILE
    write_attributes(path, NAMES, rows)
    lines = path.read_text().splitlines()
    assert lines[:2] == ["2", "Male Smiling"]
    assert lines[2].startswith("2.png") and lines[3].startswith("10.png")  # numeric, not lexical
    assert read_attributes(path) == (NAMES, rows)
    # The real file separates columns with one or two spaces.
    path.write_text("1\nMale  Smiling\n7.jpg  1 -1\n")
    assert read_attributes(path) == (NAMES, {"7": {"Male": True, "Smiling": False}})


@pytest.mark.parametrize(
    "body, expected",
    [
        ("1\nMale Smiling\n0.jpg 1\n", ":3: expected 3 columns"),
        ("1\nMale Smiling\n0.jpg 1 0\n", ":3: value for Smiling must be 1 or -1"),
        ("2\nMale Smiling\n0.jpg 1 -1\n", ":1: count line says 2 rows but the file has 1"),
    ],
)
def test_attribute_errors_name_file_and_line(tmp_path, body, expected):
    path = tmp_path / ATTRIBUTE_FILE
    path.write_text(body)
    with pytest.raises(DatasetLayoutError, match=expected) as e:
        read_attributes(path)
    assert str(path) in str(e.value)


def test_missing_attribute_file(tmp_path):
    with pytest.raises(DatasetLayoutError, match="attribute file not found") as e:
        read_attributes(tmp_path / "nope.txt")
    assert "nope.txt" in str(e.value)


# --------------------------------------------------------------------------- captions


def test_read_captions_strips_and_skips_blank(tmp_path):
    p = tmp_path / "0.txt"
    p.write_text("  first  \n\n\nsecond\n  \n", encoding="utf-8")
    assert read_captions(p) == ["first", "second"]


@pytest.mark.parametrize(
    "content, expected",
    [(None, "caption file not found"), (b" \n\n", "caption file is empty"), (b"caf\xe9\n", "not valid UTF-8")],
)
def test_read_captions_errors(tmp_path, content, expected):
    p = tmp_path / "3.txt"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(DatasetLayoutError, match=expected) as e:
        read_captions(p)
    assert str(p) in str(e.value)


# --------------------------------------------------------------------------- pickles / splits


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code_execution(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "train.pickle"
    path.write_bytes(pickle.dumps([0, 1, _Evil(marker)]))
    with pytest.raises(DatasetLayoutError, match=r"refused to load global (os|posix)\.system") as e:
        safe_load_pickle(path)
    assert str(path) in str(e.value)
    assert not marker.exists()  # the payload never ran
    with pytest.raises(DatasetLayoutError):  # ... also not through read_split
        read_split(tmp_path, "train")
    assert not marker.exists()


@pytest.mark.parametrize("obj", [{"a": 1}, [True, False], [1.5], [[1]]])
def test_safe_load_pickle_rejects_non_id_lists(tmp_path, obj):
    path = tmp_path / "x.pickle"
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(DatasetLayoutError, match="expected a list of int or str ids") as e:
        safe_load_pickle(path)
    assert str(path) in str(e.value)


def test_garbage_pickle(tmp_path):
    path = tmp_path / "x.pickle"
    path.write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(DatasetLayoutError, match="x.pickle"):
        safe_load_pickle(path)


def test_read_split_pickle_of_ints(tmp_path):
    for proto in (2, pickle.HIGHEST_PROTOCOL):
        (tmp_path / "train.pickle").write_bytes(pickle.dumps([0, 1, 5, 27999], protocol=proto))
        assert read_split(tmp_path, "train") == ["0", "1", "5", "27999"]


def test_read_split_prefers_txt_and_skips_blanks(tmp_path):
    (tmp_path / "test.pickle").write_bytes(pickle.dumps([9]))
    (tmp_path / "test.txt").write_text("3\n\n4.jpg\n  \n")
    assert read_split(tmp_path, "test") == ["3", "4"]


def test_read_split_missing_names_both_files(tmp_path):
    with pytest.raises(DatasetLayoutError) as e:
        read_split(tmp_path, "train")
    assert str(tmp_path / "train.txt") in str(e.value) and str(tmp_path / "train.pickle") in str(e.value)


# --------------------------------------------------------------------------- images


def _save(path: Path, img: Image.Image, **kw) -> Path:
    img.save(path, **kw)
    return path


@pytest.mark.parametrize(
    "mode, fmt, size",
    [("L", "PNG", (80, 50)), ("LA", "PNG", (50, 80)), ("RGBA", "PNG", (64, 64)), ("CMYK", "JPEG", (70, 90)),
     ("P", "PNG", (90, 70)), ("I;16", "PNG", (64, 96)), ("1", "PNG", (40, 40)), ("RGB", "JPEG", (200, 120))],
)
def test_load_image_any_mode_to_rgb(tmp_path, mode, fmt, size):
    path = _save(tmp_path / f"img.{fmt.lower()}", Image.new(mode, size), format=fmt)
    img, upscaled = load_image(path, 32)
    assert img.mode == "RGB" and img.size == (32, 32)
    assert upscaled is (min(size) < 32)


def test_load_image_transparency_and_16bit(tmp_path):
    clear = _save(tmp_path / "clear.png", Image.new("RGBA", (40, 40), (0, 0, 0, 0)))
    assert np.asarray(load_image(clear, 16)[0]).min() == 255  # transparent -> white, not black
    pal = Image.new("P", (40, 40), 0)
    pal.putpalette([0, 0, 0] * 256)
    p_path = _save(tmp_path / "pal.png", pal, transparency=0)
    assert np.asarray(load_image(p_path, 16)[0]).min() == 255
    mid = Image.fromarray(np.full((40, 40), 32768, dtype=np.uint16))
    i16 = _save(tmp_path / "i16.png", mid)
    assert abs(int(np.asarray(load_image(i16, 16)[0]).mean()) - 128) <= 2  # rescaled, not clipped white


def test_load_image_center_crop_and_upscale_flag(tmp_path):
    arr = np.zeros((100, 300, 3), np.uint8)
    arr[:, 100:200] = 255  # only the central third is white
    path = _save(tmp_path / "wide.png", Image.fromarray(arr))
    img, upscaled = load_image(path, 64)
    assert not upscaled and np.asarray(img)[:, 8:56].min() > 200
    small, upscaled = load_image(_save(tmp_path / "s.png", Image.new("RGB", (20, 30))), 64)
    assert upscaled and small.size == (64, 64)


def test_truncated_and_garbage_images_raise(tmp_path):
    full = tmp_path / "full.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(full)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(DatasetLayoutError, match="corrupt or unreadable image") as e:
        load_image(cut, 32)
    assert str(cut) in str(e.value)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"definitely not a png")
    with pytest.raises(DatasetLayoutError, match="junk.png"):
        load_image(junk, 32)


# --------------------------------------------------------------------------- layout


def test_check_missing_root_prints_expected_layout(tmp_path):
    with pytest.raises(DatasetLayoutError) as e:
        CelebALayout(tmp_path / "absent").check()
    assert "absent" in str(e.value) and "Expected dataset layout" in str(e.value)


def test_check_lists_every_missing_part(tmp_path):
    tmp_path.joinpath(IMAGE_DIR).mkdir()
    with pytest.raises(DatasetLayoutError) as e:
        CelebALayout(tmp_path).check()
    msg = str(e.value)
    for part in (CAPTION_DIR, ATTRIBUTE_FILE, "train.txt", "test.txt", "Expected dataset layout"):
        assert part in msg
    assert f"missing: {tmp_path / IMAGE_DIR}\n" not in msg


def test_layout_paths_and_split(tmp_path):
    layout = make_dataset(tmp_path, n=3, ext=".png")
    layout.check()
    assert layout.image_path("1") == tmp_path / IMAGE_DIR / "1.png"
    assert layout.caption_path("1") == tmp_path / CAPTION_DIR / "1.txt"
    assert layout.attribute_path == tmp_path / ATTRIBUTE_FILE
    assert layout.split_ids("train") == ["0", "1", "2"]
    assert read_attributes(layout.attribute_path)[1]["2"] == {"Male": True, "Smiling": False}
    with pytest.raises(DatasetLayoutError, match="no image for id '7'"):
        layout.image_path("7")


def _break(layout: CelebALayout) -> None:
    (layout.image_dir / "1.jpg").unlink()
    layout.caption_path("2").write_text("\n  \n")
    layout.caption_path("3").unlink()


def test_collect_error_counts_problems_and_names_files(tmp_path):
    layout = make_dataset(tmp_path, n=6)
    assert layout.collect("train") == [str(i) for i in range(6)]
    _break(layout)
    with pytest.raises(DatasetLayoutError, match="3 problem") as e:
        layout.collect("train")
    msg = str(e.value)
    assert str(layout.image_dir / "1") in msg
    assert str(layout.caption_path("2")) in msg and str(layout.caption_path("3")) in msg


def test_collect_skip_warns_once_and_keeps_good_ids(tmp_path):
    layout = make_dataset(tmp_path, n=6)
    _break(layout)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert layout.collect("train", on_missing="skip") == ["0", "4", "5"]
    assert len(caught) == 1 and "3 problem" in str(caught[0].message)


def test_collect_invalid_on_missing(tmp_path):
    layout = make_dataset(tmp_path)
    with pytest.raises(ValueError, match="'error', 'skip'"):
        layout.collect("train", on_missing="ignore")
