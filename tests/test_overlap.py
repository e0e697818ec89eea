"""jasco_fast.overlap: the bounded background writer (order, errors, nothing lost, real overlap) and the
host/device copies, on the CPU; tests/test_cuda.py runs the copies on a GPU."""

from __future__ import annotations

import queue
import threading

import pytest
import torch

from jasco_fast.overlap import HostCopy, Outcome, WriteQueue, to_device

WAIT = 30.0  # seconds a test waits for the other thread before failing (never reached when correct)


def test_jobs_are_written_in_order_and_every_outcome_comes_back_once():
    written = []
    outcomes = []
    with WriteQueue(written.append, depth=3) as writer:
        for job in range(50):
            writer.put(job)
            outcomes += writer.done()
        outcomes += writer.close()
    assert written == list(range(50))
    assert [o.job for o in outcomes] == list(range(50))
    assert all(o.error is None for o in outcomes)


def test_a_failing_write_is_reported_with_its_job_and_the_next_jobs_still_run():
    written = []

    def write(job):
        if job % 3 == 1:
            raise OSError(f"disk full at {job}")
        written.append(job)

    with WriteQueue(write) as writer:
        for job in range(7):
            writer.put(job)
        outcomes = writer.close()
    assert written == [0, 2, 3, 5, 6]
    failed = [o for o in outcomes if o.error is not None]
    assert [o.job for o in failed] == [1, 4]
    assert all(isinstance(o.error, OSError) and str(o.job) in str(o.error) for o in failed)
    assert [o.job for o in outcomes] == list(range(7))


def test_put_blocks_while_depth_jobs_wait():
    release = threading.Event()
    started = threading.Event()

    def write(job):
        started.set()
        assert release.wait(WAIT)

    writer = WriteQueue(write, depth=2)
    try:
        writer.put("being written")
        assert started.wait(WAIT)  # the thread holds the first job; two more may wait
        writer.put("waiting 1")
        writer.put("waiting 2")
        with pytest.raises(queue.Full):
            writer.put("one too many", timeout=0.05)
    finally:
        release.set()
        outcomes = writer.close()
    assert [o.job for o in outcomes] == ["being written", "waiting 1", "waiting 2"]


def test_writing_overlaps_the_next_decode():
    """The write of batch k waits until the caller has started on batch k + 1: only an overlapping
    writer finishes (a synchronous one would time out and fail the write)."""
    next_started = [threading.Event() for _ in range(4)]

    def write(k):
        if not next_started[k + 1].wait(WAIT):
            raise TimeoutError(f"batch {k + 1} was not started while batch {k} was written")

    with WriteQueue(write, depth=1) as writer:
        for k in range(3):
            next_started[k].set()  # "decoding" batch k
            writer.put(k)
        next_started[3].set()
        outcomes = writer.close()
    assert [(o.job, o.error) for o in outcomes] == [(0, None), (1, None), (2, None)]


def test_caller_failure_still_joins_the_writer_and_finishes_queued_jobs():
    written = []
    with pytest.raises(RuntimeError, match="decode failed"):
        with WriteQueue(written.append) as writer:
            writer.put("a")
            writer.put("b")
            raise RuntimeError("decode failed")
    assert written == ["a", "b"]
    with pytest.raises(RuntimeError, match="after close"):
        writer.put("c")


def test_bad_depth():
    with pytest.raises(ValueError, match="depth"):
        WriteQueue(print, depth=0)


def test_outcome_defaults_to_success():
    assert Outcome("job").error is None


def test_cpu_copies_are_no_ops():
    x = torch.randn(3, 4)
    assert to_device(x, "cpu") is x
    copy = HostCopy(x)
    assert copy.ready() and copy.result() is x
    assert to_device(x, torch.device("meta")).device.type == "meta"


# ------------------------------------------------------------------------------------------------
# The command line's use of it: decode k + 1 while k is written; a failed write fails its items alone


def test_cli_write_failure_fails_that_batch_alone(tmp_path, tiny_hf_checkpoint, monkeypatch, capsys):
    from jasco_fast import cli, decode_loop

    (tmp_path / "in").mkdir()
    files = []
    for i in range(5):
        files.append(tmp_path / "in" / f"item{i}.pt")
        torch.save(torch.randn(12 + i, 8), files[-1])  # distinct lengths: one item per batch
    real_write = decode_loop.write_batch
    threads = set()

    def write_batch(audio, paths, *args, **kwargs):
        threads.add(threading.current_thread().name)
        if any(p.endswith("item2") for p in paths):
            raise OSError("No space left on device")
        return real_write(audio, paths, *args, **kwargs)

    monkeypatch.setattr(decode_loop, "write_batch", write_batch)
    code = cli.main(
        [
            "decode",
            *map(str, files),
            "--out-dir",
            str(tmp_path / "out"),
            "--checkpoint",
            str(tiny_hf_checkpoint),
            "--backend",
            "eager",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"item{i}.wav" for i in (0, 1, 3, 4)]
    assert "writing item2: OSError: No space left on device" in captured.err
    assert "decoded 4 items" in captured.out and "1 failed" in captured.out
    assert threads == {"jasco-fast-writer"}  # written beside the decoding, not on the main thread
