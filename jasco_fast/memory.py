"""Reusing freed memory on the CPU instead of page-faulting it in again (glibc only).

A decode allocates activations of tens of megabytes (64 channels x 320 000 float32 samples is 82 MB for
10 s of audio). glibc serves every block above its mmap threshold (32 MB at most) with a fresh ``mmap`` and
unmaps it on ``free``, so every call page-faults each such buffer in again, 4 kB at a time, zeroed by the
kernel: measured 8 % of a 10 s float32 decode at 1 thread (docs/design/decode-cpu.md). ONNX Runtime and
OpenVINO keep their own memory arenas for the same reason.

:func:`reuse_freed_memory` asks glibc (``mallopt``) to serve large blocks from its heap (``M_MMAP_MAX = 0``)
and to keep up to :data:`KEPT_BYTES` of freed memory at the top of the heap (``M_TRIM_THRESHOLD``), so the
next call finds its buffers already mapped. It is process-wide: the resident size stays near the peak of the
largest decode (less what exceeds ``KEPT_BYTES``) instead of falling back between calls. So a library does
not decide it for its host: applications opt in with ``jasco_fast.reuse_freed_memory()``; the ``jasco-fast``
command, which owns its process, calls it at start. ``JASCO_FAST_MALLOC=system`` in the environment keeps
glibc's defaults even then.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import threading

__all__ = ["KEPT_BYTES", "reuse_freed_memory", "reusing_freed_memory"]

KEPT_BYTES = 1 << 30
_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_MAX = -4

_lock = threading.Lock()
_applied: bool | None = None


def reuse_freed_memory() -> bool:
    """Applies the settings above once per process; True when they are in effect (glibc, not opted out)."""
    global _applied
    with _lock:
        if _applied is None:
            _applied = _apply()
        return _applied


def reusing_freed_memory() -> bool:
    """Whether :func:`reuse_freed_memory` has taken effect in this process."""
    return bool(_applied)


def _apply() -> bool:
    if os.environ.get("JASCO_FAST_MALLOC", "").strip().lower() == "system":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; the trim threshold first, so a failure leaves mmap as it was
    return mallopt(_M_TRIM_THRESHOLD, KEPT_BYTES) == 1 and mallopt(_M_MMAP_MAX, 0) == 1
