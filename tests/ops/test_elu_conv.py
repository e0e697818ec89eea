"""The CPU tail ops jasco_fast::elu_resblock, jasco_fast::elu_conv and jasco_fast::elu_conv_transpose
(csrc/cpu/elu_conv.cpp) against the decoder's layer-by-layer path in float64, and where the decoder uses them.

Channel counts pick the kernel's copy: multiples of 16 run the AVX-512 loops (on CPUs that have AVX-512; for
bfloat16 residual blocks the AVX512-BF16 copy where the CPU has it), other multiples of 8 the AVX2 ones, anything
else the portable loops; test_lower_instruction_sets runs the lower copies in processes where
JASCO_FAST_TAIL_ISA caps the choice.
Tolerances (max error / peak of the float64 result): float32 2e-6 (float32 arithmetic, another summation
order than oneDNN); bfloat16 2^-8 (inputs and weights are bf16-rounded first; the float32 copies round only the
output, the AVX512-BF16 copy also the two activations it feeds to its dot products, as the unfused bfloat16 layers
do), and at most 1.25x the error of the unfused bfloat16 layers themselves
(test_bfloat16_block_at_most_the_layers_error)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from checkpoints import child_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jasco_fast import DecoderConfig, SEANetDecoder, reference
from jasco_fast.decoder import (
    FUSED_CONV_MAX_OUT_CHANNELS,
    FUSED_CONV_TRANSPOSE_MAX_CHANNELS,
    FUSED_RESBLOCK_MAX_CHANNELS,
    Conv,
    ConvTranspose,
    DecoderLayers,
    FusedEluConv,
    FusedEluConvTranspose,
    FusedResBlock,
    ResBlock,
)
from jasco_fast.ops import elu_conv, elu_conv_transpose, elu_resblock

TOLERANCE = {torch.float32: 2e-6, torch.bfloat16: 2.0**-8}


def make_block(C, k=3, dilation=1, *, causal=False, pad_mode="reflect", compress=2, alpha=1.0, seed=0):
    torch.manual_seed(seed)
    cfg = DecoderConfig(
        residual_kernel_size=k, compress=compress, causal=causal, pad_mode=pad_mode, activation_params={"alpha": alpha}
    )
    block = ResBlock(C, dilation, cfg, "none").eval()
    for p in block.parameters():  # biases as large as the weights' effect, so a dropped bias shows
        p.data.normal_(0, 1 / math.sqrt(p.shape[1] * p.shape[-1]) if p.dim() == 4 else 0.3)
    return block


def resblock_op(block, x):
    c1, c2 = block.conv1, block.conv2
    return elu_resblock(
        x, c1.weight, c1.bias, c2.weight, c2.bias, c1.dilation, c1.pad_left, c1.pad_right, c1.pad_mode, block.act1.alpha
    )


def conv_op(conv, x, alpha=1.0):
    return elu_conv(x, conv.weight, conv.bias, conv.dilation, conv.pad_left, conv.pad_right, conv.pad_mode, alpha)


def make_upsampler(C, Cout, stride, k=None, *, causal=False, trim_right_ratio=1.0, seed=0):
    torch.manual_seed(seed)
    layer = ConvTranspose(C, Cout, k or 2 * stride, stride, causal=causal, trim_right_ratio=trim_right_ratio).eval()
    layer.weight.data.normal_(0, 1 / math.sqrt(C * 2))
    layer.bias.data.normal_(0, 0.3)
    return layer


def conv_transpose_op(layer, x, alpha=1.0):
    return elu_conv_transpose(x, layer.weight, layer.bias, layer.stride, layer.trim_left, layer.trim_right, alpha)


def upsampled_layers(layer, x, alpha=1.0):
    """ELU then the decoder's ConvTranspose layer, in float64."""
    return layer.double()(F.elu(x.double(), alpha))


def layer_by_layer(block, x):
    """The block's plain path in float64 (the decoder's unfused layers)."""
    b = block.double()
    x = x.double()
    return b.shortcut(x) + b.conv2(b.act2(b.conv1(b.act1(x))))


def rounded(module, dtype):
    """module with its weights rounded to dtype (kept in float32 so the float64 oracle sees the same values)."""
    return module.to(dtype).float()


def check(got, want, dtype):
    assert got.dtype == dtype
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert got.shape == want.shape
    err = (got.double() - want).abs().max().item()
    peak = want.abs().max().item()
    assert err <= TOLERANCE[dtype] * peak, f"max error {err:.3g} vs peak {peak:.3g} ({dtype})"


def inputs(B, C, T, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, 1, T, generator=g) * 1.5
    return x.to(dtype).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("C,compress", [(64, 2), (32, 2), (24, 3), (20, 2), (5, 1)])
@pytest.mark.parametrize(
    "k,dilation,causal", [(3, 1, False), (3, 2, True), (5, 3, False), (1, 1, False), (4, 1, False)]
)
@pytest.mark.parametrize("pad_mode", ["reflect", "constant", "replicate", "circular"])
def test_resblock_matches_layers(dtype, C, compress, k, dilation, causal, pad_mode):
    block = rounded(make_block(C, k, dilation, causal=causal, pad_mode=pad_mode, compress=compress), dtype)
    for B, T in ((2, 1000), (1, 37), (3, 7)):
        if pad_mode == "circular" and T < (k - 1) * dilation:
            continue  # refused, see test_argument_errors
        x = inputs(B, C, T, dtype)
        with torch.no_grad():
            check(resblock_op(block.to(dtype), x), layer_by_layer(block.float(), x.float()), dtype)
        block.float()


@pytest.mark.parametrize("T", [1, 2, 3])
def test_resblock_reflect_shorter_than_padding(T):
    """Reflect padding longer than the input reflects a zero-extended copy (SEANet's rule)."""
    block = make_block(16, k=7, dilation=1)
    x = inputs(2, 16, T, torch.float32)
    with torch.no_grad():
        check(resblock_op(block, x), layer_by_layer(block, x), torch.float32)
        block.float()


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


def test_conv_transpose_trims_and_errors():
    """Any trim that leaves a sample (the SEANet trims are one case), and the argument errors."""
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


def test_alpha_and_layouts():
    block = make_block(32, alpha=0.4)
    x = inputs(2, 32, 300, torch.float32)
    with torch.no_grad():
        want = layer_by_layer(block, x)
        block.float()
        check(resblock_op(block, x), want, torch.float32)
        check(resblock_op(block, x.contiguous()), want, torch.float32)  # NCHW input: copied, same result
        conv = Conv(32, 1, 7).eval()
        want = conv.double()(F.elu(x.double(), alpha=0.4))
        conv.float()
        check(conv_op(conv, x.contiguous(), alpha=0.4), want, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("op", ["elu_resblock", "elu_conv_transpose", "elu_conv"])
def test_non_finite_inputs_spread_like_the_layers(op, dtype):
    """NaN and +-inf through each op's ELU (bfloat16 activations take the bfloat16-accurate ELU) spread as
    through the layers; the finite outputs keep the dtype's tolerance."""
    if op == "elu_resblock":
        layer, C, T, run, layers = make_block(32), 32, 200, resblock_op, layer_by_layer
    elif op == "elu_conv_transpose":
        layer, C, T, run, layers = make_upsampler(32, 16, 4), 32, 60, conv_transpose_op, upsampled_layers
    else:
        layer, C, T = Conv(32, 1, 7).eval(), 32, 200
        run, layers = conv_op, lambda conv, x: conv.double()(F.elu(x.double()))
    layer = rounded(layer, dtype)
    x = inputs(1, C, T, dtype)
    x[0, 3, 0, T // 4] = float("nan")
    x[0, 5, 0, T // 2] = float("inf")
    x[0, 6, 0, 3 * T // 4] = float("-inf")
    with torch.no_grad():
        want = layers(layer, x)
        layer.to(dtype)
        got = run(layer, x)
    assert got.dtype == dtype
    assert torch.equal(got.isnan(), want.isnan()) and want.isnan().any()
    finite = want.isfinite()
    assert torch.equal(got.isfinite(), finite)
    err = (got.double()[finite] - want[finite]).abs().max().item()
    assert err <= TOLERANCE[dtype] * want[finite].abs().max().item()


def test_same_bits_for_any_thread_count():
    """Every tile is computed the same way whichever thread takes it."""
    up = make_upsampler(128, 64, 4)
    block = make_block(64)
    conv = Conv(64, 1, 7).eval()
    x = inputs(2, 128, 1250, torch.float32)
    threads = torch.get_num_threads()
    try:
        with torch.no_grad():
            torch.set_num_threads(1)
            one = conv_op(conv, resblock_op(block, conv_transpose_op(up, x)))
            torch.set_num_threads(2)
            two = conv_op(conv, resblock_op(block, conv_transpose_op(up, x)))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    C=st.sampled_from([8, 16, 48, 12, 3]),
    k=st.integers(1, 6),
    dilation=st.integers(1, 3),
    causal=st.booleans(),
    pad_mode=st.sampled_from(["reflect", "constant", "replicate", "circular"]),
    B=st.integers(1, 3),
    T=st.integers(1, 400),
    seed=st.integers(0, 2**16),
)
def test_resblock_property(C, k, dilation, causal, pad_mode, B, T, seed):
    if pad_mode == "circular" and T < (k - 1) * dilation:
        return
    block = make_block(C, k, dilation, causal=causal, pad_mode=pad_mode, compress=1 if C < 8 else 2, seed=seed)
    x = inputs(B, C, T, torch.float32, seed=seed)
    with torch.no_grad():
        want = layer_by_layer(block, x)
        block.float()
        check(resblock_op(block, x), want, torch.float32)


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


def test_argument_errors():
    block = make_block(16)
    c1, c2 = block.conv1, block.conv2
    x = inputs(1, 16, 20, torch.float32)
    args = (c1.weight, c1.bias, c2.weight, c2.bias)
    with torch.no_grad():
        with pytest.raises(TypeError, match="float32 or bfloat16"):
            elu_resblock(x.double(), *(a.double() for a in args), 1, 1, 1, "reflect", 1.0)
        with pytest.raises(TypeError, match="dtype"):
            elu_resblock(x, *(a.bfloat16() for a in args), 1, 1, 1, "reflect", 1.0)
        with pytest.raises(ValueError, match="pad_left \\+ pad_right"):
            elu_resblock(x, *args, 1, 1, 0, "reflect", 1.0)
        with pytest.raises(ValueError, match="channels"):
            elu_resblock(inputs(1, 8, 20, torch.float32), *args, 1, 1, 1, "reflect", 1.0)
        with pytest.raises(ValueError, match="pad_mode"):
            elu_resblock(x, *args, 1, 1, 1, "mirror", 1.0)
        with pytest.raises(ValueError, match="circular padding"):
            elu_resblock(
                inputs(1, 16, 2, torch.float32), c1.weight, c1.bias, c2.weight, c2.bias, 3, 3, 3, "circular", 1.0
            )
        with pytest.raises(ValueError, match="dilation"):
            elu_resblock(x, *args, 0, 1, 1, "reflect", 1.0)
        with pytest.raises(ValueError, match="\\[B, C, 1, T\\]"):
            elu_conv(x.squeeze(2), torch.zeros(1, 16, 1, 7), torch.zeros(1), 1, 3, 3, "reflect", 1.0)
        with pytest.raises(ValueError, match="bias"):
            elu_conv(x, torch.zeros(1, 16, 1, 7), torch.zeros(2), 1, 3, 3, "reflect", 1.0)


@pytest.mark.parametrize("op", ["elu_resblock", "elu_conv", "elu_conv_transpose"])
def test_opcheck(op):
    block = make_block(16).requires_grad_(False)
    x = inputs(2, 16, 40, torch.float32)
    if op == "elu_resblock":
        c1, c2 = block.conv1, block.conv2
        args = (x, c1.weight, c1.bias, c2.weight, c2.bias, 1, 1, 1, "reflect", 1.0)
    elif op == "elu_conv":
        args = (x, torch.randn(2, 16, 1, 7), torch.randn(2), 1, 3, 3, "replicate", 0.7)
    else:
        args = (x, torch.randn(16, 8, 1, 8), torch.randn(8), 4, 2, 2, 0.7)
    torch.library.opcheck(
        getattr(torch.ops.jasco_fast, op).default,
        args,
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static", "test_aot_dispatch_dynamic"),
    )


def fused(*layers, dtype=torch.float32):
    """The module types DecoderLayers(*layers) in dtype holds once fused."""
    return [type(m) for m in DecoderLayers(*layers).to(dtype).fuse()]


def test_which_residual_blocks_fuse():
    """fuse() swaps in FusedResBlock for ELU residual blocks up to FUSED_RESBLOCK_MAX_CHANNELS (by dtype) on the
    CPU, in float32 and bfloat16 only; the FusedResBlock holds the block's own parameters."""
    widest, bf16 = FUSED_RESBLOCK_MAX_CHANNELS[torch.float32], FUSED_RESBLOCK_MAX_CHANNELS[torch.bfloat16]
    assert fused(make_block(widest)) == [FusedResBlock]
    assert fused(make_block(widest), dtype=torch.bfloat16) == [FusedResBlock]
    assert fused(make_block(16), dtype=torch.float64) == [ResBlock]
    assert fused(make_block(16), dtype=torch.float16) == [ResBlock]
    assert fused(make_block(2 * widest)) == [ResBlock]
    assert fused(make_block(bf16), dtype=torch.bfloat16) == [FusedResBlock]
    assert fused(make_block(2 * bf16), dtype=torch.bfloat16) == [ResBlock]
    assert [type(m) for m in DecoderLayers(make_block(16)).to("meta").fuse()] == [ResBlock]
    block = make_block(16)
    block.act2 = torch.nn.ReLU()
    assert fused(block) == [ResBlock]
    block = make_block(16)
    layers = DecoderLayers(block).fuse()
    assert layers[0].conv1 is block.conv1 and layers[0].conv2.weight is block.conv2.weight


def test_fused_block_runs_the_layers_where_the_op_does_not_apply():
    """A FusedResBlock runs the op for its kernel dtype on the CPU without gradients, and the block's own layers
    otherwise (gradients wanted, another dtype after fusing): exactly what the unfused block gives there."""
    block = make_block(16)
    layers = DecoderLayers(make_block(16)).fuse()

    def ran_op(x):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            y = layers(x)
        return "jasco_fast::elu_resblock" in {e.name for e in prof.events()}, y

    x = inputs(1, 16, 12, torch.float32)
    with torch.no_grad():
        used, got = ran_op(x)
    assert used and torch.equal(got, resblock_op(block, x))
    with torch.enable_grad():  # the ops have no autograd formula: the layers run, gradients flow
        used, got = ran_op(x)
        assert not used and got.requires_grad
        torch.testing.assert_close(got, block(x), rtol=0, atol=0)
    layers.double()  # fused for float32, moved to float64: the layers' math
    with torch.no_grad():
        used, got = ran_op(x.double())
        assert not used
        torch.testing.assert_close(got, block.double()(x.double()), rtol=0, atol=0)


def test_where_the_decoder_upsamples_with_the_op():
    """ELU + ConvTranspose is fused for float32 up to FUSED_CONV_TRANSPOSE_MAX_CHANNELS input channels (the
    layers' path elsewhere: wider, bfloat16, gradients wanted, another activation), with the layers' result."""
    widest = FUSED_CONV_TRANSPOSE_MAX_CHANNELS[torch.float32]
    assert torch.bfloat16 not in FUSED_CONV_TRANSPOSE_MAX_CHANNELS

    def ran_op(layers, x):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            y = layers(x)
        return "jasco_fast::elu_conv_transpose" in {e.name for e in prof.events()}, y

    for C, dtype, grad, act, expect in (
        (widest, torch.float32, False, torch.nn.ELU(), True),
        (2 * widest, torch.float32, False, torch.nn.ELU(), False),
        (16, torch.bfloat16, False, torch.nn.ELU(), False),
        (16, torch.float32, True, torch.nn.ELU(), False),
        (16, torch.float32, False, torch.nn.ReLU(), False),
    ):
        plain = DecoderLayers(act, make_upsampler(C, 8, 4)).to(dtype)
        layers = DecoderLayers(*plain).fuse()
        x = inputs(1, C, 9, dtype)
        with torch.set_grad_enabled(grad):
            used, got = ran_op(layers, x)
        assert used == expect, (C, dtype, grad, act)
        if used:  # the op's arithmetic: against float64, with the op's tolerance
            check(got.detach(), upsampled_layers(rounded(plain[1], dtype), x, 1.0), dtype)
        else:  # torch's own layers, whose rounding depends on the CPU (bfloat16 is emulated without
            # AVX512-BF16): exactly what calling them one by one gives
            with torch.set_grad_enabled(grad):
                torch.testing.assert_close(got, plain[1](plain[0](x)), rtol=0, atol=0)


def test_decoder_fuses_its_tail_and_matches_reference():
    torch.manual_seed(0)
    decoder = SEANetDecoder(DecoderConfig(dimension=16, n_filters=8, ratios=(2, 2), lstm=1)).eval()
    keys = {k: v for k, v in decoder.state_dict().items()}
    assert decoder.fuse() is decoder
    assert decoder.state_dict().keys() == keys.keys()
    assert all(v is keys[k] or torch.equal(v, keys[k]) for k, v in decoder.state_dict().items())
    assert isinstance(decoder.layers, DecoderLayers)
    assert isinstance(decoder.layers[2:], DecoderLayers)  # sliced, as chunked decoding slices it
    assert {FusedResBlock, FusedEluConv, FusedEluConvTranspose} <= {type(m) for m in decoder.layers}
    latents = torch.randn(2, 30, 16)
    with torch.no_grad():
        want = reference.decode(decoder, latents)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            got = decoder((latents * reference.JASCO_LATENT_STD + reference.JASCO_LATENT_MEAN).transpose(1, 2))
    ran = {e.name for e in prof.events()}
    assert {"jasco_fast::elu_resblock", "jasco_fast::elu_conv", "jasco_fast::elu_conv_transpose"} <= ran
    assert decoder.layers[-1].weight.shape[0] <= FUSED_CONV_MAX_OUT_CHANNELS
    err = (got.double() - want.double()).abs().max().item()
    assert err <= 1e-5 * want.abs().max().item()


def test_unfused_decoder_runs_layer_by_layer():
    """Not fused, no op runs and a forward hook on every layer fires (what fidelity calibration relies on)."""
    torch.manual_seed(0)
    decoder = SEANetDecoder(DecoderConfig(dimension=16, n_filters=8, ratios=(2, 2), lstm=1)).eval()
    fired = []
    for name, module in decoder.named_modules():
        if isinstance(module, (Conv, ConvTranspose, torch.nn.ELU)):
            module.register_forward_hook(lambda m, i, o, name=name: fired.append(name))
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        decoder(torch.randn(1, 16, 12))
    assert not {e.name for e in prof.events()} & {
        "jasco_fast::elu_resblock",
        "jasco_fast::elu_conv",
        "jasco_fast::elu_conv_transpose",
    }
    assert sorted(fired) == sorted(
        name for name, m in decoder.named_modules() if isinstance(m, (Conv, ConvTranspose, torch.nn.ELU))
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_decoder_is_the_explicit_op_calls(dtype, channels_last):
    """A fused decoder's output is bit for bit the ops and layers called one by one (the decision the decoder
    made per call before fuse() existed), and its unfused twin's within the ops' tolerance; both share one
    state_dict."""
    torch.manual_seed(0)
    plain = SEANetDecoder(DecoderConfig(dimension=16, n_filters=16, ratios=(4, 2), lstm=1)).eval().to(dtype)
    if channels_last:
        plain.to_channels_last()
    decoder = SEANetDecoder(plain.config).to(dtype)
    decoder.load_state_dict(plain.state_dict())
    if channels_last:
        decoder.to_channels_last()
    decoder.fuse()
    assert decoder.state_dict().keys() == plain.state_dict().keys()
    decoder.load_state_dict(plain.state_dict())  # a checkpoint loads into a fused decoder too (strict)
    x = torch.randn(2, 16, 25).to(dtype)
    with torch.no_grad():
        got = decoder(x)
        y, layers, i = x.unsqueeze(2), list(plain.layers), 0
        while i < len(layers):
            layer, after = layers[i], layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(layer, ResBlock) and layer.conv1.weight.shape[1] <= FUSED_RESBLOCK_MAX_CHANNELS[dtype]:
                y = resblock_op(layer, y)
            elif isinstance(layer, torch.nn.ELU) and isinstance(after, Conv):
                y, i = conv_op(after, y, layer.alpha), i + 1
            elif (
                isinstance(layer, torch.nn.ELU)
                and isinstance(after, ConvTranspose)
                and after.weight.shape[0] <= FUSED_CONV_TRANSPOSE_MAX_CHANNELS.get(dtype, 0)
            ):
                y, i = conv_transpose_op(after, y, layer.alpha), i + 1
            else:
                y = layer(y)
            i += 1
        assert torch.equal(got, y.squeeze(2).contiguous())
        unfused = plain(x)
    err = (got.double() - unfused.double()).abs().max().item()
    assert err <= (1e-5 if dtype == torch.float32 else 2**-6) * unfused.double().abs().max().item()


def test_fused_decoder_moved_elsewhere_runs_the_layers():
    """The safe rule for .to() after fuse(): each fused module runs its op only for the dtype it was fused for
    (on the CPU); moved to another dtype it runs the layers' math, bit for bit the unfused decoder's."""
    torch.manual_seed(0)
    plain = SEANetDecoder(DecoderConfig(dimension=16, n_filters=16, ratios=(4, 2), lstm=0)).eval()
    decoder = SEANetDecoder(plain.config)
    decoder.load_state_dict(plain.state_dict())
    decoder.fuse().double()
    x = torch.randn(1, 16, 20, dtype=torch.float64)
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        got = decoder(x)
    assert not any(e.name.startswith("jasco_fast::elu") for e in prof.events())
    with torch.no_grad():
        assert torch.equal(got, plain.double()(x))


@pytest.mark.parametrize("isa", ["avx512", "avx2", "portable"])
def test_lower_instruction_sets(isa):
    """Every copy of the loops on one machine (JASCO_FAST_TAIL_ISA caps the choice in a fresh process)."""
    script = (
        "import torch, test_elu_conv as t\n"
        "for dtype in (torch.float32, torch.bfloat16):\n"
        "    t.test_resblock_matches_layers(dtype, 64, 2, 3, 1, False, 'reflect')\n"
        "    t.test_resblock_matches_layers(dtype, 32, 2, 5, 3, False, 'replicate')\n"
        "    t.test_conv_matches_layers(dtype, 64, 2, 7, 1, True, 'reflect')\n"
        "    t.test_conv_transpose_matches_layers(dtype, 128, 64, 4, None, False)\n"
        "    t.test_conv_transpose_matches_layers(dtype, 24, 8, 3, 5, False)\n"
        "    for op in ('elu_resblock', 'elu_conv_transpose', 'elu_conv'):\n"
        "        t.test_non_finite_inputs_spread_like_the_layers(op, dtype)\n"
        "print('ok')\n"
    )
    env = child_env(Path(__file__).parent, JASCO_FAST_TAIL_ISA=isa)
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]


def test_bfloat16_dot_copy_follows_torchs_amx_answer():
    """The bfloat16 dot-product copy runs exactly on CPUs with AVX-512 and AVX512-BF16 and without AMX, AMX as
    torch.cpu._is_amx_tile_supported() answers it (the C++ side asks CPUID itself, csrc/cpu/cpu_isa.h). No op
    reports the tail kernels' choice, so the outputs tell: in a process without ISA caps, bfloat16 blocks and
    transposed convolutions differ from the float32 copies' (JASCO_FAST_TAIL_ISA=avx512) exactly when the dot
    copy ran (it rounds the activations it feeds to its dot products)."""
    script = (
        "import hashlib, torch, test_elu_conv as t\n"
        "x = t.inputs(1, 64, 600, torch.bfloat16)\n"
        "block = t.make_block(64, 3, 1).to(torch.bfloat16)\n"
        "layer = t.make_upsampler(64, 32, 4).to(torch.bfloat16)\n"
        "with torch.no_grad():\n"
        "    outs = (t.resblock_op(block, x), t.conv_transpose_op(layer, x))\n"
        "print(' '.join(hashlib.sha256(o.contiguous().view(torch.int16).numpy().tobytes()).hexdigest() for o in outs))\n"
    )

    def output_hashes(**caps):
        env = child_env(Path(__file__).parent, **caps)
        for name in ("JASCO_FAST_ISA", "JASCO_FAST_TAIL_ISA"):
            if name not in caps:
                env.pop(name, None)
        run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        return run.stdout.split()

    uncapped, float32_copies = output_hashes(), output_hashes(JASCO_FAST_TAIL_ISA="avx512")
    dot_copy = (
        torch.cpu._is_avx512_supported()
        and torch.cpu._is_avx512_bf16_supported()
        and not torch.cpu._is_amx_tile_supported()
    )
    assert [a != b for a, b in zip(uncapped, float32_copies)] == [dot_copy, dot_copy]


def test_bfloat16_block_at_most_the_layers_error():
    """bfloat16: the op's error against float64 is at most 1.25x that of the decoder's own unfused bfloat16 layers
    (oneDNN convolutions, bfloat16 tensors between them), whichever copy this CPU runs."""
    block = make_block(64, 3, 1)
    x = inputs(1, 64, 3000, torch.bfloat16)
    want = layer_by_layer(rounded(block, torch.bfloat16), x)
    b16 = block.to(torch.bfloat16)
    with torch.no_grad():
        layers = (b16.shortcut(x) + b16.conv2(b16.act2(b16.conv1(b16.act1(x))))).double()
        got = resblock_op(b16, x).double()
    err_layers = (layers - want).abs().max().item()
    err_op = (got - want).abs().max().item()
    assert err_op <= 1.25 * err_layers, f"op {err_op:.3g} against the layers' {err_layers:.3g}"
