"""Atomic replacement of files: unpredictable exclusive temporaries, no symlink followed, stale
temporaries removed by pattern and age in our own folder only."""

from __future__ import annotations

import errno
import os
import stat
import time

import pytest

from livereduce.atomic import (
    copy_into,
    link_atomically,
    remove_stale_temporaries,
    temporary_for,
    write_atomically,
)


def test_a_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "status.json"
    write_atomically(target, lambda p: p.write_text("one"))
    write_atomically(target, lambda p: p.write_text("two"))
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["status.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / "result.h5"
    target.write_text("old")

    def fail(path):
        path.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.h5"]


def test_temporaries_are_unpredictable_exclusive_and_get_the_umask_permissions(tmp_path):
    target = tmp_path / "result.h5"
    first, second = temporary_for(target), temporary_for(target)
    assert first != second
    assert first.name.startswith(".result.h5.")
    assert first.name.endswith(".tmp")
    assert first.name != f".result.h5.{os.getpid()}.tmp"
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(first.stat().st_mode) == 0o666 & ~umask


def test_a_symlink_planted_in_the_folder_is_not_written_through(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    folder = tmp_path / "out"
    folder.mkdir()
    # whatever name a predictable writer would use, a link there is left alone
    (folder / f".result.h5.{os.getpid()}.tmp").symlink_to(victim)
    write_atomically(folder / "result.h5", lambda p: p.write_text("data"))
    assert victim.read_text() == "keep me"
    assert (folder / "result.h5").read_text() == "data"


def test_link_atomically_keeps_a_copy_the_next_write_leaves_alone(tmp_path):
    target = tmp_path / "result.h5"
    write_atomically(target, lambda p: p.write_text("run 7"))
    link_atomically(target, tmp_path / "result_7.h5")
    write_atomically(target, lambda p: p.write_text("run 8"))
    assert (tmp_path / "result_7.h5").read_text() == "run 7"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.h5", "result_7.h5"]


def test_stale_temporaries_go_by_pattern_and_age_only_in_the_folder(tmp_path):
    now = time.time()
    below = tmp_path / "below"
    below.mkdir()
    names = {".result.h5.a.tmp": 3600, ".result.h5.b.tmp": 5, ".status.json.c.tmp": 3600}
    for name, age in names.items():
        for folder in (tmp_path, below):
            (folder / name).write_text("x")
            os.utime(folder / name, (now - age, now - age))
    link = tmp_path / ".result.h5.link.tmp"
    link.symlink_to(below / ".result.h5.a.tmp")
    removed = remove_stale_temporaries(tmp_path, ".result*.h5.*.tmp", now_s=now)
    assert removed == [tmp_path / ".result.h5.a.tmp"]
    assert sorted(p.name for p in below.iterdir()) == sorted(names)
    assert link.is_symlink()


def test_copy_into_copies_the_bytes_and_never_writes_through_a_link(tmp_path):
    source = tmp_path / "source"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    target = temporary_for(tmp_path / "target")
    copy_into(source, target)
    assert target.read_bytes() == source.read_bytes()
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    planted = tmp_path / "planted"
    planted.symlink_to(victim)
    with pytest.raises(OSError, match="symbolic links"):
        copy_into(source, planted)
    assert victim.read_bytes() == b"keep me"


def test_copy_into_falls_back_to_a_plain_copy_where_the_kernel_refuses(tmp_path, monkeypatch):
    def refuse(*_args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    source = tmp_path / "source"
    source.write_bytes(os.urandom(100_000))
    target = temporary_for(tmp_path / "target")
    copy_into(source, target)
    assert target.read_bytes() == source.read_bytes()
