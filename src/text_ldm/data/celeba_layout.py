"""The single reader for CelebA-HQ / MM-CelebA-HQ style datasets (real or toy).

Both the real data and the procedural toy faces (``toy_faces.py``) use the same
on-disk layout (``EXPECTED_LAYOUT`` below), so everything downstream only ever talks
to this module. Ids are strings (the file stem, e.g. ``"0"``) everywhere.
"""

from __future__ import annotations

import io
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageOps

ATTRIBUTE_FILE = "CelebAMask-HQ-attribute-anno.txt"
IMAGE_DIR = "CelebA-HQ-img"
CAPTION_DIR = "celeba-caption"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

EXPECTED_LAYOUT = f"""Expected dataset layout:
  <root>/{IMAGE_DIR}/<id>.jpg|jpeg|png
  <root>/{CAPTION_DIR}/<id>.txt              (~10 captions, one per line, UTF-8)
  <root>/{ATTRIBUTE_FILE}   (count line, attribute names line, then '<id>.<ext> 1 -1 ...')
  <root>/train.txt and <root>/test.txt       (ids one per line; or train.pickle / test.pickle)"""

# How many offending files an aggregated error/warning names before summarising.
_MAX_NAMED = 5


class DatasetLayoutError(ValueError):
    """Dataset files are missing or malformed; the message names the offending path."""


def _natural_key(item_id: str) -> tuple[int, int, str]:
    # Integer ids sort numerically ("2" < "10"); anything else sorts after, lexically.
    return (0, int(item_id), "") if item_id.isdigit() else (1, 0, item_id)


def _strip_image_ext(item_id: str) -> str:
    # Split files in the wild sometimes list "12.jpg" instead of "12".
    for ext in IMAGE_EXTENSIONS:
        if item_id.lower().endswith(ext):
            return item_id[: -len(ext)]
    return item_id


# --------------------------------------------------------------------------- attributes


def read_attributes(path: str | Path) -> tuple[list[str], dict[str, dict[str, bool]]]:
    """Read a CelebAMask-HQ attribute file.

    Returns ``(names, rows)`` where ``rows[id][name]`` is True for ``1`` and False for
    ``-1``; ``id`` is the image file stem (``"0.jpg"`` -> ``"0"``).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetLayoutError(f"attribute file not found: {path}\n{EXPECTED_LAYOUT}")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise DatasetLayoutError(f"{path}: not valid UTF-8 ({e})") from e
    # Blank lines carry no data; keep original line numbers for error messages.
    numbered = [(i + 1, ln.split()) for i, ln in enumerate(lines) if ln.strip()]
    if len(numbered) < 2:
        raise DatasetLayoutError(f"{path}: expected a count line and an attribute-name line")
    (count_line, count_tok), (_, names) = numbered[0], numbered[1]
    if len(count_tok) != 1 or not count_tok[0].isdigit():
        raise DatasetLayoutError(f"{path}:{count_line}: first line must be the row count, got {count_tok}")
    if len(set(names)) != len(names):
        raise DatasetLayoutError(f"{path}:{numbered[1][0]}: duplicate attribute names")

    rows: dict[str, dict[str, bool]] = {}
    for lineno, tokens in numbered[2:]:
        if len(tokens) != len(names) + 1:
            raise DatasetLayoutError(
                f"{path}:{lineno}: expected {len(names) + 1} columns (file name + "
                f"{len(names)} attributes), got {len(tokens)}"
            )
        item_id = _strip_image_ext(tokens[0])
        if item_id in rows:
            raise DatasetLayoutError(f"{path}:{lineno}: duplicate id {item_id!r}")
        values = {}
        for name, tok in zip(names, tokens[1:]):
            if tok not in ("1", "-1"):
                raise DatasetLayoutError(f"{path}:{lineno}: value for {name} must be 1 or -1, got {tok!r}")
            values[name] = tok == "1"
        rows[item_id] = values
    if int(count_tok[0]) != len(rows):
        raise DatasetLayoutError(
            f"{path}:{count_line}: count line says {count_tok[0]} rows but the file has {len(rows)}"
        )
    return names, rows


def write_attributes(
    path: str | Path,
    names: Sequence[str],
    rows: Mapping[str, Mapping[str, bool]],
    ext: str = ".png",
) -> None:
    """Write ``rows`` (id -> {name: bool}) in CelebAMask-HQ format, ids in natural order."""
    path = Path(path)
    lines = [str(len(rows)), " ".join(names)]
    for item_id in sorted(rows, key=_natural_key):
        row = rows[item_id]
        missing = [n for n in names if n not in row]
        if missing:
            raise ValueError(f"row {item_id!r} lacks attributes {missing}")
        lines.append(f"{item_id}{ext} " + " ".join("1" if row[n] else "-1" for n in names))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- captions


def read_captions(path: str | Path) -> list[str]:
    """Return the non-blank, stripped caption lines of a UTF-8 caption file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise DatasetLayoutError(f"caption file not found: {path}") from e
    try:
        text = raw.decode("utf-8-sig")  # -sig: tolerate a BOM from Windows editors
    except UnicodeDecodeError as e:
        raise DatasetLayoutError(f"caption file is not valid UTF-8: {path} ({e})") from e
    captions = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not captions:
        raise DatasetLayoutError(f"caption file is empty: {path}")
    return captions


# --------------------------------------------------------------------------- splits


class _RestrictedUnpickler(pickle.Unpickler):
    # A split file only needs lists of ints/strs, which pickle encodes with opcodes alone.
    # Refusing every global makes arbitrary code execution (os.system via __reduce__,
    # etc.) impossible, rather than trying to allow-list "safe" callables.
    def find_class(self, module: str, name: str):  # noqa: D401
        raise pickle.UnpicklingError(f"refused to load global {module}.{name}")


def safe_load_pickle(path: str | Path) -> list[int | str]:
    """Load a pickled list/tuple of ints/strs without ever importing any global."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise DatasetLayoutError(f"pickle file not found: {path}") from e
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as e:
        raise DatasetLayoutError(f"{path}: unsafe or invalid pickle: {e}") from e
    except Exception as e:  # truncated/garbage pickles raise EOFError, ValueError, ...
        raise DatasetLayoutError(f"{path}: could not unpickle ({type(e).__name__}: {e})") from e
    # bool is an int subclass but a list of bools is certainly not a list of ids.
    if not isinstance(obj, (list, tuple)) or not all(
        isinstance(x, (int, str)) and not isinstance(x, bool) for x in obj
    ):
        raise DatasetLayoutError(f"{path}: expected a list of int or str ids, got {type(obj).__name__}")
    return list(obj)


def read_split(root: str | Path, split: str) -> list[str]:
    """Ids of ``split`` from ``<root>/<split>.txt`` (preferred) or ``<root>/<split>.pickle``."""
    root = Path(root)
    txt, pkl = root / f"{split}.txt", root / f"{split}.pickle"
    if txt.is_file():
        source = txt
        try:
            raw: Iterable[int | str] = txt.read_text(encoding="utf-8-sig").split("\n")
        except UnicodeDecodeError as e:
            raise DatasetLayoutError(f"split file is not valid UTF-8: {txt}") from e
    elif pkl.is_file():
        source, raw = pkl, safe_load_pickle(pkl)
    else:
        raise DatasetLayoutError(f"split {split!r} not found: expected {txt} or {pkl}")
    ids = [_strip_image_ext(str(x).strip()) for x in raw]
    ids = [i for i in ids if i]
    if len(set(ids)) != len(ids):
        raise DatasetLayoutError(f"{source}: duplicate ids in split {split!r}")
    return ids


# --------------------------------------------------------------------------- images


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        # Palette transparency only survives via RGBA; compositing below handles it.
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        if img.mode == "RGB":
            return img
    if img.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        # Transparent pixels hold arbitrary colour (often black); show them on white.
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode.startswith("I") or img.mode == "F":
        # Pillow's I->RGB clips at 255, turning 16-bit images white; rescale instead.
        arr = np.asarray(img, dtype=np.float64)
        scale = 257.0 if img.mode.startswith("I;16") or arr.max() > 255 else 1.0
        arr = np.clip(np.round(arr / scale), 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, ...


def load_image(path: str | Path, image_size: int) -> tuple[Image.Image, bool]:
    """Load any image as an ``image_size`` x ``image_size`` RGB ``PIL.Image``.

    The shorter side is resized to ``image_size`` (LANCZOS, antialiased) and the
    centre is cropped. Returns ``(image, upscaled)``; ``upscaled`` is True when the
    source's shorter side was smaller than ``image_size`` (blurry training data).
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            upscaled = min(img.size) < image_size
            if img.format == "JPEG":
                # DCT-domain downscaling makes 1024px CelebA-HQ decodes ~several x faster;
                # keeping >= 2x the target leaves the real antialiasing to LANCZOS below.
                img.draft(None, (2 * image_size, 2 * image_size))
            img.load()  # force the full decode so truncated files fail here, not later
            img = ImageOps.exif_transpose(img)
            rgb = _to_rgb(img)
    except FileNotFoundError as e:
        raise DatasetLayoutError(f"image not found: {path}") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # PIL signals corrupt/truncated data with OSError (UnidentifiedImageError is one)
        # and occasionally SyntaxError/ValueError from format plugins.
        raise DatasetLayoutError(f"corrupt or unreadable image: {path} ({e})") from e

    w, h = rgb.size
    scale = image_size / min(w, h)
    new_w, new_h = max(image_size, round(w * scale)), max(image_size, round(h * scale))
    if (new_w, new_h) != (w, h):
        rgb = rgb.resize((new_w, new_h), Image.Resampling.LANCZOS)
    left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
    return rgb.crop((left, top, left + image_size, top + image_size)), upscaled


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class CelebALayout:
    """Paths and integrity checks for one dataset root (see module docstring)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def image_dir(self) -> Path:
        return self.root / IMAGE_DIR

    @property
    def caption_dir(self) -> Path:
        return self.root / CAPTION_DIR

    @property
    def attribute_path(self) -> Path:
        return self.root / ATTRIBUTE_FILE

    def _find_image(self, item_id: str) -> Path | None:
        for ext in IMAGE_EXTENSIONS:
            for e in (ext, ext.upper()):
                p = self.image_dir / f"{item_id}{e}"
                if p.is_file():
                    return p
        return None

    def image_path(self, item_id: str) -> Path:
        """Path of the image for ``item_id``, whichever of IMAGE_EXTENSIONS exists."""
        p = self._find_image(item_id)
        if p is None:
            raise DatasetLayoutError(
                f"no image for id {item_id!r}: expected {self.image_dir / item_id}"
                f"{{{','.join(IMAGE_EXTENSIONS)}}}"
            )
        return p

    def caption_path(self, item_id: str) -> Path:
        return self.caption_dir / f"{item_id}.txt"

    def split_ids(self, split: str) -> list[str]:
        return read_split(self.root, split)

    def check(self, splits: Sequence[str] = ("train", "test")) -> None:
        """Raise DatasetLayoutError listing every missing top-level entry (cheap: no per-id I/O)."""
        if not self.root.is_dir():
            raise DatasetLayoutError(f"dataset root not found: {self.root}\n{EXPECTED_LAYOUT}")
        missing = [p for p in (self.image_dir, self.caption_dir) if not p.is_dir()]
        if not self.attribute_path.is_file():
            missing.append(self.attribute_path)
        for s in splits:
            if not (self.root / f"{s}.txt").is_file() and not (self.root / f"{s}.pickle").is_file():
                missing.append(self.root / f"{s}.txt (or {s}.pickle)")
        if missing:
            listed = "\n".join(f"  missing: {p}" for p in missing)
            raise DatasetLayoutError(f"{self.root} does not look like a dataset root:\n{listed}\n{EXPECTED_LAYOUT}")

    def collect(self, split: str, on_missing: str = "error") -> list[str]:
        """Ids of ``split`` that have an image and a non-empty, readable caption file.

        ``on_missing="error"`` raises one DatasetLayoutError summarising all problems;
        ``"skip"`` drops the bad ids and emits a single warning with the count.
        """
        if on_missing not in ("error", "skip"):
            raise ValueError(f"on_missing must be one of 'error', 'skip'; got {on_missing!r}")
        self.check(splits=(split,))
        good: list[str] = []
        problems: list[str] = []
        for item_id in self.split_ids(split):
            ok = True
            if self._find_image(item_id) is None:
                problems.append(f"missing image {self.image_dir / item_id}.{{jpg,jpeg,png}}")
                ok = False
            try:
                read_captions(self.caption_path(item_id))
            except DatasetLayoutError as e:
                problems.append(str(e))
                ok = False
            if ok:
                good.append(item_id)
        if problems:
            shown = "\n".join(f"  {p}" for p in problems[:_MAX_NAMED])
            more = f"\n  ... and {len(problems) - _MAX_NAMED} more" if len(problems) > _MAX_NAMED else ""
            msg = f"{len(problems)} problem(s) in split {split!r} of {self.root}:\n{shown}{more}"
            if on_missing == "error":
                raise DatasetLayoutError(msg)
            warnings.warn(f"skipping {len(problems)} problem(s) ({len(good)} ids kept): {msg}", stacklevel=2)
        return good
