"""Bad-input cases for data, through the real CelebADataModule on a fake CelebA-HQ folder
written here: every case ends in one message that names the file, or is handled (skip, convert,
upscale) with a count or a single warning."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from fake_celebahq import one_thread  # noqa: F401  (autouse fixture)
from fake_celebahq import write_fake_celebahq
from text_ldm.data.celeba_layout import IMAGE_DIR, DatasetLayoutError
from text_ldm.data.datamodule import CelebADataModule
from text_ldm.data.image_dataset import collate_skipping_corrupt, reset_upscale_warning, to_tensor
from text_ldm.data.latent_cache import LatentCache
from text_ldm.models.autoencoder import FrozenAutoencoder
from text_ldm.utils.cli import _unwrap_instantiation

SIZE = 32


def _dm(root, cache, vq_dir, **kwargs) -> CelebADataModule:
    autoencoder = {"_target_": "text_ldm.models.autoencoder.FrozenAutoencoder.from_pretrained",
                   "pretrained": str(vq_dir), "kind": "vq"}
    return CelebADataModule(root=str(root), image_size=SIZE, batch_size=2, cache_dir=str(cache),
                            autoencoder=autoencoder, cache_batch_size=3, **kwargs)


def _caches(cache_dir, split="train") -> list[LatentCache]:
    return [LatentCache.open(p) for p in sorted(cache_dir.glob(f"{split}-*")) if not p.name.endswith(".partial")]


@pytest.fixture
def root(tmp_path):
    return write_fake_celebahq(tmp_path / "CelebAMask-HQ")


def _record(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in caught]


def test_missing_data_dir_names_the_expected_layout(tmp_path, tiny_vq_dir):
    absent = tmp_path / "no-such-dir"
    with pytest.raises(DatasetLayoutError) as err:
        _dm(absent, tmp_path / "cache", tiny_vq_dir)  # at construction: before any model is loaded
    msg = str(err.value)
    assert f"dataset root not found: {absent}" in msg
    assert "Expected dataset layout" in msg and "CelebA-HQ-img/<id>.jpg" in msg and "celeba-caption/<id>.txt" in msg


def test_wrong_layout_lists_what_is_missing(root, tmp_path, tiny_vq_dir):
    # A common slip: pointing data_dir at the image folder itself.
    with pytest.raises(DatasetLayoutError) as err:
        _dm(root / IMAGE_DIR, tmp_path / "cache", tiny_vq_dir).prepare_data()
    msg = str(err.value)
    assert "does not look like a dataset root" in msg and "Expected dataset layout" in msg
    assert f"missing: {root / IMAGE_DIR / IMAGE_DIR}" in msg and "train.txt (or train.pickle)" in msg


def _break_captions_and_images(root) -> list[str]:
    (root / "celeba-caption" / "1.txt").unlink()
    (root / "celeba-caption" / "2.txt").write_text("\n   \n", encoding="utf-8")
    (root / IMAGE_DIR / "3.jpg").unlink()
    return [str(root / "celeba-caption" / "1.txt"), str(root / "celeba-caption" / "2.txt"), str(root / IMAGE_DIR / "3")]


def test_missing_or_empty_caption_and_missing_image_one_error_with_count(root, tmp_path, tiny_vq_dir):
    named = _break_captions_and_images(root)
    with pytest.raises(DatasetLayoutError) as err:
        _dm(root, tmp_path / "cache", tiny_vq_dir).prepare_data()
    msg = str(err.value)
    assert msg.startswith("3 problem(s) in split 'train'")
    assert all(path in msg for path in named)
    assert "caption file not found" in msg and "caption file is empty" in msg and "missing image" in msg
    assert _caches(tmp_path / "cache") == []  # nothing half-built is left looking usable


def test_skip_reports_the_count_and_keeps_the_rest(root, tmp_path, tiny_vq_dir):
    _break_captions_and_images(root)
    dm = _dm(root, tmp_path / "cache", tiny_vq_dir, on_missing="skip")
    messages = [m for m in _record(lambda: (dm.prepare_data(), dm.setup("fit"))) if "skipping" in m]
    assert len(messages) == 1 and messages[0].startswith("skipping 3 problem(s) (3 ids kept)")
    assert _caches(tmp_path / "cache")[0].ids == ["0", "4", "5"]
    assert len(dm.datasets["train"]) == 3


def test_caption_not_utf8_names_the_file(root, tmp_path, tiny_vq_dir):
    bad = root / "celeba-caption" / "4.txt"
    bad.write_bytes("une femme aux cheveux blonds, très souriante\n".encode("latin-1"))
    with pytest.raises(DatasetLayoutError, match="not valid UTF-8") as err:
        _dm(root, tmp_path / "cache", tiny_vq_dir).prepare_data()
    assert str(bad) in str(err.value) and "1 problem(s)" in str(err.value)


def _corrupt_two_images(root):
    truncated, garbage = root / IMAGE_DIR / "2.jpg", root / IMAGE_DIR / "4.jpg"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    garbage.write_bytes(b"this is not a jpeg")
    return truncated, garbage


def test_corrupt_image_error_names_the_file_and_the_way_out(root, tmp_path, tiny_vq_dir):
    truncated, _ = _corrupt_two_images(root)
    with pytest.raises(DatasetLayoutError) as err:
        _dm(root, tmp_path / "cache", tiny_vq_dir).prepare_data()
    msg = str(err.value)
    assert msg.startswith(f"corrupt or unreadable image: {truncated}") and "data.on_missing=skip" in msg
    assert _caches(tmp_path / "cache") == []


def test_corrupt_images_skipped_with_a_count_and_rows_kept_in_order(root, tmp_path, tiny_vq_dir):
    truncated, garbage = _corrupt_two_images(root)
    dm = _dm(root, tmp_path / "cache", tiny_vq_dir, on_missing="skip")
    messages = [m for m in _record(dm.prepare_data) if "corrupt" in m]
    assert len(messages) == 1 and messages[0].startswith("skipped 2 corrupt image(s) in split 'train' (4 kept")
    assert str(truncated) in messages[0] and str(garbage) in messages[0]
    cache = _caches(tmp_path / "cache")[0]
    assert cache.ids == ["0", "1", "3", "5"]
    assert [s["id"] for s in cache.manifest["skipped"]] == ["2", "4"]
    ae = FrozenAutoencoder.from_pretrained(str(tiny_vq_dir), kind="vq")
    images = torch.stack([to_tensor(Image.open(root / IMAGE_DIR / f"{i}.jpg").convert("RGB").resize((SIZE, SIZE),
                                                                                                   Image.LANCZOS))
                          for i in cache.ids])
    np.testing.assert_allclose(cache.latents, ae.encode(images).numpy(), atol=1e-5)  # compaction kept the mapping
    # The same cache is refused when data.on_missing=error: it would silently lack images.
    with pytest.raises(DatasetLayoutError, match="was built with data.on_missing=skip and leaves out 2"):
        _dm(root, tmp_path / "cache", tiny_vq_dir).prepare_data()


@pytest.mark.parametrize("mode, fmt, colour, expected", [
    ("L", "PNG", 200, (200, 200, 200)),
    ("RGBA", "PNG", (10, 200, 30, 255), (10, 200, 30)),
    ("CMYK", "JPEG", (0, 0, 0, 0), (255, 255, 255)),
    ("P", "PNG", None, (10, 200, 30)),
])
def test_any_mode_is_cached_as_its_rgb_version(root, tmp_path, tiny_vq_dir, mode, fmt, colour, expected):
    (root / IMAGE_DIR / "0.jpg").unlink()
    if mode == "P":
        image = Image.new("P", (48, 48), 0)
        image.putpalette([10, 200, 30] + [0, 0, 0] * 255)
    else:
        image = Image.new(mode, (48, 48), colour)
    image.save(root / IMAGE_DIR / ("0.png" if fmt == "PNG" else "0.jpg"), format=fmt)
    _dm(root, tmp_path / "cache", tiny_vq_dir).prepare_data()
    cache = _caches(tmp_path / "cache")[0]
    ae = FrozenAutoencoder.from_pretrained(str(tiny_vq_dir), kind="vq")
    rgb = torch.tensor(expected, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, SIZE, SIZE) / 127.5 - 1
    np.testing.assert_allclose(cache.latents[0], ae.encode(rgb)[0].numpy(), atol=2e-3)


def test_small_images_are_upscaled_with_one_warning_per_run(root, tmp_path, tiny_vq_dir):
    for path in (root / IMAGE_DIR).glob("*.jpg"):  # every image of both splits is smaller than 32 px
        Image.open(path).resize((20, 24)).save(path)
    reset_upscale_warning()
    dm = _dm(root, tmp_path / "cache", tiny_vq_dir)
    messages = [m for m in _record(lambda: (dm.prepare_data(), dm.setup("fit"))) if "upscaled" in m]
    assert len(messages) == 1 and "smaller than data.image_size=32" in messages[0]
    assert _caches(tmp_path / "cache")[0].latents.shape == (6, 3, SIZE // 4, SIZE // 4)


def test_entry_points_report_the_layout_error_in_one_message(tmp_path, capsys, monkeypatch):
    """Through Hydra's instantiate (which wraps it) and the entry points' report_errors: no traceback."""
    from hydra.utils import instantiate

    from text_ldm.utils.cli import report_errors

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    absent = tmp_path / "absent"

    @report_errors
    def main():
        instantiate({"_target_": "text_ldm.data.datamodule.CelebADataModule", "_recursive_": False,
                     "root": str(absent), "cache_dir": str(tmp_path), "autoencoder": {}})

    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: dataset root not found: {absent}\nExpected dataset layout") and "Traceback" not in err


def _image_batches(dm: CelebADataModule) -> tuple[list[str], list[str]]:
    """(ids served by one training epoch of mode=images, warning messages raised meanwhile)."""
    served = []
    messages = _record(lambda: served.extend(i for batch in dm.train_dataloader() for i in batch["id"]))
    return served, messages


def test_stage1_images_mode_skips_corrupt_images_with_one_warning_each(root, tmp_path):
    truncated, garbage = _corrupt_two_images(root)
    dm = CelebADataModule(root=str(root), image_size=SIZE, mode="images", batch_size=2, on_missing="skip")
    dm.prepare_data()
    dm.setup("fit")
    served, messages = _image_batches(dm)
    assert sorted(served) == ["0", "1", "3", "5"]  # 6 training ids, the two corrupt ones left out
    corrupt = [m for m in messages if "corrupt" in m]
    assert len(corrupt) == 2 and any(str(truncated) in m for m in corrupt) and any(str(garbage) in m for m in corrupt)
    served_again, messages = _image_batches(dm)
    assert sorted(served_again) == sorted(served) and not [m for m in messages if "corrupt" in m]  # once per file
    train = dm.datasets["train"]
    all_corrupt = collate_skipping_corrupt([train.load(train.ids.index(i)) for i in ("2", "4")])
    assert all_corrupt["image"].shape == (0, 3, SIZE, SIZE)  # the autoencoder skips such a step


def test_stage1_images_mode_corrupt_image_error_names_the_file(root, tmp_path):
    truncated, _ = _corrupt_two_images(root)
    dm = CelebADataModule(root=str(root), image_size=SIZE, mode="images", batch_size=2)
    dm.prepare_data()
    dm.setup("fit")
    with pytest.raises(DatasetLayoutError, match="data.on_missing=skip") as err:
        _image_batches(dm)
    assert "corrupt or unreadable image" in str(err.value)


# Small enough that a run which wrongly generates (and then trains) still ends soon.
_SMALL_TOY = ["data.toy.num_train=4", "data.toy.num_test=2", "data.image_size=16", "trainer.max_steps=1"]


@pytest.mark.parametrize("entry, typo", [("train", "paths.data_dir"), ("train", "data.root"),
                                         ("autoencoder", "paths.data_dir"), ("reconstruct", "data.root")])
def test_a_mistyped_root_is_not_filled_with_toy_faces(tmp_path, entry, typo):
    """train.py (stage 2 and --config-name autoencoder) and reconstruct fail on a path nobody asked to fill."""
    from conftest import compose_config

    from text_ldm.reconstruct import reconstruct
    from text_ldm.training import train

    typo_dir = tmp_path / "nonexistent"
    overrides = [f"paths.root_dir={tmp_path / 'project'}", f"{typo}={typo_dir}", *_SMALL_TOY]
    if entry == "reconstruct":
        overrides = [o for o in overrides if not o.startswith("trainer.")] + [f"out_dir={tmp_path / 'out'}"]
    else:
        overrides.append(f"paths.output_dir={tmp_path / 'run'}")
    cfg = compose_config(entry, overrides)
    with pytest.raises(Exception) as err:
        reconstruct(cfg) if entry == "reconstruct" else train(cfg)
    default = tmp_path / "project" / "data" / "toy_faces"
    assert str(_unwrap_instantiation(err.value)).startswith(
        f"dataset root not found: {cfg.data.root} (toy faces are generated only at {default} or with data.generate=true)")
    assert not typo_dir.exists() and not (tmp_path / "project").exists()


def test_toy_faces_are_generated_in_their_default_place_or_where_asked(tmp_path):
    from hydra.utils import instantiate

    from conftest import compose_config

    def images_at(overrides):
        cfg = compose_config("autoencoder", [f"paths.root_dir={tmp_path}", *_SMALL_TOY, *overrides])
        instantiate(cfg.data).prepare_data()

    images_at([])  # the default: what `make demo` and a plain `python train.py` rely on
    assert len(list((tmp_path / "data" / "toy_faces" / IMAGE_DIR).glob("*.png"))) == 6
    images_at([f"paths.data_dir={tmp_path / 'elsewhere'}", "data.generate=true"])
    assert len(list((tmp_path / "elsewhere" / "toy_faces" / IMAGE_DIR).glob("*.png"))) == 6
    images_at([f"data.root={tmp_path / 'elsewhere' / 'toy_faces'}"])  # an existing toy dataset is reused anywhere
    with pytest.raises(Exception, match="dataset root not found"):
        images_at([f"paths.root_dir={tmp_path / 'fresh'}", "data.generate=false"])
    with pytest.raises(Exception, match="data.generate=true needs data.toy"):
        images_at(["data.toy=null", "data.generate=true"])

