"""Keeping the GPU busy while the host works: pinned, non-blocking copies in and out, and a bounded
background writer.

- :func:`to_device` sends host tensors to a GPU through page-locked (pinned) memory without blocking the
  host thread;
- :class:`HostCopy` starts a device-to-host copy into pinned memory on a side stream, so the copy
  runs beside the next batch's kernels; ``result()`` waits for it;
- :class:`WriteQueue` runs a write function on one background thread, in submission order, while the
  caller decodes the next batch; at most ``depth`` batches wait, so memory stays bounded, and every
  batch's outcome (done, or the exception its write raised) comes back to the caller.

On the CPU the copies are no-ops and the queue still overlaps writing with decoding.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["to_device", "HostCopy", "WriteQueue", "Outcome"]


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device``; host -> GPU through pinned memory, non-blocking for the host thread.

    The copy is queued on the device's current stream, so kernels queued after it on that stream see the
    data. A tensor already pinned is not copied again on the host.
    """
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    # The pinned staging buffer is returned to torch's caching host allocator when this function returns;
    # the allocator reuses it only after the copy has finished (it records an event on the copy's stream).
    return tensor.pin_memory().to(device, non_blocking=True)


class HostCopy:
    """A device tensor on its way to the host: ``HostCopy(audio)`` queues the copy, ``result()`` returns it.

    On CUDA the copy goes into pinned memory on a side stream that first waits for the current stream (so
    it copies finished values), and runs beside work queued on the current stream afterwards. CPU tensors
    are returned as they are.
    """

    _streams: dict[int, torch.cuda.Stream] = {}

    def __init__(self, tensor: torch.Tensor):
        if tensor.device.type != "cuda":
            self._host, self._done = tensor, None
            return
        index = tensor.device.index if tensor.device.index is not None else torch.cuda.current_device()
        side = self._streams.get(index)
        if side is None:
            side = self._streams[index] = torch.cuda.Stream(device=index)
        side.wait_stream(torch.cuda.current_stream(index))
        with torch.cuda.stream(side):
            self._host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self._host.copy_(tensor, non_blocking=True)
            self._done = torch.cuda.Event()
            self._done.record(side)
        # the caching allocator must not hand the source's memory to the next batch before the copy read it
        tensor.record_stream(side)

    def ready(self) -> bool:
        return self._done is None or self._done.query()

    def result(self) -> torch.Tensor:
        """The host tensor, once the copy has finished (waits for it, not for the whole device)."""
        if self._done is not None:
            self._done.synchronize()
            self._done = None
        return self._host


@dataclass
class Outcome:
    """What happened to one submitted job: ``error`` is None when its write succeeded."""

    job: Any
    error: BaseException | None = None


class WriteQueue:
    """Runs ``write(job)`` for each submitted job on one background thread, in submission order.

    ``put(job)`` blocks while ``depth`` jobs are already waiting (``timeout`` seconds at most, then
    ``queue.Full``); ``done()`` returns the outcomes finished so far; ``close()`` waits for every job
    and returns the remaining outcomes. Every job put comes back exactly once as an :class:`Outcome`,
    its write's exception included, and a failing job does not stop the ones after it. Use it as a
    context manager so the thread is joined even when the caller fails.
    """

    _STOP = object()

    def __init__(self, write: Callable[[Any], None], depth: int = 2):
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self._write = write
        self._jobs: queue.Queue = queue.Queue(maxsize=depth)
        self._outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="jasco-fast-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is self._STOP:
                return
            try:
                self._write(job)
                outcome = Outcome(job)
            except BaseException as exc:  # reported to the caller with its job; the next jobs still run, and
                outcome = Outcome(job, exc)  # the thread stays alive, so put() never waits on a dead writer
            with self._lock:
                self._outcomes.append(outcome)

    def put(self, job, timeout: float | None = None) -> None:
        if self._closed:
            raise RuntimeError("WriteQueue.put after close()")
        self._jobs.put(job, timeout=timeout)

    def done(self) -> list[Outcome]:
        """The outcomes finished since the last call, in submission order."""
        with self._lock:
            finished, self._outcomes = self._outcomes, []
        return finished

    def close(self) -> list[Outcome]:
        """Waits for every job put so far; returns the outcomes not yet returned by ``done()``."""
        if not self._closed:
            self._closed = True
            self._jobs.put(self._STOP)
            self._thread.join()
        return self.done()

    def __enter__(self) -> WriteQueue:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
