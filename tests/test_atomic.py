import os

import pytest

from multikd.atomic import atomic_open, atomic_write_text


def test_atomic_write_replaces_whole_and_respects_umask(tmp_path):
    target = tmp_path / "deep" / "summary.json"
    atomic_write_text(target, "old")
    old_mask = os.umask(0o022)
    try:
        atomic_write_text(target, "new")
    finally:
        os.umask(old_mask)
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o644  # not mkstemp's owner-only 0600
    assert [p.name for p in target.parent.iterdir()] == ["summary.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "checkpoint.pt"
    atomic_write_text(target, "good")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as handle:
            handle.write(b"half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
