"""jasco_fast::denorm_transpose against the reference, on CPU always and on CUDA where there is a GPU."""

from __future__ import annotations

import pytest
import torch
from checkpoints import FLOATS, LATENT_LAYOUTS, kernel_error, make_latents  # noqa: E402  (shared with tests/test_cuda.py)
from checkpoints import OP_TOL as TOL
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jasco_fast
from jasco_fast import reference

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def expected_strides(B, T, D, channels_last):
    return (T * D, 1, D) if channels_last else (D * T, T, 1)


def check_against_reference(latents, mean, std, dtype, channels_last):
    got = jasco_fast.denormalize_transpose(latents, mean, std, dtype=dtype, channels_last=channels_last)
    want = reference.denormalize_transpose(latents, mean, std, dtype=dtype, channels_last=channels_last)
    B, T, D = latents.shape
    out_dtype = dtype or latents.dtype
    assert got.shape == (B, D, T) and got.dtype == out_dtype and got.device == latents.device
    if got.numel():
        assert got.stride() == expected_strides(B, T, D, channels_last)
    coarser = max(latents.dtype, out_dtype, key=lambda t: torch.finfo(t).eps)
    torch.testing.assert_close(got, want, **TOL[coarser])
    truth = reference.denormalize_transpose(
        latents.double(),
        torch.as_tensor(mean, dtype=torch.float64),
        torch.as_tensor(std, dtype=torch.float64),
        dtype=out_dtype,
        channels_last=channels_last,
    )
    compute = torch.float64 if latents.dtype == torch.float64 else torch.float32
    torch.testing.assert_close(got, truth, **TOL[max(compute, out_dtype, key=lambda t: torch.finfo(t).eps)])
    return got


# reference


@st.composite
def op_inputs(draw):
    B = draw(st.integers(1, 3))
    T = draw(st.integers(1, 200))
    D = draw(st.integers(1, 200))
    in_dtype = draw(st.sampled_from(FLOATS))
    out_dtype = draw(st.sampled_from([None] + FLOATS))
    layout = draw(st.sampled_from(LATENT_LAYOUTS))
    per_channel = draw(st.booleans())
    channels_last = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    return B, T, D, in_dtype, out_dtype, layout, per_channel, channels_last, seed


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=op_inputs())
def test_matches_reference(device, case):
    B, T, D, in_dtype, out_dtype, layout, per_channel, channels_last, seed = case
    gen = torch.Generator().manual_seed(seed)
    latents = make_latents(B, T, D, in_dtype, layout, gen, device)
    if per_channel:
        mean = (torch.randn(D, generator=gen) * 0.1).to(device)
        std = (torch.rand(D, generator=gen) + 0.5).to(device)
    else:
        mean, std = jasco_fast.JASCO_LATENT_MEAN, jasco_fast.JASCO_LATENT_STD
    check_against_reference(latents, mean, std, out_dtype, channels_last)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 500, 128), (2, 7, 129), (3, 65, 64), (1, 1500, 128), (2, 64, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_edge_and_jasco_shapes_float32_exact(device, shape, channels_last):
    """float32 in and out: multiply then add, as JASCO computes it, so the result is bit-exact."""
    latents = torch.randn(shape, device=device)
    got = jasco_fast.denormalize_transpose(latents, -0.0074, 4.0102, channels_last=channels_last)
    want = reference.denormalize_transpose(latents, -0.0074, 4.0102, channels_last=channels_last)
    assert torch.equal(got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_float32_to_half_types_rounds_to_nearest_even_exactly(device, out_dtype, channels_last):
    """The fused cast rounds the float32 result once, to nearest even, as `tensor.to(dtype)` does: the same bits
    over 14 decades of magnitude, overflow to inf, subnormals, and a tile edge in T and D."""
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 1100, 131, generator=gen) * torch.logspace(-9, 5, 131)
    latents[0, :5, 0] = torch.tensor([65504.0, 70000.0, 1e-7, -3e38, 3e38])
    latents = latents.to(device)
    got = jasco_fast.denormalize_transpose(latents, -0.0074, 4.0102, dtype=out_dtype, channels_last=channels_last)
    want = reference.denormalize_transpose(latents, -0.0074, 4.0102, dtype=out_dtype, channels_last=channels_last)
    assert got.stride() == want.stride()
    assert torch.equal(got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stat_shape", [(), (1,), (128,)])
def test_statistics_shapes_and_dtypes(device, stat_shape):
    latents = torch.randn(2, 33, 128, device=device)
    for stat_dtype in FLOATS:
        mean = torch.randn(stat_shape, device=device).to(stat_dtype)
        std = torch.rand(stat_shape, device=device).to(stat_dtype) + 1
        check_against_reference(latents, mean, std, None, False)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_and_non_finite(device):
    for B, T in [(2, 0), (0, 5), (0, 0)]:
        for channels_last in (False, True):
            out = jasco_fast.denormalize_transpose(
                torch.randn(B, T, 16, device=device), 0.0, 1.0, channels_last=channels_last
            )
            assert out.shape == (B, 16, T)
    latents = torch.randn(2, 9, 16, device=device)
    latents[0, 3, 5], latents[1, 0, 0], latents[1, 8, 15] = float("nan"), float("inf"), -float("inf")
    for channels_last in (False, True):
        got = jasco_fast.denormalize_transpose(latents, -0.0074, 4.0102, channels_last=channels_last)
        want = reference.denormalize_transpose(latents, -0.0074, 4.0102, channels_last=channels_last)
        torch.testing.assert_close(got, want, equal_nan=True)
        assert got[0, 5, 3].isnan() and got[1, 0, 0] == float("inf") and got[1, 15, 8] == -float("inf")


def test_float_statistics_are_made_once_per_value_dtype_device():
    from jasco_fast import ops

    x = torch.randn(1, 3, 4)
    ops._scalar_tensor.cache_clear()
    first = jasco_fast.denormalize_transpose(x, 0.25, 2.0)
    second = jasco_fast.denormalize_transpose(x, 0.25, 2.0)
    assert torch.equal(first, second)
    info = ops._scalar_tensor.cache_info()
    assert (info.misses, info.hits) == (2, 2)
    jasco_fast.denormalize_transpose(x.double(), 0.25, 2.0)  # another compute dtype: new tensors
    assert ops._scalar_tensor.cache_info().misses == 4
    # -0.0 and 0.0 are different statistics: x * 1 + (-0.0) keeps a -0.0, x * 1 + 0.0 does not
    zeros = torch.full((1, 1, 1), -0.0)
    assert torch.signbit(jasco_fast.denormalize_transpose(zeros, -0.0, 1.0)).all()
    assert not torch.signbit(jasco_fast.denormalize_transpose(zeros, 0.0, 1.0)).any()


# opcheck


def opcheck_samples(device):
    gen = torch.Generator().manual_seed(0)
    for dtype in FLOATS:
        for per_channel in (False, True):
            for channels_last in (False, True):
                for out_dtype in (None, torch.float32):
                    latents = torch.randn(2, 11, 24, generator=gen).to(device=device, dtype=dtype)
                    mean = torch.randn(24 if per_channel else (), generator=gen).to(device=device, dtype=dtype)
                    std = torch.rand(24 if per_channel else (), generator=gen).to(device=device, dtype=dtype) + 0.5
                    yield latents, mean, std, out_dtype, channels_last
    # with gradients
    latents = torch.randn(2, 5, 8, device=device, dtype=torch.float64, requires_grad=True)
    mean = torch.randn(8, device=device, dtype=torch.float64, requires_grad=True)
    std = torch.rand((), device=device, dtype=torch.float64, requires_grad=True)
    yield latents, mean, std, None, True
    yield latents, mean, std, None, False


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for args in opcheck_samples(device):
        torch.library.opcheck(torch.ops.jasco_fast.denorm_transpose.default, args)


# gradcheck


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("stat_shape", [(), (1,), (6,)])
def test_gradcheck(device, channels_last, stat_shape):
    latents = torch.randn(2, 5, 6, device=device, dtype=torch.float64, requires_grad=True)
    mean = torch.randn(stat_shape, device=device, dtype=torch.float64, requires_grad=True)
    std = torch.randn(stat_shape, device=device, dtype=torch.float64, requires_grad=True)

    def fn(x, m, s):
        return torch.ops.jasco_fast.denorm_transpose(x, m, s, None, channels_last)

    assert torch.autograd.gradcheck(fn, (latents, mean, std))
    assert torch.autograd.gradgradcheck(fn, (latents, mean, std))


def test_gradients_cast_back_to_input_dtypes():
    latents = torch.randn(2, 5, 6, dtype=torch.bfloat16, requires_grad=True)
    mean = torch.zeros(6, requires_grad=True)
    std = torch.ones((), requires_grad=True)
    out = jasco_fast.denormalize_transpose(latents, mean, std, dtype=torch.float32)
    out.sum().backward()
    assert latents.grad.dtype == torch.bfloat16 and mean.grad.shape == (6,) and std.grad.shape == ()
    torch.testing.assert_close(mean.grad, torch.full((6,), 10.0))


def test_cached_statistics_made_in_inference_mode_serve_autograd_later():
    from jasco_fast import ops

    ops._scalar_tensor.cache_clear()
    with torch.inference_mode():
        jasco_fast.denormalize_transpose(torch.randn(1, 2, 3), 0.125, 3.0)
    latents = torch.randn(1, 2, 3, requires_grad=True)
    jasco_fast.denormalize_transpose(latents, 0.125, 3.0).sum().backward()  # saves the cached std
    torch.testing.assert_close(latents.grad, torch.full((1, 2, 3), 3.0))


# torch.compile


def test_torch_compile_fullgraph():
    def fn(x, m, s):
        y = jasco_fast.denormalize_transpose(x, m, s, channels_last=True)
        return torch.nn.functional.relu(y) * 2

    compiled = torch.compile(fn, fullgraph=True)
    x, m, s = torch.randn(2, 40, 16), torch.randn(16), torch.rand(16) + 0.5
    torch.testing.assert_close(compiled(x, m, s), fn(x, m, s))


# argument errors: one rule set (C++ check_inputs) via the Python face, the raw op and the fake kernel alike


BAD_INPUTS = [
    (lambda: (torch.randn(4, 5), 0.0, 1.0), ValueError, r"3-D \[B, T, D\]"),
    (lambda: (torch.randn(1, 4, 5, 6), 0.0, 1.0), ValueError, r"3-D \[B, T, D\]"),
    (lambda: (torch.ones(1, 4, 5, dtype=torch.int32), 0.0, 1.0), TypeError, r"float32/float64/float16/bfloat16"),
    (lambda: (torch.ones(1, 4, 5, dtype=torch.complex64), 0.0, 1.0), TypeError, r"float32/float64/float16/bfloat16"),
    (lambda: (torch.randn(1, 4, 5), torch.zeros(3), 1.0), ValueError, r"mean must be a scalar .* D = 5"),
    (lambda: (torch.randn(1, 4, 5), 0.0, torch.ones(2, 5)), ValueError, r"std must be a scalar .* D = 5"),
    (lambda: (torch.randn(1, 4, 5), torch.zeros(5, dtype=torch.int64), 1.0), TypeError, r"mean must be a floating"),
    (lambda: (torch.randn(1, 4, 0), 0.0, 1.0), ValueError, r"D > 0"),
    (lambda: (torch.randn(1, 4, 5), torch.zeros(5, device="meta"), 1.0), ValueError, r"same device"),
]


@pytest.mark.parametrize("make,error,match", BAD_INPUTS)
def test_errors_python_face(make, error, match):
    latents, mean, std = make()
    with pytest.raises(error, match=match):
        jasco_fast.denormalize_transpose(latents, mean, std)


@pytest.mark.parametrize("make,error,match", BAD_INPUTS)
def test_errors_raw_op(make, error, match):
    latents, mean, std = make()
    mean = mean if isinstance(mean, torch.Tensor) else torch.tensor(mean)
    std = std if isinstance(std, torch.Tensor) else torch.tensor(std)
    with pytest.raises(kernel_error(error), match=match):
        torch.ops.jasco_fast.denorm_transpose(latents, mean, std, None, False)


@pytest.mark.parametrize("make,error,match", BAD_INPUTS[:-1])  # (the last mixes devices on purpose)
def test_errors_fake_kernel(make, error, match):
    """The fake kernel (what torch.compile traces) states the same rules in the same words."""
    latents, mean, std = make()
    mean = torch.as_tensor(mean).to("meta")
    std = torch.as_tensor(std).to("meta")
    with pytest.raises(error, match=match):
        torch.ops.jasco_fast.denorm_transpose(latents.to("meta"), mean, std, None, False)


def test_errors_dtype_argument():
    with pytest.raises(TypeError, match="dtype must be"):
        jasco_fast.denormalize_transpose(torch.randn(1, 2, 3), 0.0, 1.0, dtype=torch.int8)
    with pytest.raises(kernel_error(TypeError), match=r"dtype must be .*, got torch\.int8"):
        torch.ops.jasco_fast.denorm_transpose(
            torch.randn(1, 2, 3), torch.tensor(0.0), torch.tensor(1.0), torch.int8, False
        )
    with pytest.raises(TypeError, match="mean must be a float or a tensor"):
        jasco_fast.denormalize_transpose(torch.randn(1, 2, 3), "0", 1.0)


# CUDA: where a GPU exists (the device tool's machines); CI compiles the kernel source


@needs_cuda
def test_cuda_uses_current_stream_and_matches_cpu():
    latents = torch.randn(4, 300, 128)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = jasco_fast.denormalize_transpose(latents.cuda(), -0.0074, 4.0102, dtype=torch.bfloat16)
    stream.synchronize()
    want = jasco_fast.denormalize_transpose(latents, -0.0074, 4.0102, dtype=torch.bfloat16)
    assert torch.equal(got.cpu(), want)
