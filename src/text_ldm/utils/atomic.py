"""Writes that a kill cannot leave half-done: write a temporary sibling, then rename over the target."""
from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path in the target's directory; on success it replaces `path` in one
    rename, on failure it is removed and `path` keeps its previous content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise OSError(err.errno, f"no space left on the device while writing {path}; nothing was replaced "
                                 f"(an earlier {path.name}, if any, is intact). Free space or write elsewhere.") from err
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_save_png(image, path: str | os.PathLike) -> None:
    """image: a PIL image."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
