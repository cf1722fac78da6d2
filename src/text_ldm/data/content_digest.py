"""The content of a dataset's image files as one digest that does not depend on where the dataset lies.

The latent cache is keyed on it (not on the root path or the files' mtimes): a dataset moved or copied
elsewhere finds its latents again, an image changed in place does not. Reading every byte of CelebA-HQ's
30k JPEGs takes seconds, on every rank, so the digest is memoised in `<memo_dir>/.content-digests.json`
under the files' (relative path, size, mtime, inode): an unchanged dataset costs one stat per file, and a
moved or copied one is read once.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from text_ldm.utils.atomic import atomic_write_text

MEMO = ".content-digests.json"
MEMO_ENTRIES = 64  # the (dataset, split) states seen last; an older one is only read again


def files_digest(root: str | Path, files: list[Path], memo_dir: str | Path) -> str:
    """sha256 over `files` in order: each one's path relative to `root` and the sha256 of its bytes."""
    root = Path(root)
    relative = [Path(f).relative_to(root).as_posix() for f in files]
    stats = [os.stat(f) for f in files]
    signature = hashlib.sha256("\n".join(f"{r}\t{s.st_size}\t{s.st_mtime_ns}\t{s.st_ino}"
                                         for r, s in zip(relative, stats)).encode()).hexdigest()
    memo_path = Path(memo_dir) / MEMO
    known = _read_memo(memo_path).get(signature)
    if known:
        return known
    digest = hashlib.sha256()
    for rel, path in zip(relative, files):
        with open(path, "rb") as handle:
            digest.update(f"{rel}\t{hashlib.file_digest(handle, 'sha256').hexdigest()}\n".encode())
    value = digest.hexdigest()
    memo = _read_memo(memo_path)  # read again: another process may have added its own entry meanwhile
    memo.pop(signature, None)
    memo[signature] = value
    atomic_write_text(memo_path, json.dumps(dict(list(memo.items())[-MEMO_ENTRIES:]), indent=0))
    return value


def _read_memo(path: Path) -> dict[str, str]:
    try:
        memo = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent or damaged: it is only a shortcut
        return {}
    return memo if isinstance(memo, dict) else {}
