"""jasco_fast::elu_resblock (csrc/cpu/elu_conv.cpp), the SEANet residual block with its two ELUs in one pass,
against the decoder's ResBlock layer by layer in float64; the kernel copies and tolerances are in tests/elu_layers.py.
Where the decoder runs it: tests/test_decoder_fuse.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from checkpoints import child_env
from elu_layers import (
    check,
    check_non_finite_spread,
    check_passes_under_tail_isa,
    check_same_bits_for_any_thread_count,
    inputs,
    layer_by_layer,
    make_block,
    resblock_op,
    rounded,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jasco_fast.ops import elu_resblock

# reference


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


def test_alpha_and_layouts():
    block = make_block(32, alpha=0.4)
    x = inputs(2, 32, 300, torch.float32)
    with torch.no_grad():
        want = layer_by_layer(block, x)
        block.float()
        check(resblock_op(block, x), want, torch.float32)
        check(resblock_op(block, x.contiguous()), want, torch.float32)  # NCHW input: copied, same result


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_finite_inputs_spread_like_the_layers(dtype):
    """NaN and +-inf through the op's ELUs (bfloat16 activations take the bfloat16-accurate ELU) spread as
    through the layers; the finite outputs keep the dtype's tolerance."""
    check_non_finite_spread(rounded(make_block(32), dtype), resblock_op, layer_by_layer, 32, 200, dtype)


def test_same_bits_for_any_thread_count():
    """Every tile is computed the same way whichever thread takes it."""
    block = make_block(64)
    x = inputs(2, 64, 5000, torch.float32)
    check_same_bits_for_any_thread_count(resblock_op, block, x)


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


@pytest.mark.parametrize("isa", ["avx512", "avx2", "portable"])
def test_lower_instruction_sets(isa):
    """Every copy of the loops on one machine (JASCO_FAST_TAIL_ISA caps the choice in a fresh process)."""
    calls = (
        "for dtype in (torch.float32, torch.bfloat16):\n"
        "    t.test_resblock_matches_layers(dtype, 64, 2, 3, 1, False, 'reflect')\n"
        "    t.test_resblock_matches_layers(dtype, 32, 2, 5, 3, False, 'replicate')\n"
        "    t.test_non_finite_inputs_spread_like_the_layers(dtype)\n"
    )
    check_passes_under_tail_isa(Path(__file__), isa, calls)


# opcheck


def test_opcheck():
    block = make_block(16).requires_grad_(False)
    x = inputs(2, 16, 40, torch.float32)
    c1, c2 = block.conv1, block.conv2
    args = (x, c1.weight, c1.bias, c2.weight, c2.bias, 1, 1, 1, "reflect", 1.0)
    torch.library.opcheck(
        torch.ops.jasco_fast.elu_resblock.default,
        args,
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static", "test_aot_dispatch_dynamic"),
    )


# gradcheck: does not apply, the op has no autograd formula (a FusedResBlock runs its layers when gradients are
# wanted: tests/test_decoder_fuse.py)

# torch.compile


def test_torch_compile_fullgraph():
    block = make_block(16).requires_grad_(False)
    c1, c2 = block.conv1, block.conv2
    x = inputs(2, 16, 40, torch.float32)

    def fn(x, w1, b1, w2, b2):
        return elu_resblock(torch.relu(x), w1, b1, w2, b2, 1, 1, 1, "reflect", 1.0) * 2

    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    with torch.no_grad():
        assert torch.equal(
            compiled(x, c1.weight, c1.bias, c2.weight, c2.bias), fn(x, c1.weight, c1.bias, c2.weight, c2.bias)
        )


# argument errors


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


def test_bfloat16_dot_copy_follows_torchs_amx_answer():
    """The bfloat16 dot-product copy runs exactly on CPUs with AVX-512 and AVX512-BF16 and without AMX, AMX as
    torch.cpu._is_amx_tile_supported() answers it (the C++ side asks CPUID itself, csrc/cpu/cpu_isa.h). No op
    reports the tail kernels' choice, so the outputs tell: in a process without ISA caps, bfloat16 blocks and
    transposed convolutions differ from the float32 copies' (JASCO_FAST_TAIL_ISA=avx512) exactly when the dot
    copy ran (it rounds the activations it feeds to its dot products)."""
    script = (
        "import hashlib, torch, elu_layers as t\n"
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
