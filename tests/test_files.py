"""jasco_fast/_files.py: whole files or none, through locked temporaries (the audio writer's and the artifact
cache's one mechanism; tests/test_audio.py tests the stale-temporary sweep through audio_write)."""

from __future__ import annotations

import os

import pytest

from jasco_fast import _files


def test_atomic_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "manifest.json"
    target.write_bytes(b"old")
    _files.atomic_write(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert sorted(os.listdir(tmp_path)) == ["manifest.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / "out.wav"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="encoder failed"):
        with _files.replacing(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("encoder failed")
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["out.wav"]


def test_a_stale_temporary_goes_and_a_held_one_stays(tmp_path):
    target = tmp_path / "a.json"
    stale = tmp_path / ".a.json.0123456789ab.tmp"
    stale.write_bytes(b"left by a killed writer")
    live, fd = _files.open_temporary(target)  # another writer at work: its lock is held
    try:
        _files.atomic_write(target, b"x")
        assert not stale.exists() and live.exists()
    finally:
        os.close(fd)
        live.unlink()
    assert sorted(os.listdir(tmp_path)) == ["a.json"]


def test_the_lock_is_exclusive(tmp_path):
    lock = tmp_path / "sub" / "k.lock"
    with _files.locked(lock, blocking=True) as held:
        assert held
        with _files.locked(lock, blocking=False) as again:  # a second open file description: refused
            assert not again
    with _files.locked(lock, blocking=False) as held:
        assert held
