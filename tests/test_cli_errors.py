"""sample.py and evaluate.py refuse bad arguments in one `error:` line that names the key or path,
exit 1 and print no traceback (real subprocesses, as a person would run them), and refuse what a
config check can tell before torch is imported."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT

ZIP_MAGIC = b"PK\x03\x04"  # what torch.save writes first; enough for the checks that run before loading
TORCH_MARK = "torch imported at exit: "
# Runs the script as `python script args` would, then says on stderr whether torch was ever imported.
WRAPPER = f"""import atexit, runpy, sys
atexit.register(lambda: print({TORCH_MARK!r} + str('torch' in sys.modules), file=sys.stderr))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def run_cli(script: str, *args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-c", WRAPPER, str(ROOT / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def assert_one_error_line(result: subprocess.CompletedProcess, *named: str, before_torch: bool = True) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1, result.stderr[-3000:]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for text in named:
        assert text in errors[0], errors[0]
    if before_torch:
        assert f"{TORCH_MARK}False" in result.stderr, result.stderr[-3000:]
    return errors[0]


@pytest.fixture
def files(tmp_path):
    """A file that passes the cheap checkpoint check, a text file, a run dir holding last.ckpt, a directory."""
    fake = tmp_path / "fake.ckpt"
    fake.write_bytes(ZIP_MAGIC + b"\0" * 16)
    text = tmp_path / "notes.txt"
    text.write_text("hi\n")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(ZIP_MAGIC)
    folder = tmp_path / "folder"
    folder.mkdir()
    return {"fake": fake, "text": text, "run": run, "folder": folder, "tmp": tmp_path}


SAMPLE_CASES = {
    "missing ckpt": (["prompt=a face"], ["ckpt=PATH is required", "last.ckpt"]),
    "no prompt": (["ckpt={fake}"], ['prompt="..." or prompts_file=FILE']),
    "unknown sampler": (["ckpt={fake}", "prompt=a face", "sampler=dpm"], ["sampler='dpm' is unknown", "'dpmpp_2m'"]),
    "ckpt missing": (["ckpt={tmp}/none.ckpt", "prompt=a face"], ["ckpt={tmp}/none.ckpt does not exist"]),
    "guidance not a number": (["ckpt={fake}", "prompt=a face", "guidance_scale=abc"],
                              ["guidance_scale=abc must be a number"]),
    "steps not an integer": (["ckpt={fake}", "prompt=a face", "steps=many"], ["steps=many must be an integer"]),
    "seed null": (["ckpt={fake}", "prompt=a face", "seed=null"], ["seed=null must be an integer"]),
    "ckpt a run directory": (["ckpt={run}", "prompt=a face"],
                             ["ckpt={run} is a directory", "ckpt={run}/checkpoints/last.ckpt"]),
    "ckpt a text file": (["ckpt={text}", "prompt=a face"], ["{text} is not a text_ldm training checkpoint ("]),
    "init_image not an image": (["ckpt={fake}", "prompt=a face", "init_image={text}"],
                                ["init_image={text} is not a readable image"]),
    "prompts_file a directory": (["ckpt={fake}", "prompts_file={folder}"], ["prompts_file={folder} is a directory"]),
    "export_dir a file": (["ckpt={fake}", "export_dir={text}"], ["export_dir={text} is a file"]),
    "export_dir taken": (["ckpt={fake}", "export_dir={run}"], ["export_dir={run} already exists", "overwrite=true"]),
    "out_dir under a file": (["ckpt={fake}", "prompt=a face", "out_dir={text}/out"], ["out_dir={text}/out", "is a file"]),
}


@pytest.mark.parametrize("case", SAMPLE_CASES)
def test_sample_py_bad_input_is_one_line(files, case):
    args, named = SAMPLE_CASES[case]
    result = run_cli("sample.py", *[a.format(**files) for a in args], f"hydra.run.dir={files['tmp'] / 'hydra'}")
    assert_one_error_line(result, *[n.format(**files) for n in named])


def test_a_zip_that_is_not_a_checkpoint_is_one_line(files):
    """Past the cheap check, torch.load's multi-line complaint becomes the first line of one error."""
    result = run_cli("sample.py", f"ckpt={files['fake']}", "prompt=a face", f"hydra.run.dir={files['tmp'] / 'h'}")
    assert_one_error_line(result, f"{files['fake']} is not a text_ldm training checkpoint (", before_torch=False)


EVALUATE_CASES = {
    "missing ckpt": ([], ["ckpt=PATH is required"]),
    "n_prompts not an integer": (["ckpt={fake}", "n_prompts=ten"], ["n_prompts=ten must be an integer"]),
    "classifier lr not a number": (["ckpt={fake}", "classifier.lr=fast"], ["classifier.lr=fast must be a number"]),
    "ckpt a run directory": (["ckpt={run}"], ["ckpt={run} is a directory"]),
    "data_root missing": (["ckpt={fake}", "data_root={tmp}/nowhere"], ["data_root={tmp}/nowhere does not exist"]),
    "data_root not a dataset": (["ckpt={fake}", "data_root={folder}"],
                                ["data_root={folder} is not a CelebA-layout dataset root", "CelebA-HQ-img/"]),
}


@pytest.mark.parametrize("case", EVALUATE_CASES)
def test_evaluate_py_bad_input_is_one_line(files, case):
    args, named = EVALUATE_CASES[case]
    result = run_cli("evaluate.py", *[a.format(**files) for a in args], f"hydra.run.dir={files['tmp'] / 'hydra'}")
    assert_one_error_line(result, *[n.format(**files) for n in named])
