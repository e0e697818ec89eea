"""Files that are never seen half-written, shared by the audio writer and the artifact cache.

A writer creates a hidden temporary beside its target (``.<name>.<12 hex>.tmp``), holds an exclusive
``flock`` on it while writing, and ``os.replace``-s it onto the target. A temporary whose lock nobody holds
was left by a killed writer: the next write of the same target removes it, and nothing else. Where there is
no ``flock`` (not POSIX), temporaries are still unique and removed on failure, but a killed run's stay.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["atomic_write", "locked", "open_temporary", "replacing"]

logger = logging.getLogger(__name__)

try_lock: Callable[[int, bool], bool] | None
if os.name == "posix":
    import fcntl

    def try_lock(fd: int, block: bool) -> bool:
        """An exclusive flock on ``fd``; False if ``block`` is false and another holds it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
            return True
        except BlockingIOError:
            return False
else:
    try_lock = None


@contextlib.contextmanager
def locked(path: Path, blocking: bool) -> Iterator[bool]:
    """An exclusive flock on the lock file ``path`` (created if missing); yields False (holding nothing) if not
    ``blocking`` and another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        yield try_lock is None or try_lock(fd, blocking)  # no flock: nothing to hold
    finally:
        os.close(fd)  # releases the lock


def _remove_stale_temporaries(path: Path) -> None:
    """Remove what a killed run left while writing ``path``: temporaries of exactly this target whose lock
    nobody holds. A writer holds its temporary's lock until the rename, so a file being written right now, by
    this or another process, is never touched; nor is any other file."""
    if try_lock is None:
        return
    pattern = re.compile(r"\.%s\.[0-9a-f]{12}\.tmp" % re.escape(path.name))
    try:
        entries = [e for e in os.scandir(path.parent) if pattern.fullmatch(e.name) and e.is_file(follow_symlinks=False)]
    except OSError:
        return
    for entry in entries:
        try:
            fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            if try_lock(fd, False):
                os.unlink(entry.path)
                logger.info("removed %s, left behind by an interrupted write of %s", entry.path, path)
        except OSError:
            pass
        finally:
            os.close(fd)


def open_temporary(path: Path) -> tuple[Path, int]:
    """Create a hidden temporary beside ``path`` and hold its lock (removing stale ones of ``path`` first);
    returns (its path, the locked fd). Closing the fd releases the lock: close it after the rename."""
    _remove_stale_temporaries(path)
    for _ in range(100):
        candidate = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            # O_EXCL: a unique name even with concurrent writers; mode 0o666 so the final file gets
            # the usual umask-based permissions (mkstemp would give 0o600).
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        if try_lock is None:
            return candidate, fd
        try_lock(fd, True)
        try:
            # Another writer's stale-file sweep may have removed it before we held the lock.
            if os.stat(candidate).st_ino == os.fstat(fd).st_ino:
                return candidate, fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise FileExistsError(f"could not create a temporary file in {str(path.parent)!r}")


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yields a locked temporary's path to write in full; on success it replaces ``path`` (readers see the old
    file or the new one, never a part), on an exception it is removed."""
    tmp, fd = open_temporary(path)
    try:
        yield tmp
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        os.close(fd)  # releases the lock, after the rename


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` in one step (fsync-ed), through a locked temporary."""
    with replacing(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
