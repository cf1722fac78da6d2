"""The package's import direction follows the data path: data -> models -> lit (training);
models -> sampling -> evaluation. Sampling and evaluation rebuild models from checkpoints alone,
so they never import the training module; the exported pipeline file imports nothing of ours."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "src" / "text_ldm"
# package -> the text_ldm packages it must not import
FORBIDDEN = {
    "data": ("models", "lit", "sampling", "evaluation", "callbacks"),  # TYPE_CHECKING-only imports are skipped
    "models": ("data", "lit", "sampling", "evaluation", "callbacks"),
    "sampling": ("data", "lit", "evaluation", "callbacks"),
    "evaluation": ("lit", "callbacks"),
}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):  # `if TYPE_CHECKING:` blocks are type hints, not dependencies
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            node.body = []
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_follow_the_data_path(package):
    offenders = [f"{path.relative_to(ROOT)} imports {name}" for path in sorted((PACKAGE / package).rglob("*.py"))
                 for name in _imports(path)
                 if any(name == f"text_ldm.{bad}" or name.startswith(f"text_ldm.{bad}.") for bad in FORBIDDEN[package])]
    assert not offenders, offenders


def test_exported_pipeline_file_is_self_contained():
    path = PACKAGE / "sampling" / "diffusers_pipeline.py"
    assert not [name for name in _imports(path) if name.split(".")[0] == "text_ldm"]
