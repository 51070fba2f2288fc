"""Atomic writes: the target holds the old content or the new, never a partial file."""

from __future__ import annotations

import pytest

from asit.atomic import atomic_write


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as handle:
            handle.write("half of the new")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_a_completed_write_replaces_the_file_and_creates_folders(tmp_path):
    target = tmp_path / "a" / "b" / "weights.bin"
    with atomic_write(target) as handle:
        handle.write(b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert [p.name for p in target.parent.iterdir()] == ["weights.bin"]


def test_a_full_disk_says_no_space_left_in_the_folder_and_keeps_the_old_file(tmp_path, monkeypatch):
    import errno
    from collections import namedtuple

    from asit import atomic
    from asit.atomic import DiskFullError

    target = tmp_path / "checkpoint.pth"
    target.write_bytes(b"old")

    def no_space(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match=f"^no space left in {tmp_path} \\(writing checkpoint.pth\\)"):
        with atomic_write(target) as handle:
            monkeypatch.setattr(handle, "write", no_space)
            handle.write(b"new")
    # torch reports the same as a RuntimeError (a C++ assertion); the free space tells them apart.
    usage = namedtuple("usage", "total used free")
    real_disk_usage = atomic.shutil.disk_usage
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda _: usage(10, 10, 0))
    with pytest.raises(DiskFullError, match="no space left in"):
        with atomic_write(target) as handle:
            raise RuntimeError("[enforce fail at inline_container.cc:642] . PytorchStreamWriter failed writing file")
    monkeypatch.setattr(atomic.shutil, "disk_usage", real_disk_usage)
    with pytest.raises(RuntimeError, match="a bug"):  # with room to spare, another error stays itself
        with atomic_write(target) as handle:
            raise RuntimeError("a bug")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]
    assert str(pickle_round_trip(DiskFullError(tmp_path, "x"))) == str(DiskFullError(tmp_path, "x"))


def pickle_round_trip(obj):
    import pickle

    return pickle.loads(pickle.dumps(obj))
