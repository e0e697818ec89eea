"""jasco_fast::codes_to_latents (RVQ decode, fused) against the reference, on CPU always and on CUDA where
there is a GPU (its nvcc compilation: tests/ops/test_cuda_sources.py, for every kernel source)."""

from __future__ import annotations

import pytest
import torch
from checkpoints import kernel_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jasco_fast
from jasco_fast import reference

FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def expected_strides(B, T, D, channels_last):
    return (T * D, 1, D) if channels_last else (D * T, T, 1)


def make_codes(B, K, T, S, dtype, layout, gen, device="cpu"):
    """[B, K, T] codes in [0, S) with the memory layout asked for."""

    def randint(*shape):
        return torch.randint(0, S, shape, generator=gen).to(device=device, dtype=dtype)

    if layout == "contiguous":
        return randint(B, K, T)
    if layout == "frames_major":  # [B, T, K] memory, as CodeDecoder's chunk windows
        return randint(B, T, K).transpose(1, 2)
    if layout == "strided":
        return randint(B, 2 * K, 3 * T)[:, ::2, ::3]
    if layout == "expanded":  # a zero batch stride
        return randint(1, K, T).expand(B, K, T)
    return randint(B, K + 2, T + 3)[:, 2:, 3:]  # a storage offset and padded rows


def check(codes, codebooks, dtype, channels_last):
    """Sums in float32 (float64) in codebook order, as the reference: equal to its bits."""
    got = jasco_fast.codes_to_latents(codes, codebooks, dtype=dtype, channels_last=channels_last)
    want = reference.codes_to_latents(codes, codebooks, dtype=dtype, channels_last=channels_last)
    B, K, T = codes.shape
    D = codebooks.shape[2]
    assert got.shape == (B, D, T) and got.dtype == (dtype or codebooks.dtype) and got.device == codes.device
    if got.numel():
        assert got.stride() == expected_strides(B, T, D, channels_last)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    return got


# reference


@st.composite
def op_inputs(draw):
    return dict(
        B=draw(st.integers(1, 3)),
        K=draw(st.integers(1, 6)),
        extra_books=draw(st.integers(0, 2)),
        T=draw(st.integers(1, 150)),
        S=draw(st.integers(1, 64)),
        D=draw(st.integers(1, 140)),
        code_dtype=draw(st.sampled_from([torch.int64, torch.int32])),
        book_dtype=draw(st.sampled_from(FLOATS)),
        out_dtype=draw(st.sampled_from([None] + FLOATS)),
        layout=draw(st.sampled_from(["contiguous", "frames_major", "strided", "expanded", "offset"])),
        books_transposed=draw(st.booleans()),
        channels_last=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=op_inputs())
def test_matches_reference(device, case):
    gen = torch.Generator().manual_seed(case["seed"])
    codes = make_codes(case["B"], case["K"], case["T"], case["S"], case["code_dtype"], case["layout"], gen, device)
    N, S, D = case["K"] + case["extra_books"], case["S"], case["D"]
    if case["books_transposed"]:  # a non-contiguous codebook tensor
        books = torch.randn(N, D, S, generator=gen).transpose(1, 2)
    else:
        books = torch.randn(N, S, D, generator=gen)
    books = books.to(device=device, dtype=case["book_dtype"])
    check(codes, books, case["out_dtype"], case["channels_last"])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_encodec_32khz_shape_float32(device, channels_last):
    """MusicGen's shape: 4 codebooks of 2048 x 128, 30 s at 50 Hz; float32 sums equal transformers' order."""
    gen = torch.Generator().manual_seed(1)
    books = torch.randn(4, 2048, 128, generator=gen).to(device)
    codes = torch.randint(0, 2048, (2, 4, 1500), generator=gen).to(device)
    got = check(codes, books, None, channels_last)
    manual = books[0][codes[:, 0]] + books[1][codes[:, 1]] + books[2][codes[:, 2]] + books[3][codes[:, 3]]
    assert torch.equal(got, manual.transpose(1, 2))


@pytest.mark.parametrize("device", DEVICES)
def test_empty(device):
    books = torch.randn(3, 5, 4, device=device)
    for shape in [(0, 2, 7), (2, 2, 0)]:
        for channels_last in (False, True):
            out = jasco_fast.codes_to_latents(
                torch.zeros(shape, dtype=torch.int64, device=device), books, channels_last=channels_last
            )
            assert out.shape == (shape[0], 4, shape[2])


# opcheck


def opcheck_samples(device):
    gen = torch.Generator().manual_seed(0)
    for book_dtype in FLOATS:
        for code_dtype in (torch.int64, torch.int32):
            for channels_last in (False, True):
                for out_dtype in (None, torch.float32, torch.bfloat16):
                    books = torch.randn(4, 9, 24, generator=gen).to(device=device, dtype=book_dtype)
                    codes = torch.randint(0, 9, (2, 3, 11), generator=gen).to(device=device, dtype=code_dtype)
                    yield codes, books, out_dtype, channels_last


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for args in opcheck_samples(device):
        torch.library.opcheck(torch.ops.jasco_fast.codes_to_latents.default, args)


# gradcheck: does not apply, the op has no autograd formula (its codes are integers)


# torch.compile


def test_torch_compile_fullgraph_dynamic_length():
    def fn(codes, books):
        return torch.nn.functional.elu(jasco_fast.codes_to_latents(codes, books, channels_last=True)) * 2

    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    books = torch.randn(4, 16, 8)
    for T in (5, 9):
        codes = torch.randint(0, 16, (2, 3, T))
        torch.testing.assert_close(compiled(codes, books), fn(codes, books))


# argument errors: the Python face and the raw op raise the same ValueError / TypeError, before any bad read


BAD_INPUTS = [
    (lambda: (torch.zeros(2, 3, dtype=torch.int64), torch.randn(4, 8, 5)), ValueError, r"3-D \[B, K, T\]"),
    (lambda: (torch.zeros(1, 2, 3), torch.randn(4, 8, 5)), TypeError, r"int64 or int32"),
    (lambda: (torch.zeros(1, 2, 3, dtype=torch.int16), torch.randn(4, 8, 5)), TypeError, r"int64 or int32"),
    (lambda: (torch.zeros(1, 2, 3, dtype=torch.int64), torch.randn(8, 5)), ValueError, r"3-D \[num_codebooks"),
    (
        lambda: (torch.zeros(1, 2, 3, dtype=torch.int64), torch.ones(4, 8, 5, dtype=torch.int64)),
        TypeError,
        r"float32/float64/float16/bfloat16",
    ),
    (lambda: (torch.zeros(1, 5, 3, dtype=torch.int64), torch.randn(4, 8, 5)), ValueError, r"K = 5 .* has 4"),
    (lambda: (torch.zeros(1, 0, 3, dtype=torch.int64), torch.randn(4, 8, 5)), ValueError, r"K = 0"),
    (lambda: (torch.zeros(1, 2, 3, dtype=torch.int64), torch.randn(4, 0, 5)), ValueError, r"codebook_size > 0"),
    (
        lambda: (torch.zeros(1, 2, 3, dtype=torch.int64), torch.randn(4, 8, 5, device="meta")),
        ValueError,
        r"same device",
    ),
]


@pytest.mark.parametrize("make,error,match", BAD_INPUTS)
def test_errors_python_face(make, error, match):
    codes, books = make()
    with pytest.raises(error, match=match):
        jasco_fast.codes_to_latents(codes, books)


@pytest.mark.parametrize("make,error,match", BAD_INPUTS)
def test_errors_raw_op(make, error, match):
    codes, books = make()
    with pytest.raises(kernel_error(error), match=match):
        torch.ops.jasco_fast.codes_to_latents(codes, books, None, False)


def test_errors_dtype_argument():
    codes, books = torch.zeros(1, 2, 3, dtype=torch.int64), torch.randn(4, 8, 5)
    with pytest.raises(TypeError, match="dtype must be"):
        jasco_fast.codes_to_latents(codes, books, dtype=torch.int8)
    with pytest.raises(kernel_error(TypeError), match="dtype must be"):
        torch.ops.jasco_fast.codes_to_latents(codes, books, torch.int8, False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bad", [-1, 8, 2**40, -(2**40)])
def test_out_of_range_codes_raise_with_position(device, channels_last, bad):
    codes = torch.randint(0, 8, (2, 3, 70)).to(device)
    codes[1, 2, 65] = bad
    codes[1, 2, 69] = 9  # a later one: the first is reported
    with pytest.raises(RuntimeError, match=rf"code {bad} at \[b=1, k=2, t=65\] is out of range: .*\[0, 8\)"):
        torch.ops.jasco_fast.codes_to_latents(codes, torch.randn(4, 8, 5, device=device), None, channels_last)


@pytest.mark.parametrize("device", DEVICES)
def test_out_of_range_int32_codes(device):
    codes = torch.zeros(1, 2, 4, dtype=torch.int32, device=device)
    codes[0, 1, 0] = -5
    with pytest.raises(RuntimeError, match=r"code -5 at \[b=0, k=1, t=0\]"):
        jasco_fast.codes_to_latents(codes, torch.randn(2, 3, 4, device=device))


# CUDA: where a GPU exists; CI compiles the kernel source


@needs_cuda
def test_cuda_uses_current_stream_and_matches_cpu():
    books = torch.randn(4, 2048, 128)
    codes = torch.randint(0, 2048, (4, 4, 300))
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = jasco_fast.codes_to_latents(codes.cuda(), books.cuda(), dtype=torch.bfloat16, channels_last=True)
    stream.synchronize()
    want = jasco_fast.codes_to_latents(codes, books, dtype=torch.bfloat16, channels_last=True)
    assert torch.equal(got.cpu(), want)
