"""`python sample.py ...` as a person runs it, on a micro model trained here: typed prompts land
verbatim in samples.jsonl."""
from __future__ import annotations

import json

import pytest

from conftest import compose_config, tiny_train_overrides
from test_cli_errors import run_cli
from text_ldm.training import train


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, toy_root, tiny_vq_dir):
    tmp = tmp_path_factory.mktemp("micro")
    cfg = compose_config("train", tiny_train_overrides(tmp, toy_root, tiny_vq_dir) + ["callbacks.image_logger=null"])
    train(cfg)
    return tmp / "run" / "checkpoints" / "last.ckpt"


def _sample(tmp_path, ckpt, *args):
    out = tmp_path / "out"
    result = run_cli("sample.py", f"ckpt={ckpt}", "num_images_per_prompt=1", "steps=1", f"out_dir={out}",
                     f"hydra.run.dir={tmp_path / 'hydra'}", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in (out / "samples.jsonl").read_text(encoding="utf-8").splitlines()], result


@pytest.mark.parametrize("prompt,negative", [
    ("She has blond hair, and wears eyeglasses.", "She's frowning: no [hat], a=b"),
    ('Zoë — café, "quoted" ${not_an_interpolation} \\', "a {man|woman:0.3} | child:0.5"),
])
def test_typed_prompts_reach_samples_jsonl_verbatim(tmp_path, ckpt, prompt, negative):
    records, _ = _sample(tmp_path, ckpt, f"prompt={prompt}", f"negative_prompt={negative}")
    assert [(r["prompt"], r["negative_prompt"]) for r in records] == [(prompt, negative)]


def test_prompts_file_lines_and_hydra_quoted_prompts_are_verbatim(tmp_path, ckpt):
    lines = ["She has blond hair, and wears eyeglasses.", "She's smiling.", "Zoë — café: {a|b:0.3}"]
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    records, _ = _sample(tmp_path / "file", ckpt, f"prompts_file={path}", "negative_prompt=it's, a hat")
    assert [(r["prompt"], r["negative_prompt"]) for r in records] == [(line, "it's, a hat") for line in lines]
    # The quoting command lines written for Hydra already use keeps working.
    records, _ = _sample(tmp_path / "quoted", ckpt, 'prompt="This {man|woman:0.3} has blond hair."')
    assert records[0]["prompt"] == "This {man|woman:0.3} has blond hair."


def test_export_refuses_an_existing_folder_unless_overwrite(tmp_path, ckpt):
    from text_ldm.sampling.app import run

    target = tmp_path / "pipe"
    overrides = [f"ckpt={ckpt}", f"export_dir={target}", f"out_dir={tmp_path / 'out'}"]
    run(compose_config("sample", overrides))
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=f"export_dir={target} already exists and is not empty; add overwrite=true"):
        run(compose_config("sample", overrides))
    assert (target / "notes.txt").is_file()
    run(compose_config("sample", [*overrides, "overwrite=true"]))
    assert not (target / "notes.txt").exists() and (target / "model_index.json").is_file()
