"""The GPU decode path, where a CUDA GPU exists (skipped elsewhere, with the reason): the op's CUDA kernel
against the reference and the CPU kernel for every dtype, stride pattern and layout; the current stream and
CUDA graphs; pinned, non-blocking copies; LatentDecoder in float32/bfloat16/float16 against the float32
reference; the CLI on CUDA (overlapped writing) and under torchrun with NCCL.

`make gpu-check` runs this file on a GPU machine; CI (no GPU) skips it.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import zlib

import pytest
import torch
from checkpoints import FLOATS, make_latents  # shared with the op tests
from checkpoints import LATENT_LAYOUTS as LAYOUTS
from checkpoints import OP_TOL as TOL

import jasco_fast
from jasco_fast import DecoderConfig, LatentDecoder, SEANetDecoder, reference
from jasco_fast.overlap import HostCopy, to_device

HAS_CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU on this machine (make gpu-check runs these)")
HAS_KERNEL = torch._C._dispatch_has_kernel_for_dispatch_key("jasco_fast::denorm_transpose", "CUDA")
needs_kernel = pytest.mark.skipif(
    HAS_CUDA and not HAS_KERNEL,
    reason="jasco_fast was built without its CUDA kernel (no nvcc at build time); rebuild with the CUDA toolkit",
)


def check_kernel(latents, mean, std, dtype, channels_last):
    """The CUDA kernel returns the CPU kernel's bits and the reference's values, in the promised layout."""
    got = jasco_fast.denormalize_transpose(latents, mean, std, dtype=dtype, channels_last=channels_last)
    B, T, D = latents.shape
    out_dtype = dtype or latents.dtype
    assert got.is_cuda and got.shape == (B, D, T) and got.dtype == out_dtype
    if got.numel():
        assert got.stride() == ((T * D, 1, D) if channels_last else (D * T, T, 1))
    cpu = lambda s: s.cpu() if isinstance(s, torch.Tensor) else s  # noqa: E731
    on_cpu = jasco_fast.denormalize_transpose(
        latents.cpu(), cpu(mean), cpu(std), dtype=dtype, channels_last=channels_last
    )
    assert torch.equal(got.cpu(), on_cpu)
    want = reference.denormalize_transpose(latents, mean, std, dtype=dtype, channels_last=channels_last)
    coarser = max(latents.dtype, out_dtype, key=lambda t: torch.finfo(t).eps)
    torch.testing.assert_close(got, want, **TOL[coarser])


# ------------------------------------------------------------------------------------------------
# The op's CUDA kernel


@needs_kernel
@pytest.mark.parametrize("in_dtype,out_dtype", list(itertools.product(FLOATS, [None] + FLOATS)))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_kernel_every_dtype_and_stride_pattern(in_dtype, out_dtype, layout):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{in_dtype}{out_dtype}{layout}".encode()))
    for B, T, D in [(3, 77, 130), (2, 64, 128), (1, 1, 1), (2, 33, 4)]:
        latents = make_latents(B, T, D, in_dtype, layout, gen, device="cuda")
        for per_channel, channels_last in itertools.product((False, True), (False, True)):
            if per_channel:
                mean = (torch.randn(D, generator=gen) * 0.1).cuda()
                std = (torch.rand(D, generator=gen) + 0.5).cuda()
            else:
                mean, std = jasco_fast.JASCO_LATENT_MEAN, jasco_fast.JASCO_LATENT_STD
            check_kernel(latents, mean, std, out_dtype, channels_last)


@needs_kernel
@pytest.mark.parametrize("channels_last", [False, True])
def test_kernel_grids_beyond_one_launch_dimension(channels_last):
    """B over the grid's z limit (65535) and D over its y limit, for the vector (float32) and scalar
    (float64) transposes: both are grid-strided."""
    gen = torch.Generator().manual_seed(0)
    for shape, dtype in [
        ((70_000, 2, 3), torch.float32),
        ((1, 2, 65_535 * 128 + 4), torch.float32),
        ((1, 2, 65_535 * 32 + 33), torch.float64),
    ]:
        latents = torch.randn(shape, generator=gen).to("cuda", dtype)
        check_kernel(latents, -0.0074, 4.0102, None, channels_last)


@needs_kernel
def test_kernel_empty_and_non_finite():
    for B, T in [(2, 0), (0, 5)]:
        for channels_last in (False, True):
            out = jasco_fast.denormalize_transpose(
                torch.randn(B, T, 16, device="cuda"), 0.0, 1.0, channels_last=channels_last
            )
            assert out.shape == (B, 16, T)
    latents = torch.randn(2, 9, 16, device="cuda")
    latents[0, 3, 5], latents[1, 0, 0] = float("nan"), float("inf")
    got = jasco_fast.denormalize_transpose(latents, -0.0074, 4.0102)
    assert got[0, 5, 3].isnan() and got[1, 0, 0] == float("inf")


@needs_kernel
def test_kernel_runs_on_the_current_stream():
    """The op is queued behind a long kernel on a side stream and reads what that stream wrote last: on any
    other stream it would read the zeros that were there before."""
    src = torch.randn(4, 300, 128, device="cuda")
    x = torch.zeros_like(src)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time
        x.copy_(src)
        got = jasco_fast.denormalize_transpose(x, -0.0074, 4.0102, dtype=torch.bfloat16)
    side.synchronize()
    want = jasco_fast.denormalize_transpose(src.cpu(), -0.0074, 4.0102, dtype=torch.bfloat16)
    assert torch.equal(got.cpu(), want)


@needs_kernel
@pytest.mark.parametrize("channels_last", [False, True])
def test_kernel_is_captured_by_cuda_graphs(channels_last):
    """Capture fails for a launch on another stream; replay must see new input values."""
    x = torch.randn(2, 50, 128, device="cuda")
    mean, std = torch.tensor(-0.0074, device="cuda"), torch.tensor(4.0102, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as torch.cuda.graphs asks
        jasco_fast.denormalize_transpose(x, mean, std, channels_last=channels_last)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = jasco_fast.denormalize_transpose(x, mean, std, channels_last=channels_last)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, reference.denormalize_transpose(x, mean, std, channels_last=channels_last))


@needs_kernel
def test_kernel_under_torch_compile_with_cuda_graphs():
    def fn(x, m, s):
        return torch.relu(jasco_fast.denormalize_transpose(x, m, s, channels_last=True)) * 2

    compiled = torch.compile(fn, mode="reduce-overhead", fullgraph=True)
    m, s = torch.randn(128, device="cuda"), torch.rand(128, device="cuda") + 0.5
    for _ in range(3):  # recording, then replays
        x = torch.randn(2, 40, 128, device="cuda")
        torch.testing.assert_close(compiled(x, m, s).clone(), fn(x, m, s))


@needs_kernel
def test_opcheck_on_cuda():
    gen = torch.Generator().manual_seed(0)
    for dtype, channels_last in itertools.product(FLOATS, (False, True)):
        latents = torch.randn(2, 11, 24, generator=gen).to("cuda", dtype)
        mean = torch.randn(24, generator=gen).to("cuda", dtype)
        std = (torch.rand((), generator=gen) + 0.5).to("cuda", dtype)
        torch.library.opcheck(torch.ops.jasco_fast.denorm_transpose.default, (latents, mean, std, None, channels_last))


# ------------------------------------------------------------------------------------------------
# Pinned, non-blocking copies


def test_to_device_goes_through_pinned_memory_and_is_ordered():
    x = torch.randn(3, 50, 128)
    y = to_device(x, "cuda")
    assert y.is_cuda and torch.equal(y.cpu(), x)
    pinned = x.pin_memory()
    assert torch.equal(to_device(pinned, torch.device("cuda")).cpu(), x)
    on_gpu = torch.randn(2, device="cuda")
    assert to_device(on_gpu, "cuda") is on_gpu


def test_host_copy_is_pinned_non_blocking_and_waits_for_the_producer():
    src = torch.randn(8, 1, 64_000, device="cuda")
    out = torch.zeros_like(src)
    # a pinned block of this size, cached when released: HostCopy reuses it instead of calling cudaHostAlloc
    torch.empty(src.shape, pin_memory=True)
    torch.cuda.synchronize()
    torch.cuda._sleep(1_000_000_000)  # ~0.5 s of GPU time before `out` gets its values
    out.copy_(src)
    copy = HostCopy(out)  # queued behind the sleep: returns at once
    assert not copy.ready()
    host = copy.result()
    assert host.is_pinned() and host.device.type == "cpu"
    assert torch.equal(host, src.cpu())


# ------------------------------------------------------------------------------------------------
# LatentDecoder on CUDA against the float32 reference


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-300)).item()


@pytest.fixture(scope="module", autouse=True)
def fresh_dynamo():
    """Every LatentDecoder compiles the same method: graphs left by other test modules would count towards
    dynamo's recompile limit, past which it silently runs eagerly."""
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def full_decoder():
    """The EnCodec 32 kHz architecture, random weights, on the GPU (timing and accuracy do not need real ones)."""
    torch.manual_seed(0)
    return SEANetDecoder(DecoderConfig()).cuda().eval()


@pytest.fixture(scope="module")
def latents_and_truth(full_decoder):
    """[2, 50, 128] latents (1 s of audio) and their decode in float64 by the reference, on the GPU."""
    latents = torch.randn(2, 50, 128, generator=torch.Generator().manual_seed(1)).cuda()
    truth = reference.decode(reference.ReferenceDecoder(full_decoder).double(), latents.double())
    return latents, truth


@needs_kernel
@pytest.mark.parametrize("backend", ["eager", None], ids=["eager", "compiled"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_latent_decoder_on_cuda_within_the_reference_error_budget(full_decoder, latents_and_truth, dtype, backend):
    """The fast path's error against float64 truth stays within twice the error of JASCO's own eager path
    run in the same dtype on the same GPU (TF32 convolutions included), plus a floor: 1e-6 for float32,
    1e-3 for the half types. The budgets themselves must be small: under 1e-2 (float32) and 0.1 (halves)."""
    latents, truth = latents_and_truth
    eager = reference.ReferenceDecoder(full_decoder).to(dtype)
    ref_err = rel_err(reference.decode(eager, latents.to(dtype)).float(), truth)
    budget = 2 * ref_err + (1e-6 if dtype == torch.float32 else 1e-3)
    assert budget < (1e-2 if dtype == torch.float32 else 0.1), (dtype, ref_err)
    fast = LatentDecoder(full_decoder, dtype=dtype, backend=backend)
    got = fast(latents)
    assert got.is_cuda and got.dtype == torch.float32 and got.shape == truth.shape
    assert rel_err(got, truth) <= budget, (dtype, rel_err(got, truth), budget)
    # host latents go through pinned memory to the decoder's GPU: the same audio
    assert rel_err(fast(latents.cpu()), got) < 1e-6


@needs_kernel
def test_latent_decoder_with_cuda_graphs(full_decoder, latents_and_truth):
    latents, truth = latents_and_truth
    fast = LatentDecoder(full_decoder, dtype=torch.bfloat16, mode="reduce-overhead")
    eager = reference.ReferenceDecoder(full_decoder).to(torch.bfloat16)
    budget = 2 * rel_err(reference.decode(eager, latents.bfloat16()).float(), truth) + 1e-3
    for _ in range(3):  # recording, then replays
        assert rel_err(fast(latents).clone(), truth) <= budget


# ------------------------------------------------------------------------------------------------
# The command line on CUDA: overlapped decode / copy / write, and torchrun with NCCL


def write_inputs(folder, count: int, frames: int = 40, dim: int = 8) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        path = folder / f"item{i}.pt"
        torch.save(torch.randn(frames, dim, generator=torch.Generator().manual_seed(i)), path)
        files.append(path)
    return files


def test_cli_decode_on_cuda_matches_the_cpu(tmp_path, tiny_hf_checkpoint, capsys, monkeypatch):
    """Compiled on the GPU (decode, pinned copy back and writing overlapped) against eager on the CPU."""
    import soundfile as sf

    from jasco_fast.cli import main

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # float32 on both sides
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    files = write_inputs(tmp_path / "in", 7)
    for device, extra in (("cpu", ["--backend", "eager"]), ("cuda", [])):
        code = main(
            [
                "decode",
                *map(str, files),
                "--out-dir",
                str(tmp_path / device),
                "--checkpoint",
                str(tiny_hf_checkpoint),
                "--device",
                device,
                "--batch-size",
                "2",
                "--format",
                "flac",
                *extra,
            ]
        )
        assert code == 0
        assert "decoded 7 items" in capsys.readouterr().out
    for i in range(7):
        on_gpu, rate = sf.read(str(tmp_path / "cuda" / f"item{i}.flac"))
        on_cpu, _ = sf.read(str(tmp_path / "cpu" / f"item{i}.flac"))
        assert on_gpu.shape == on_cpu.shape == (40 * 8,)
        assert abs(on_gpu - on_cpu).max() <= 2 / 2**15  # 16-bit FLAC: within two steps


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(
    HAS_CUDA and torch.cuda.device_count() < 2,
    reason="torchrun with NCCL needs 2 GPUs (NCCL refuses two ranks on one GPU)",
)
def test_torchrun_with_nccl_shards_the_files(tmp_path, tiny_hf_checkpoint):
    world = torch.cuda.device_count()
    files = write_inputs(tmp_path / "in", 2 * world + 1)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(world),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        "-m",
        "jasco_fast",
        "decode",
        *map(str, files),
        "--out-dir",
        str(tmp_path / "out"),
        "--checkpoint",
        str(tiny_hf_checkpoint),
        "--device",
        "cuda",
        "--backend",
        "eager",
    ]
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{f.stem}.wav" for f in files)
    assert f"decoded {len(files)} items" in result.stdout and f"on {world} processes" in result.stdout
