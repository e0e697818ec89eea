"""jasco_fast.backends and jasco_fast.runner: the backend choice (backend= / mode=), and the chunk runner driving
any backend: which window each call gets, one pass or chunks, empty batches, deferred work, checks."""

from __future__ import annotations

import contextlib

import pytest
import torch

from jasco_fast import DecoderConfig, LatentDecoder, SEANetDecoder
from jasco_fast.backends import AOT_MAX_BATCH, AotBackend, EagerBackend, InductorBackend, make_backend, resolve_backend
from jasco_fast.runner import ChunkRunner

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    "backend, mode, device, aot, want",
    [
        (None, None, CPU, True, "aot"),  # the CPU's default: the artifacts
        (None, None, CUDA, True, "inductor"),  # elsewhere torch.compile
        (None, "default", CPU, True, "inductor"),  # a torch.compile mode asks for torch.compile
        (None, None, CPU, False, "inductor"),  # no artifact recipe (CodeDecoder)
        ("eager", None, CPU, True, "eager"),
        ("inductor", "reduce-overhead", CUDA, True, "inductor"),
        ("aot", None, CUDA, True, "aot"),
    ],
)
def test_resolve_backend(backend, mode, device, aot, want):
    assert resolve_backend(backend, mode, device, aot=aot) == want


@pytest.mark.parametrize(
    "backend, mode, aot, message",
    [
        ("torch.compile", None, True, "backend must be None"),
        (False, None, True, "backend must be None"),
        ("eager", "default", True, "mode is a torch.compile mode"),
        ("aot", "default", True, "mode is a torch.compile mode"),
        ("aot", None, False, "backend='aot' is not available"),
    ],
)
def test_resolve_backend_refuses(backend, mode, aot, message):
    with pytest.raises(ValueError, match=message):
        resolve_backend(backend, mode, CPU, aot=aot)


def tiny_decoder() -> SEANetDecoder:
    torch.manual_seed(0)
    return SEANetDecoder(DecoderConfig(dimension=8, n_filters=4, ratios=(4, 2), lstm=1)).eval()


def test_make_backend_names():
    fast = LatentDecoder(tiny_decoder(), backend="eager", background_build=False)
    kinds = {"eager": EagerBackend, "inductor": InductorBackend, "aot": AotBackend}
    for name, kind in kinds.items():
        backend = make_backend(name, fast, background_build=False)
        assert type(backend) is kind and backend.name == name
    with pytest.raises(ValueError, match="backend must be one of"):
        make_backend("torch.compile", fast)


def test_aot_bounds():
    fast = LatentDecoder(tiny_decoder(), backend="aot", background_build=False)
    aot = fast._backend
    assert aot.accepts(torch.zeros(1, aot.min_frames, 8)) and not aot.accepts(torch.zeros(1, aot.min_frames - 1, 8))
    assert not aot.accepts(torch.zeros(AOT_MAX_BATCH + 1, 50, 8))
    assert not aot.accepts(torch.zeros(1, 50, 8, dtype=torch.float64))


class Recording(EagerBackend):
    """The eager backend, recording each call and each deferred block."""

    name = "recording"

    def __init__(self, owner):
        super().__init__(owner)
        self.calls, self.blocks = [], 0

    def whole(self, x):
        self.calls.append(("whole", x.shape[1]))
        return super().whole(x)

    def step(self, plan, position, window, h, c):
        self.calls.append((position, window.shape[1]))
        return super().step(plan, position, window, h, c)

    @contextlib.contextmanager
    def deferred(self):
        self.blocks += 1
        yield


def recording_decoder(chunk_frames):
    fast = LatentDecoder(tiny_decoder(), backend="eager", chunk_frames=chunk_frames)
    fast._backend = Recording(fast)
    fast._runner = ChunkRunner(fast, fast._backend)
    return fast, fast._backend


def test_the_runner_takes_one_pass_below_the_threshold_and_chunks_above():
    fast, backend = recording_decoder(16)
    plan = fast._plan(16)
    one_pass = LatentDecoder(tiny_decoder(), backend="eager", chunk_frames=None)
    short = torch.randn(2, plan.min_chunked_frames - 1, 8)
    assert torch.equal(fast(short), one_pass(short))
    assert backend.calls == [("whole", short.shape[1])] and backend.blocks == 1
    backend.calls.clear()
    T = 3 * 16 + plan.right + 5
    long = torch.randn(2, T, 8)
    audio = fast(long)
    assert audio.shape == (2, 1, T * fast.hop_length)
    assert (audio - one_pass(long)).abs().max() <= 1e-5 * one_pass(long).abs().max()
    assert [c[0] for c in backend.calls] == ["first", "middle", "middle", "last"] and backend.blocks == 2
    assert backend.calls[0][1] == plan.window_frames("first") and backend.calls[1][1] == plan.window_frames("middle")


def test_the_runner_streams_through_the_backend_and_checks_each_piece():
    fast, backend = recording_decoder(16)
    latents = torch.randn(1, 70, 8)
    pieces = list(fast.stream(torch.split(latents, 9, dim=1)))
    assert torch.equal(torch.cat(pieces, -1), fast(latents))
    assert backend.blocks == 2 and "whole" not in [c[0] for c in backend.calls]
    with pytest.raises(ValueError, match=r"\[B, T, 8\]"):
        list(fast.stream([latents[:, :20], torch.randn(1, 5, 7)]))
    with pytest.raises(TypeError, match="each chunk of latents must be a tensor"):
        list(fast.stream([latents[:, :20], "piece"]))


def test_the_runner_serves_an_empty_batch_without_the_backend():
    fast, backend = recording_decoder(16)
    assert fast(torch.zeros(0, 40, 8)).shape == (0, 1, 40 * fast.hop_length)
    assert fast(torch.zeros(0, 10, 8)).shape == (0, 1, 10 * fast.hop_length)
    assert backend.calls == []


def test_waiting_for_a_build_past_the_timeout_says_false_and_leaves_it_running():
    import subprocess
    import sys
    import types

    backend = object.__new__(AotBackend)  # only the build it waits for matters here
    build = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    backend.builds = types.SimpleNamespace(process=build, recipes=[])
    try:
        assert backend.wait(timeout=0.2) is False
        assert build.poll() is None  # still building
    finally:
        build.kill()
        build.wait()
    assert backend.wait(timeout=5) is True  # done, and nothing missing from the (empty) recipe list
