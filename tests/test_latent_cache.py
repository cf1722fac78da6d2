"""The latent cache: built once, reused, rebuilt when stale or truncated, resumable after a kill."""
from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from diffusers import VQModel

from conftest import IMAGE_SIZE, tiny_vq
from fake_celebahq import one_thread  # noqa: F401  (autouse fixture)
from text_ldm.data.celeba_layout import IMAGE_DIR, read_split
from text_ldm.data.datamodule import CelebADataModule
from text_ldm.data.image_dataset import ImageDataset
from text_ldm.data.latent_cache import LATENTS, MANIFEST, LatentCache, build_latent_cache
from text_ldm.models.autoencoder import FrozenAutoencoder


def _autoencoder(scale: float = 0.5) -> FrozenAutoencoder:
    return FrozenAutoencoder(tiny_vq(), "vq", scale)


def _dataset(toy_root) -> ImageDataset:
    return ImageDataset(toy_root, read_split(toy_root, "train"), IMAGE_SIZE)


def _digest(cache: LatentCache) -> str:
    return hashlib.sha256(np.ascontiguousarray(cache.latents).tobytes()).hexdigest()


def test_cache_matches_direct_encoding_and_records_manifest(tmp_path, toy_root):
    dataset, ae = _dataset(toy_root), _autoencoder()
    cache = build_latent_cache(dataset, ae, tmp_path, "train", batch_size=5, progress=False)
    direct = ae.encode(torch.stack([dataset[i]["image"] for i in range(len(dataset))]))
    assert cache.latents.shape == (32, 3, IMAGE_SIZE // 4, IMAGE_SIZE // 4)
    np.testing.assert_allclose(cache.latents, direct.numpy(), rtol=1e-5, atol=1e-5)
    assert cache.ids == dataset.ids
    assert cache.manifest["scaling_factor"] == 0.5
    assert cache.manifest["image_size"] == IMAGE_SIZE


def test_cache_is_reused_without_encoding(tmp_path, toy_root, monkeypatch):
    dataset = _dataset(toy_root)
    first = build_latent_cache(dataset, _autoencoder(), tmp_path, "train", progress=False)
    calls = []
    ae = _autoencoder()
    monkeypatch.setattr(ae, "encode", lambda images: calls.append(1))
    second = build_latent_cache(dataset, ae, tmp_path, "train", progress=False)
    assert calls == [] and second.path == first.path


@pytest.mark.parametrize("change", ["scale", "weights", "image_size", "ids", "vae", "encode_dtype"])
def test_stale_cache_is_never_used(tmp_path, toy_root, change):
    dataset, ae = _dataset(toy_root), _autoencoder()
    old = build_latent_cache(dataset, ae, tmp_path, "train", progress=False)
    if change == "scale":
        ae = _autoencoder(scale=0.25)
    elif change == "vae":  # another VAE choice: pixel space
        ae = FrozenAutoencoder(None, "identity", 0.5)
    elif change == "encode_dtype":
        ae = FrozenAutoencoder(tiny_vq(), "vq", 0.5, encode_dtype="bfloat16")
    elif change == "weights":
        with torch.no_grad():
            next(ae.model.parameters()).add_(0.01)
    elif change == "image_size":
        dataset = ImageDataset(toy_root, dataset.ids, IMAGE_SIZE * 2)
    else:
        dataset = ImageDataset(toy_root, dataset.ids[:-1], IMAGE_SIZE)
    new = build_latent_cache(dataset, ae, tmp_path, "train", progress=False)
    assert new.path != old.path and old.path.exists()  # a new cache, the old one untouched
    direct = ae.encode(torch.stack([dataset[i]["image"] for i in range(len(dataset))]))
    np.testing.assert_allclose(new.latents, direct.numpy(), rtol=1e-5, atol=1e-5)
    if change == "encode_dtype":  # bf16 latents are close to float32 ones, but not the same bytes
        assert not np.array_equal(new.latents, old.latents)
        np.testing.assert_allclose(new.latents, old.latents, atol=0.05 * float(np.abs(old.latents).max()))


def test_truncated_cache_is_detected_and_rebuilt(tmp_path, toy_root):
    dataset, ae = _dataset(toy_root), _autoencoder()
    good = build_latent_cache(dataset, ae, tmp_path, "train", progress=False)
    expected = _digest(good)
    path = good.path / LATENTS
    del good
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    rebuilt = build_latent_cache(dataset, ae, tmp_path, "train", progress=False)
    assert _digest(rebuilt) == expected


def test_interrupted_build_resumes_to_identical_cache(tmp_path, toy_root):
    dataset, ae = _dataset(toy_root), _autoencoder()
    reference = _digest(build_latent_cache(dataset, ae, tmp_path / "straight", "train", batch_size=4, progress=False))

    class Crash(RuntimeError):
        pass

    encoded = []
    real_encode = ae.encode

    def encode_then_crash(images):
        if len(encoded) == 3:
            raise Crash("simulated kill")
        encoded.append(len(images))
        return real_encode(images)

    ae.encode = encode_then_crash
    with pytest.raises(Crash):
        build_latent_cache(dataset, ae, tmp_path / "resumed", "train", batch_size=4, progress=False)
    partial = next((tmp_path / "resumed").glob("*.partial"))
    assert not (partial / MANIFEST).exists()
    ae.encode = lambda images: encoded.append(len(images)) or real_encode(images)
    resumed = build_latent_cache(dataset, ae, tmp_path / "resumed", "train", batch_size=4, progress=False)
    assert sum(encoded) == len(dataset)  # the rerun encoded only what the crash left undone
    assert _digest(resumed) == reference


def test_decoding_workers_give_the_same_bytes(tmp_path, toy_root):
    dataset, ae = _dataset(toy_root), _autoencoder()
    serial = build_latent_cache(dataset, ae, tmp_path / "serial", "train", batch_size=8, progress=False)
    parallel = build_latent_cache(dataset, ae, tmp_path / "parallel", "train", batch_size=8, progress=False,
                                  num_workers=2)
    assert _digest(parallel) == _digest(serial)


CHILD = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[5]))  # the parent's, so both compute the same bits
from text_ldm.data.celeba_layout import IMAGE_DIR, read_split
from text_ldm.data.datamodule import CelebADataModule
from text_ldm.data.image_dataset import ImageDataset
from text_ldm.data.latent_cache import build_latent_cache
from text_ldm.models.autoencoder import FrozenAutoencoder
root, vq_dir, cache_root, delay = sys.argv[1:5]
ae = FrozenAutoencoder.from_pretrained(vq_dir, kind="vq")
encode, encoded = ae.encode, []
# a slow GPU: time to kill it mid-way, or for a second process to collide with it
ae.encode = lambda images: encoded.append(len(images)) or time.sleep(float(delay)) or encode(images)
build_latent_cache(ImageDataset(root, read_split(root, "train"), %d), ae, cache_root, "train", batch_size=4,
                   progress=False)
print("encoded", sum(encoded))
""" % IMAGE_SIZE


def _file_hashes(cache: LatentCache) -> dict[str, str]:
    return {name: hashlib.sha256((cache.path / name).read_bytes()).hexdigest() for name in (LATENTS, MANIFEST)}


def test_sigkill_during_caching_then_rerun_gives_identical_files(tmp_path, toy_root, tiny_vq_dir):
    """A real process is SIGKILLed half-way through caching; the rerun encodes only the
    rest, and latents.npy and manifest.json hash the same as an uninterrupted build's."""
    cache_root = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(toy_root), str(tiny_vq_dir), str(cache_root), "0.4",
                              str(torch.get_num_threads())],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done, deadline = 0, time.monotonic() + 240
    while time.monotonic() < deadline and child.poll() is None:
        try:
            done = json.loads(next(cache_root.glob("*.partial/progress.json")).read_text())["done"]
        except (StopIteration, OSError, ValueError):
            done = 0
        if done >= 8:
            break
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL, child.stderr.read().decode()[-2000:]
    assert 8 <= done < 32, f"the child was not caught half-way (done={done})"
    # nothing looks finished (hidden: the lock and the images' digest memo)
    assert not [p for p in cache_root.iterdir() if not p.name.endswith(".partial") and not p.name.startswith(".")]

    ae = FrozenAutoencoder.from_pretrained(str(tiny_vq_dir), kind="vq")
    dataset = _dataset(toy_root)
    reference = build_latent_cache(dataset, ae, tmp_path / "straight", "train", batch_size=4, progress=False)
    encoded = []
    encode = ae.encode
    ae.encode = lambda images: encoded.append(len(images)) or encode(images)
    resumed = build_latent_cache(dataset, ae, cache_root, "train", batch_size=4, progress=False)
    assert 0 < sum(encoded) <= 32 - done  # continued where the killed run stopped
    assert _file_hashes(resumed) == _file_hashes(reference)


def test_two_processes_building_one_cache_at_once_share_it(tmp_path, toy_root, tiny_vq_dir):
    """Two jobs of a parallel sweep start on the same missing cache: both succeed, the images are
    encoded once, and the cache is byte-identical to a single process's."""
    cache_root = tmp_path / "shared"
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(toy_root), str(tiny_vq_dir), str(cache_root), "0.1",
                                  str(torch.get_num_threads())], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                for _ in range(2)]
    outputs = [child.communicate(timeout=240) for child in children]
    for child, (_, err) in zip(children, outputs):
        assert child.returncode == 0, err.decode()[-2000:]
    counts = sorted(int(out.decode().split("encoded")[-1]) for out, _ in outputs)
    assert counts == [0, 32]
    ae = FrozenAutoencoder.from_pretrained(str(tiny_vq_dir), kind="vq")
    reference = build_latent_cache(_dataset(toy_root), ae, tmp_path / "alone", "train", batch_size=4, progress=False)
    shared = build_latent_cache(_dataset(toy_root), ae, cache_root, "train", batch_size=4, progress=False)
    assert _file_hashes(shared) == _file_hashes(reference)


def test_a_new_build_names_the_older_caches_of_its_split(tmp_path, toy_root, capsys):
    dataset = _dataset(toy_root)
    old = build_latent_cache(dataset, _autoencoder(0.5), tmp_path, "train", progress=False)
    assert "other cache" not in capsys.readouterr().out
    new = build_latent_cache(dataset, _autoencoder(0.25), tmp_path, "train", progress=False)
    out = capsys.readouterr().out
    assert new.path != old.path and old.path.exists()  # kept: another config may still use it
    assert "1 other cache(s) of split 'train'" in out and old.path.name in out


def test_autoencoder_fingerprint_does_not_depend_on_where_it_was_loaded_from(tmp_path, tiny_vq_dir):
    here = FrozenAutoencoder.from_pretrained(str(tiny_vq_dir), kind="vq").fingerprint()
    moved = tmp_path / "elsewhere" / "vq"
    shutil.copytree(tiny_vq_dir, moved, copy_function=shutil.copy)  # as `cp -r`: new path, new mtimes
    assert FrozenAutoencoder.from_pretrained(str(moved), kind="vq").fingerprint() == here
    assert FrozenAutoencoder.from_pretrained(str(moved), kind="vq", scaling_factor=0.25).fingerprint() != here
    model = VQModel.from_pretrained(moved)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    model.save_pretrained(moved)
    assert FrozenAutoencoder.from_pretrained(str(moved), kind="vq").fingerprint() != here


def _cache_names(checkout, **vae) -> list[str]:
    """prepare_data of a checkout's data, autoencoder and cache; the names of the caches it then holds."""
    autoencoder = {"_target_": "text_ldm.models.autoencoder.FrozenAutoencoder.from_pretrained",
                   "pretrained": str(checkout / "artifacts" / "vq"), "kind": "vq", **vae}
    CelebADataModule(root=str(checkout / "data" / "toy_faces"), image_size=IMAGE_SIZE, cache_dir=str(checkout / "cache"),
                     autoencoder=autoencoder).prepare_data()
    return sorted(p.name for p in (checkout / "cache").iterdir() if not p.name.startswith("."))


def test_a_copied_or_moved_checkout_finds_its_latent_cache(tmp_path, toy_root, tiny_vq_dir):
    first = tmp_path / "first"
    shutil.copytree(toy_root, first / "data" / "toy_faces")
    shutil.copytree(tiny_vq_dir, first / "artifacts" / "vq")
    built = _cache_names(first)
    assert [name.split("-")[0] for name in built] == ["test", "train"]
    copied = tmp_path / "copied"
    shutil.copytree(first, copied, copy_function=shutil.copy)  # as `cp -r`: every path and mtime new
    assert _cache_names(copied) == built
    moved = tmp_path / "moved"
    shutil.move(copied, moved)
    assert _cache_names(moved) == built
    # What the latents depend on still counts: the scale, and an image's content under the same id.
    rescaled = _cache_names(moved, scaling_factor=0.25)
    assert len(set(rescaled) - set(built)) == 2
    images = moved / "data" / "toy_faces" / IMAGE_DIR
    shutil.copy(images / "1.png", images / "0.png")
    assert [name.split("-")[0] for name in set(_cache_names(moved)) - set(rescaled)] == ["train"]


def test_prepare_data_encodes_on_every_core_and_puts_the_threads_back(tmp_path, toy_root, tiny_vq_dir, monkeypatch):
    """Under DDP prepare_data runs on one process while the others wait: with num_threads=1 per process the cache
    would be built on one core of several."""
    from text_ldm.data import datamodule as dm
    from text_ldm.utils.cpu import usable_cores

    if usable_cores() < 2:
        pytest.skip("needs two cores")
    threads_seen, build = [], dm.build_latent_cache

    def recording_build(*args, **kwargs):
        threads_seen.append(torch.get_num_threads())
        return build(*args, **kwargs)

    monkeypatch.setattr(dm, "build_latent_cache", recording_build)
    autoencoder = {"_target_": "text_ldm.models.autoencoder.FrozenAutoencoder.from_pretrained",
                   "pretrained": str(tiny_vq_dir), "kind": "vq"}
    session_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        CelebADataModule(root=str(toy_root), image_size=IMAGE_SIZE, cache_dir=str(tmp_path / "cache"),
                         autoencoder=autoencoder).prepare_data()
        assert threads_seen == [usable_cores()] * 2  # train and test
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(session_threads)  # the later tests keep the session's threads
