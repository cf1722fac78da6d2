"""Atomic writes: a failure mid-write leaves the previous file intact and no temporary behind."""
from __future__ import annotations

import pytest

from text_ldm.utils.atomic import atomic_path, atomic_write_text


def test_failed_write_keeps_previous_content(tmp_path):
    target = tmp_path / "sub" / "metrics.json"
    atomic_write_text(target, "old")
    with pytest.raises(OSError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-writ")
            raise OSError("No space left on device")
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
