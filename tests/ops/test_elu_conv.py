"""jasco_fast::elu_conv (csrc/cpu/elu_conv.cpp), an ELU then a narrow convolution in one pass (the decoder's last
layer), against the decoder's Conv layer in float64; the kernel copies and tolerances are in tests/elu_layers.py.
Where the decoder runs it: tests/test_decoder_fuse.py."""

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
    conv_op,
    inputs,
    rounded,
)

from jasco_fast.decoder import Conv
from jasco_fast.ops import elu_conv

# reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("C,Cout", [(64, 1), (64, 2), (32, 3), (24, 1), (10, 2)])
@pytest.mark.parametrize("k,dilation,causal", [(7, 1, False), (7, 1, True), (3, 2, False), (1, 1, False)])
@pytest.mark.parametrize("pad_mode", ["reflect", "constant", "replicate", "circular"])
def test_conv_matches_layers(dtype, C, Cout, k, dilation, causal, pad_mode):
    torch.manual_seed(0)
    conv = rounded(Conv(C, Cout, k, dilation, causal=causal, pad_mode=pad_mode).eval(), dtype)
    for B, T in ((2, 1001), (1, 13), (3, 6)):
        if pad_mode == "circular" and T < (k - 1) * dilation:
            continue
        x = inputs(B, C, T, dtype)
        with torch.no_grad():
            want = conv.double()(F.elu(x.double()))
            check(conv_op(conv.to(dtype), x), want, dtype)
        conv.float()


def test_alpha_and_layouts():
    torch.manual_seed(0)
    x = inputs(2, 32, 300, torch.float32)
    with torch.no_grad():
        conv = Conv(32, 1, 7).eval()
        want = conv.double()(F.elu(x.double(), alpha=0.4))
        conv.float()
        check(conv_op(conv, x, alpha=0.4), want, torch.float32)
        check(conv_op(conv, x.contiguous(), alpha=0.4), want, torch.float32)  # NCHW input: copied, same result


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_finite_inputs_spread_like_the_layers(dtype):
    """NaN and +-inf through the op's ELU (bfloat16 activations take the bfloat16-accurate ELU) spread as
    through the layers; the finite outputs keep the dtype's tolerance."""
    torch.manual_seed(0)
    conv = rounded(Conv(32, 1, 7).eval(), dtype)
    check_non_finite_spread(conv, conv_op, lambda conv, x: conv.double()(F.elu(x.double())), 32, 200, dtype)


def test_same_bits_for_any_thread_count():
    """Every tile is computed the same way whichever thread takes it."""
    torch.manual_seed(0)
    conv = Conv(64, 1, 7).eval()
    x = inputs(2, 64, 5000, torch.float32)
    check_same_bits_for_any_thread_count(conv_op, conv, x)


@pytest.mark.parametrize("isa", ["avx512", "avx2", "portable"])
def test_lower_instruction_sets(isa):
    """Every copy of the loops on one machine (JASCO_FAST_TAIL_ISA caps the choice in a fresh process)."""
    calls = (
        "for dtype in (torch.float32, torch.bfloat16):\n"
        "    t.test_conv_matches_layers(dtype, 64, 2, 7, 1, True, 'reflect')\n"
        "    t.test_non_finite_inputs_spread_like_the_layers(dtype)\n"
    )
    check_passes_under_tail_isa(Path(__file__), isa, calls)


# opcheck


def test_opcheck():
    x = inputs(2, 16, 40, torch.float32)
    args = (x, torch.randn(2, 16, 1, 7), torch.randn(2), 1, 3, 3, "replicate", 0.7)
    torch.library.opcheck(
        torch.ops.jasco_fast.elu_conv.default,
        args,
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static", "test_aot_dispatch_dynamic"),
    )


# gradcheck: does not apply, the op has no autograd formula (a FusedEluConv runs its layers when gradients are
# wanted: tests/test_decoder_fuse.py)

# torch.compile


def test_torch_compile_fullgraph():
    torch.manual_seed(0)
    x, weight, bias = inputs(2, 16, 40, torch.float32), torch.randn(2, 16, 1, 7), torch.randn(2)

    def fn(x, weight, bias):
        return elu_conv(torch.relu(x), weight, bias, 1, 3, 3, "replicate", 0.7) * 2

    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    with torch.no_grad():
        assert torch.equal(compiled(x, weight, bias), fn(x, weight, bias))


# argument errors


def test_argument_errors():
    x = inputs(1, 16, 20, torch.float32)
    with torch.no_grad():
        with pytest.raises(ValueError, match="\\[B, C, 1, T\\]"):
            elu_conv(x.squeeze(2), torch.zeros(1, 16, 1, 7), torch.zeros(1), 1, 3, 3, "reflect", 1.0)
        with pytest.raises(ValueError, match="bias"):
            elu_conv(x, torch.zeros(1, 16, 1, 7), torch.zeros(2), 1, 3, 3, "reflect", 1.0)
