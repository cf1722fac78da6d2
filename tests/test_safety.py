"""Nothing unsafe is loaded: a static check over every Python file we ship, plus the resume path."""
from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from text_ldm.utils.checkpoint_io import AtomicCheckpointIO

SHIPPED = [*ROOT.glob("*.py"), *(ROOT / "src").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]
# The one place allowed to unpickle: the MM-CelebA-HQ split files, through an allow-list unpickler.
RESTRICTED_UNPICKLER = ROOT / "src" / "text_ldm" / "data" / "celeba_layout.py"


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return ast.unparse(kw.value)
    return None


def test_torch_load_is_always_weights_only():
    offenders = [f"{p.relative_to(ROOT)}:{c.lineno}" for p in SHIPPED for c, name in _calls(p)
                 if name.endswith("torch.load") and _keyword(c, "weights_only") != "True"]
    assert not offenders, f"torch.load without weights_only=True: {offenders}"


def test_no_pickle_outside_the_restricted_unpickler():
    offenders = [f"{p.relative_to(ROOT)}:{c.lineno} {name}" for p in SHIPPED for c, name in _calls(p)
                 if p != RESTRICTED_UNPICKLER and (name in ("pickle.load", "pickle.loads", "pickle.Unpickler")
                                                   or _keyword(c, "allow_pickle") == "True")]
    assert not offenders, f"unrestricted unpickling: {offenders}"


def test_resume_loader_refuses_pickled_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        AtomicCheckpointIO().load_checkpoint(path)
