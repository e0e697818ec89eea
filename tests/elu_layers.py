"""What the tests of the CPU tail ops jasco_fast::elu_resblock, jasco_fast::elu_conv and
jasco_fast::elu_conv_transpose (csrc/cpu/elu_conv.cpp; tests/ops/test_elu_*.py) and of the decoder's fusion
(tests/test_decoder_fuse.py) share: the decoder layers with random weights, the ops called with a layer's
arguments, the layers' float64 path, and the tolerance check.

Channel counts pick the kernel's copy: multiples of 16 run the AVX-512 loops (on CPUs that have AVX-512; for
bfloat16 residual blocks the AVX512-BF16 copy where the CPU has it), other multiples of 8 the AVX2 ones, anything
else the portable loops; each module's test_lower_instruction_sets runs the lower copies in processes where
JASCO_FAST_TAIL_ISA caps the choice.
Tolerances (max error / peak of the float64 result): float32 2e-6 (float32 arithmetic, another summation
order than oneDNN); bfloat16 2^-8 (inputs and weights are bf16-rounded first; the float32 copies round only the
output, the AVX512-BF16 copy also the two activations it feeds to its dot products, as the unfused bfloat16 layers
do), and at most 1.25x the error of the unfused bfloat16 layers themselves
(tests/ops/test_elu_resblock.py::test_bfloat16_block_at_most_the_layers_error)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from checkpoints import child_env

from jasco_fast import DecoderConfig
from jasco_fast.decoder import ConvTranspose, ResBlock
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


def check_non_finite_spread(layer, run, layers, C, T, dtype):
    """NaN and +-inf put into the input of ``run(layer, x)`` spread as through ``layers(layer, x)`` (float64), and
    the finite outputs keep the dtype's tolerance. ``layer`` comes in float32, rounded to dtype."""
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


def check_passes_under_tail_isa(test_file: Path, isa: str, calls: str) -> None:
    """Python ``calls`` (which call test_file's tests, imported as ``t``) pass in a fresh process whose copies of the
    loops JASCO_FAST_TAIL_ISA=isa caps."""
    script = f"import torch, {test_file.stem} as t\n{calls}print('ok')\n"
    env = child_env(test_file.parent, JASCO_FAST_TAIL_ISA=isa)
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]


def check_same_bits_for_any_thread_count(run, *args) -> None:
    """``run(*args)`` gives the same bits on one thread and on two: every tile is computed the same way whichever
    thread takes it."""
    threads = torch.get_num_threads()
    try:
        with torch.no_grad():
            torch.set_num_threads(1)
            one = run(*args)
            torch.set_num_threads(2)
            two = run(*args)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
