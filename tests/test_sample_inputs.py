"""sample.py refuses bad input with a message that names the problem, before loading anything."""
from __future__ import annotations

import pytest

from conftest import compose_config
from text_ldm.sampling.app import sample


def _cfg(tmp_path, *overrides):
    return compose_config("sample", [f"out_dir={tmp_path / 'out'}", *overrides])


@pytest.mark.parametrize("override,message", [
    ("steps=0", "steps=0 must be >= 1"),
    ("guidance_scale=-1", "guidance_scale=-1 must be >= 0"),
    ("guidance_rescale=1.5", r"guidance_rescale=1.5 must be in \[0, 1\]"),
    ("guidance_interval=[800,200]", r"guidance_interval=\[800, 200\] must be \[t_lo, t_hi\]"),
    ("guidance_interval=[100]", r"guidance_interval=\[100\] must be \[t_lo, t_hi\]"),
    ("guidance_interval=500", r"guidance_interval=\[500\] must be \[t_lo, t_hi\]"),
    ("num_images_per_prompt=0", "num_images_per_prompt=0 must be >= 1"),
    ("strength=1.5", r"strength=1.5 must be in \[0, 1\]"),
    ("strength=-0.1", r"strength=-0.1 must be in \[0, 1\]"),
    ("trajectory_every=0", "trajectory_every=0 must be >= 1"),
    ("precision=fp8", "precision=fp8 must be one of"),
    ("mode=backward", "mode=backward must be one of"),
])
def test_invalid_numbers(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        sample(_cfg(tmp_path, "ckpt=unused.ckpt", "prompt=a face", override))
    assert not (tmp_path / "out").exists()


def test_prompt_xor_prompts_file(tmp_path):
    with pytest.raises(ValueError, match="exactly one of"):
        sample(_cfg(tmp_path, "ckpt=unused.ckpt"))
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match="holds no prompts"):
        sample(_cfg(tmp_path, "ckpt=unused.ckpt", f"prompts_file={empty}"))


def test_missing_or_invalid_checkpoint_is_named(tmp_path):
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        sample(_cfg(tmp_path, f"ckpt={missing}", "prompt=a face"))
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.ckpt is not a text_ldm training checkpoint"):
        sample(_cfg(tmp_path, f"ckpt={junk}", "prompt=a face"))


def test_missing_init_image_is_named(tmp_path):
    missing = tmp_path / "face.png"
    with pytest.raises(FileNotFoundError, match=f"init_image={missing} does not exist"):
        sample(_cfg(tmp_path, "ckpt=unused.ckpt", "prompt=a face", f"init_image={missing}"))
    assert not (tmp_path / "out").exists()
