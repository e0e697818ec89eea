"""jasco_fast::elu_conv_transpose (csrc/cpu/elu_conv.cpp), an ELU then a SEANet upsampling layer (transposed
convolution and its trims) in one pass, against the decoder's ConvTranspose layer in float64; the kernel copies and
tolerances are in tests/elu_layers.py. Where the decoder runs it: tests/test_decoder_fuse.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from elu_layers import (
    check,
    check_non_finite_spread,
    check_passes_under_tail_isa,
    check_same_bits_for_any_thread_count,
    conv_transpose_op,
    inputs,
    make_upsampler,
    rounded,
    upsampled_layers,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jasco_fast.ops import elu_conv_transpose

# reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("C,Cout", [(128, 64), (32, 16), (16, 48), (24, 8), (5, 3)])
@pytest.mark.parametrize(
    "stride,k,causal",
    [
        (4, None, False),
        (5, None, False),
        (2, None, True),
        (8, None, False),
        (3, 5, False),
        (2, 7, False),
        (1, 1, False),
    ],
)
def test_conv_transpose_matches_layers(dtype, C, Cout, stride, k, causal):
    layer = make_upsampler(C, Cout, stride, k, causal=causal)
    for B, T in ((1, 1), (2, 5), (1, 97)):
        x = inputs(B, C, T, dtype)
        want = upsampled_layers(rounded(layer, dtype), x)
        with torch.no_grad():
            got = conv_transpose_op(layer.to(dtype), x)
        check(got, want, dtype)
        layer.float()


def test_any_trim_that_leaves_a_sample():
    """Any trim that leaves a sample (the SEANet trims are one case)."""
    layer = make_upsampler(16, 16, 3, 7)
    x = inputs(2, 16, 6, torch.float32)
    with torch.no_grad():
        full = F.conv_transpose2d(F.elu(x.double()), layer.weight.double(), layer.bias.double(), stride=(1, 3))
        n = full.shape[-1]
        for left, right in ((0, 0), (5, 0), (0, 9), (n - 1, 0), (4, n - 5), (7, 3)):
            check(
                elu_conv_transpose(x, layer.weight, layer.bias, 3, left, right, 1.0),
                full[..., left : n - right],
                torch.float32,
            )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_finite_inputs_spread_like_the_layers(dtype):
    """NaN and +-inf through the op's ELU (bfloat16 activations take the bfloat16-accurate ELU) spread as
    through the layers; the finite outputs keep the dtype's tolerance."""
    layer = rounded(make_upsampler(32, 16, 4), dtype)
    check_non_finite_spread(layer, conv_transpose_op, upsampled_layers, 32, 60, dtype)


def test_same_bits_for_any_thread_count():
    """Every tile is computed the same way whichever thread takes it."""
    up = make_upsampler(128, 64, 4)
    x = inputs(2, 128, 1250, torch.float32)
    check_same_bits_for_any_thread_count(conv_transpose_op, up, x)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    C=st.sampled_from([16, 32, 8, 12, 3]),
    Cout=st.sampled_from([16, 8, 5]),
    stride=st.integers(1, 8),
    extra=st.integers(-3, 3),
    causal=st.booleans(),
    B=st.integers(1, 3),
    T=st.integers(1, 300),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_conv_transpose_property(C, Cout, stride, extra, causal, B, T, dtype, seed):
    k = max(stride, 2 * stride + extra)  # SEANet: k = 2 * stride; never shorter than the stride
    layer = make_upsampler(C, Cout, stride, k, causal=causal, seed=seed)
    x = inputs(B, C, T, dtype, seed=seed)
    want = upsampled_layers(rounded(layer, dtype), x)
    with torch.no_grad():
        got = conv_transpose_op(layer.to(dtype), x)
    check(got, want, dtype)


@pytest.mark.parametrize("isa", ["avx512", "avx2", "portable"])
def test_lower_instruction_sets(isa):
    """Every copy of the loops on one machine (JASCO_FAST_TAIL_ISA caps the choice in a fresh process)."""
    calls = (
        "for dtype in (torch.float32, torch.bfloat16):\n"
        "    t.test_conv_transpose_matches_layers(dtype, 128, 64, 4, None, False)\n"
        "    t.test_conv_transpose_matches_layers(dtype, 24, 8, 3, 5, False)\n"
        "    t.test_non_finite_inputs_spread_like_the_layers(dtype)\n"
    )
    check_passes_under_tail_isa(Path(__file__), isa, calls)


# opcheck


def test_opcheck():
    x = inputs(2, 16, 40, torch.float32)
    args = (x, torch.randn(16, 8, 1, 8), torch.randn(8), 4, 2, 2, 0.7)
    torch.library.opcheck(
        torch.ops.jasco_fast.elu_conv_transpose.default,
        args,
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static", "test_aot_dispatch_dynamic"),
    )


# gradcheck: does not apply, the op has no autograd formula (a FusedEluConvTranspose runs its layers when
# gradients are wanted: tests/test_decoder_fuse.py)

# torch.compile


def test_torch_compile_fullgraph():
    layer = make_upsampler(16, 8, 4).requires_grad_(False)
    x = inputs(2, 16, 40, torch.float32)

    def fn(x, weight, bias):
        return elu_conv_transpose(torch.relu(x), weight, bias, 4, 2, 2, 0.7) * 2

    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    with torch.no_grad():
        assert torch.equal(compiled(x, layer.weight, layer.bias), fn(x, layer.weight, layer.bias))


# argument errors


def test_argument_errors():
    layer = make_upsampler(16, 16, 3, 7)
    x = inputs(2, 16, 6, torch.float32)
    n = (6 - 1) * 3 + 7  # the untrimmed output's length
    with torch.no_grad():
        args = (layer.weight, layer.bias)
        with pytest.raises(ValueError, match="leave at least one"):
            elu_conv_transpose(x, *args, 3, n - 2, 2, 1.0)
        with pytest.raises(ValueError, match="leave at least one"):
            elu_conv_transpose(x, *args, 3, -1, 0, 1.0)
        with pytest.raises(ValueError, match="stride"):
            elu_conv_transpose(x, *args, 0, 0, 0, 1.0)
        with pytest.raises(ValueError, match="channels"):
            elu_conv_transpose(inputs(1, 8, 6, torch.float32), *args, 3, 0, 0, 1.0)
        with pytest.raises(ValueError, match="bias"):
            elu_conv_transpose(x, layer.weight, torch.zeros(3), 3, 0, 0, 1.0)
        with pytest.raises(TypeError, match="dtype"):
            elu_conv_transpose(x, layer.weight.bfloat16(), layer.bias, 3, 0, 0, 1.0)
        with pytest.raises(TypeError, match="float32 or bfloat16"):
            elu_conv_transpose(x.double(), layer.weight.double(), layer.bias.double(), 3, 0, 0, 1.0)
