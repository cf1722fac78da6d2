"""`python sample.py ...` as a person runs it, on a micro model trained here: typed prompts land
verbatim in samples.jsonl, the progress bar counts denoising steps, warnings print on their own line."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, compose_config, tiny_train_overrides
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


# progress -----------------------------------------------------------------------------------------

def _visible_lines(stderr: str) -> list[str]:
    """What a terminal shows of each line: the text after its last carriage return (tqdm redraws with \\r)."""
    return [line.rsplit("\r", 1)[-1] for line in stderr.split("\n")]


def test_progress_counts_denoising_steps_of_all_batches(tmp_path, ckpt):
    _, result = _sample(tmp_path, ckpt, "prompt=a face", "num_images_per_prompt=2", "batch_size=1", "steps=5")
    assert re.search(r"denoising: 100%.* 10/10 .*batch 2/2", result.stderr), result.stderr[-2000:]
    assert "should be kept in float32" not in result.stderr


WARNING_WRAPPER = """import runpy, sys, warnings
from diffusers import UNet2DConditionModel
forward = UNet2DConditionModel.forward
def warning_forward(self, *args, **kwargs):
    warnings.warn("probe warning from the UNet")
    return forward(self, *args, **kwargs)
UNet2DConditionModel.forward = warning_forward
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_warning_while_sampling_prints_on_its_own_line(tmp_path, ckpt):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", WARNING_WRAPPER, str(ROOT / "sample.py"), f"ckpt={ckpt}",
                             "prompt=a face", "num_images_per_prompt=1", "steps=4", f"out_dir={tmp_path / 'out'}",
                             f"hydra.run.dir={tmp_path / 'hydra'}"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    shown = [line for line in _visible_lines(result.stderr) if "probe warning" in line]
    assert shown and all("UserWarning: probe warning" in line and "denoising" not in line for line in shown), \
        result.stderr[-2000:]
    assert re.search(r"denoising: 100%.* 4/4", result.stderr)


def test_evaluate_sampling_bar_counts_steps(ckpt, capsys):
    from text_ldm.evaluation.app import sample_images
    from text_ldm.models.components import DiffusionComponents

    model = DiffusionComponents.from_checkpoint(ckpt)
    images = sample_images(model, "ddim", ["a face"] * 3, [0, 1, 2], 2, 3.0, 2, "prompted")
    assert images.shape[0] == 3
    assert re.search(r"prompted: 100%.* 4/4 .*batch 2/2", capsys.readouterr().err)
