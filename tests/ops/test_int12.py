"""jasco_fast::pack_int12, jasco_fast::elu_resblock_int12 and jasco_fast::elu_conv_transpose_int12 (csrc/cpu/elu_conv.cpp,
"12-bit integer products"): the 12-bit integer copies of elu_resblock and elu_conv_transpose.

- pack_int12: its layout and values against a direct computation, bit for bit (its fallback too).
- Each op against its PyTorch fallback (jasco_fast/ops.py: the kernel's tiles, scales and levels, exact sums). They
  differ by float32 rounding (the kernel adds its int32 sums to float32 in chunks of at most 256 input pairs, one FMA
  each; the fallback rounds an exact sum once) and by a few one-level flips: the kernel's ELU (a polynomial in the
  AVX2 copy, libm's expm1 in the portable one) is not torch's bit for bit (abs error < 1e-7), so a value within ~1e-7
  of a rounding boundary can take the next level. Bound per output: :func:`resblock_bounds` / :func:`transpose_bounds`
  ``rounding + FLIPS * flip``. That bound is of the order of the quantisation error itself, so where flips are rare
  at least MOST_EXACT of the outputs must also lie within the rounding term alone (the float op, unquantised, fails
  that: test_the_checks_can_fail): every transposed convolution (a flip moves one row's outputs), and residual blocks
  with alpha = 0 (an exact ELU on both sides). With alpha != 0 a flip of conv1's input under the tile's largest hidden
  value moves that tile's hidden scale, and with it most of the tile's outputs (within the flip term; in the AVX2
  copy about one tile in 500 at C = 128, k = 3: k C values, each within the ELUs' difference of a boundary with
  probability ~6e-6).
- Each op against the float op on the same float weights: within the quantisation bound (every product's error
  |w| da + |a| dw + da dw, da = s_a / 2 with the global largest |activation| bounding each tile's scale, dw = s_w / 2),
  which is a small fraction of the output's peak, and not equal (it really quantises).
Channel counts pick the copy: C, H and N = stride * Cout all multiples of 16 take the AVX2 loops (on CPUs with AVX2),
anything else the portable ones; test_lower_instruction_sets runs the AVX2 shapes on the portable copy.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from checkpoints import kernel_error
from elu_layers import check_passes_under_tail_isa, check_same_bits_for_any_thread_count
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jasco_fast import ops
from jasco_fast.decoder import _pad_time
from jasco_fast.ops import elu_conv_transpose_int12, elu_resblock_int12, pack_int12

LEVELS = 2047
U = 2.0**-24  # float32's unit roundoff
ELU_ERROR = 1e-7  # |the kernel's ELU - the exact ELU| (csrc/cpu/elu_conv_kernels.h: velu)
FLIPS = 3  # one-level flips allowed per output
MOST_EXACT = 0.9  # the share of outputs within the rounding term alone, where it is checked
# The quantisation bound is below this fraction of the output's peak: a worst case, linear in the number of products
# (measured: transposed convolutions 0.1-2% up to 512 channels; residual blocks 0.2-4% up to 64 channels, 27% at
# C = 512, k = 7)
FLOAT_BOUND_FRACTION = {"resblock": 0.3, "transpose": 0.05}
PAD_MODES = ["constant", "reflect", "replicate", "circular"]


# ---------------------------------------------------------------------------------------------------
# pack_int12


def direct_levels(weight: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(levels int64 [N, I, taps], scale float32 [N]) of pack_int12(weight, stride), computed column by column."""
    w = weight.float()
    if stride == 0:
        conv = w.squeeze(2)  # [O, I, k]
    else:
        Cin, Cout, _, k = w.shape
        taps = -(-k // stride)
        conv = torch.zeros(stride * Cout, Cin, taps)
        for p in range(stride):
            for j in range(taps):
                m = (taps - 1 - j) * stride + p  # the kernel position of phase p, tap j
                if m < k:
                    conv[p * Cout : (p + 1) * Cout, :, j] = w[:, :, 0, m].T
    scale = conv.abs().amax(dim=(1, 2)) / torch.tensor(LEVELS, dtype=torch.float32)
    levels = torch.zeros(conv.shape, dtype=torch.int64)
    for n in range(conv.shape[0]):
        if scale[n] > 0:
            inverse = torch.tensor(1.0, dtype=torch.float32) / scale[n]
            levels[n] = (conv[n] * inverse).round().clamp(-LEVELS, LEVELS).long()  # round: half to even
    return levels, scale


def unpacked(pairs: torch.Tensor) -> torch.Tensor:
    """pack_int12's pairs [P, taps, I / 2, 16] -> levels int64 [16 P, I, taps]: lane (p, j, c, v) holds column
    16 p + v, inputs 2c (low int16) and 2c + 1 (high int16) of tap j."""
    lanes = pairs.long() & 0xFFFFFFFF
    halves = torch.stack([lanes & 0xFFFF, lanes >> 16], dim=-1)
    halves = torch.where(halves >= 0x8000, halves - 0x10000, halves)  # [P, taps, I / 2, 16, 2]
    P, taps, K2 = pairs.shape[:3]
    return halves.permute(0, 3, 2, 4, 1).reshape(16 * P, 2 * K2, taps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "shape,stride",
    [
        ((32, 16, 1, 1), 0),  # a 1x1 convolution, whole panels
        ((20, 6, 1, 3), 0),  # N = 20: the second panel padded with zeros
        ((16, 64, 1, 7), 0),
        ((6, 5, 1, 7), 3),  # transposed, N = 15, k not a multiple of the stride: zeros past k
        ((16, 8, 1, 16), 8),  # SEANet's k = 2 * stride
        ((4, 3, 1, 5), 2),
        ((8, 4, 1, 9), 4),
        ((2, 1, 1, 1), 1),
    ],
)
def test_pack_layout_and_values(shape, stride, dtype):
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape) + stride)).to(dtype)
    pairs, scale = pack_int12(weight, stride)
    levels, want_scale = direct_levels(weight, stride)
    N, Cin, taps = levels.shape
    assert pairs.dtype == torch.int32 and pairs.is_contiguous()
    assert pairs.shape == (-(-N // 16), taps, Cin // 2, 16)
    assert scale.dtype == torch.float32 and torch.equal(scale, want_scale)
    got = unpacked(pairs)
    assert torch.equal(got[:N], levels)
    assert not got[N:].any()  # the last panel's columns past N
    assert levels.abs().max() == LEVELS  # every column's largest weight takes the top level
    fallback = ops.pack_int12_fallback(weight, stride)
    assert torch.equal(fallback[0], pairs) and torch.equal(fallback[1], scale)


def test_pack_rounds_half_to_even_and_zero_columns():
    weight = torch.zeros(3, 8, 1, 1)
    weight[0, :, 0, 0] = torch.tensor([2047.0, 0.5, 1.5, 2.5, -0.5, -2.5, 1000.5, -3.5])  # scale 1: exact halves
    weight[2, :, 0, 0] = torch.tensor([3 * 2047.0, 3.0, -6.0, 0.0, 4.5, 1.5, -1.5, 0.0])  # scale 3
    pairs, scale = pack_int12(weight)
    assert scale.tolist() == [1.0, 0.0, 3.0]  # column 1 is all zeros: scale 0, levels 0
    levels = unpacked(pairs)[:3, :, 0]
    assert levels[0].tolist() == [2047, 0, 2, 2, 0, -2, 1000, -4]
    assert levels[1].tolist() == [0] * 8
    assert levels[2].tolist() == [2047, 1, -2, 0, 2, 0, 0, 0]  # 4.5 / 3 = 1.5 -> 2, 1.5 / 3 = 0.5 -> 0


@pytest.mark.parametrize("run", [pack_int12, ops.pack_int12_fallback], ids=["kernel", "fallback"])
def test_pack_refuses_an_infinite_weight(run):
    weight = torch.randn(4, 4, 1, 3)
    weight[1, 2, 0, 1] = float("inf")
    with pytest.raises(ValueError, match="pack_int12: weight holds a NaN or an infinity"):
        run(weight, 0)


def test_pack_fallback_refuses_a_nan_weight():
    weight = torch.randn(4, 6, 1, 3)
    weight[1, 2, 0, 1] = float("nan")
    with pytest.raises(ValueError, match="pack_int12: weight holds a NaN or an infinity"):
        ops.pack_int12_fallback(weight.transpose(0, 1).contiguous(), 2)
    with pytest.raises(ValueError, match="pack_int12: weight holds a NaN or an infinity"):
        ops.pack_int12_fallback(weight, 0)


def test_pack_kernel_refuses_a_nan_weight():
    weight = torch.randn(4, 4, 1, 3)
    weight[1, 2, 0, 1] = float("nan")
    with pytest.raises(ValueError, match="pack_int12: weight holds a NaN or an infinity"):
        pack_int12(weight)


@pytest.mark.parametrize(
    "weight,stride,error,message",
    [
        (torch.randn(4, 3, 1, 3), 0, ValueError, "positive even number, got 3"),  # odd input channels
        (torch.randn(3, 4, 1, 3), 2, ValueError, "positive even number, got 3"),  # transposed: inputs first
        (torch.randn(4, 4, 3), 0, ValueError, r"weight must be \[out, in, 1, k\]"),
        (torch.randn(4, 4, 2, 3), 0, ValueError, r"weight must be \[out, in, 1, k\]"),
        (torch.randn(4, 4, 1, 0), 0, ValueError, "no elements"),
        (torch.randn(4, 4, 1, 3), -1, ValueError, "transposed_stride must be >= 0"),
        (torch.randn(4, 4, 1, 3).half(), 0, TypeError, "float32 or bfloat16"),
    ],
)
def test_pack_argument_errors(weight, stride, error, message):
    with pytest.raises(error, match=f"pack_int12: .*{message}"):
        pack_int12(weight, stride)
    with pytest.raises(kernel_error(error), match=f"pack_int12: .*{message}"):
        torch.ops.jasco_fast.pack_int12.default(weight, stride)


# ---------------------------------------------------------------------------------------------------
# The ops' cases, and the bounds that compare them


def make_resblock(B, C, H, T, k=3, dilation=1, pad_mode="reflect", causal=False, alpha=1.0, seed=0):
    """A residual block's float arguments (x, w1, b1, w2, b2, dilation, pad_left, pad_right, pad_mode, alpha)."""
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(H, C, 1, k, generator=g) / math.sqrt(C * k)
    w2 = torch.randn(C, H, 1, 1, generator=g) / math.sqrt(H)
    b1, b2 = torch.randn(H, generator=g) * 0.3, torch.randn(C, generator=g) * 0.3
    x = (torch.randn(B, C, 1, T, generator=g) * 1.5).contiguous(memory_format=torch.channels_last)
    span = (k - 1) * dilation
    right = 0 if causal else span // 2
    return x, w1, b1, w2, b2, dilation, span - right, right, pad_mode, alpha


def resblock_int12_args(x, w1, b1, w2, b2, dilation, pad_left, pad_right, pad_mode, alpha):
    """make_resblock's arguments for elu_resblock_int12 (weights packed)."""
    (p1, s1), (p2, s2) = pack_int12(w1), pack_int12(w2)
    return x, p1, s1, b1, p2, s2, b2, dilation, pad_left, pad_right, pad_mode, alpha


def make_transpose(B, C, Cout, T, stride, k, trim_left=0, trim_right=0, alpha=1.0, seed=0):
    """A transposed convolution's float arguments (x, weight, bias, stride, trim_left, trim_right, alpha)."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(C, Cout, 1, k, generator=g) / math.sqrt(2 * C)
    bias = torch.randn(Cout, generator=g) * 0.3
    x = (torch.randn(B, C, 1, T, generator=g) * 1.5).contiguous(memory_format=torch.channels_last)
    return x, weight, bias, stride, trim_left, trim_right, alpha


def transpose_int12_args(x, weight, bias, stride, trim_left, trim_right, alpha):
    w, s = pack_int12(weight, stride)
    return x, w, s, bias, stride, weight.shape[3], trim_left, trim_right, alpha


def chunks(pairs: int) -> int:
    """How many float32 FMAs the kernel adds an output's int32 sums with (at most 256 input pairs each)."""
    return -(-pairs // 256)


def conv(v, w, dilation=1):
    return F.conv2d(v, w, dilation=(1, dilation))


def resblock_bounds(x, w1, b1, w2, b2, dilation, pad_left, pad_right, pad_mode, alpha):
    """Per output (float64 [B, C, 1, T]): (rounding, flip, quantisation) bounds of elu_resblock_int12.

    Let S_a bound every tile's conv1 input scale (the largest |elu(x)| plus the kernel's ELU error, / 2047), da = S_a / 2
    + ELU_ERROR the error of a rounded activation, dw1 = s1 / 2 of a rounded weight. conv1's exact integer sum differs
    from the float convolution by E1 <= conv(|a|, dw1) + conv(da, |w1| + dw1); M1 = |b1| + conv(|a| + da, |w1| + dw1)
    bounds its partial sums. The hidden ELU (1-Lipschitz for alpha <= 1) moves by at most E1 + ELU_ERROR; S_h bounds
    its scales, dh = S_h / 2.
    - rounding (kernel vs fallback): the kernel rounds each of its chunks' FMAs (and the int32 -> float32 conversion of
      a chunk's sum), the fallback once: (2 chunks + 2) U M per layer. A hidden value that differs by R1 without
      changing level changes the output only through the hidden scale (by <= max R1 / 2047 per level): max R1
      sum_h (|w2| + dw2). Plus the float32 residual x + b2.
    - flip: one activation level more or less moves conv1 by <= S_a max|w1_h| in each hidden channel (and the hidden
      scale at most as much: x 2), through conv2 sum_h (|w2| + dw2); one hidden level moves the output by
      S_h max_h (|w2| + dw2).
    - quantisation (kernel vs the float op): sum_h (|w2| + dw2)(E1 + ELU_ERROR + dh) + |e| dw2, plus both sides'
      float32 rounding."""
    assert alpha <= 1.0  # (the ELU is 1-Lipschitz)
    x64 = x.double()
    C, H, k = x.shape[1], b1.shape[0], w1.shape[3]
    a = _pad_time(F.elu(x64, alpha), pad_left, pad_right, pad_mode)
    S_a = (a.abs().max().item() + ELU_ERROR) / LEVELS
    da = S_a / 2 + ELU_ERROR
    w1, w2 = w1.double(), w2.double()
    dw1 = (pack_int12(w1.float())[1].double() / 2).view(H, 1, 1, 1).expand_as(w1)
    dw2 = (pack_int12(w2.float())[1].double() / 2).view(C, 1, 1, 1).expand_as(w2)
    hidden = conv(a, w1, dilation) + b1.double().view(1, H, 1, 1)
    E1 = conv(a.abs(), dw1, dilation) + conv(torch.full_like(a, da), w1.abs() + dw1, dilation)
    M1 = b1.double().abs().view(1, H, 1, 1) + conv(a.abs() + da, w1.abs() + dw1, dilation)
    R1 = (2 * chunks(C * k // 2) + 2) * U * M1
    e = F.elu(hidden, alpha)
    de = E1 + (C * k + 2) * U * M1 + ELU_ERROR  # (with the float op's own rounding)
    S_h = (e.abs().max().item() + (de + R1).max().item()) / LEVELS
    dh = S_h / 2
    residual = x64 + b2.double().view(1, C, 1, 1)
    M2 = residual.abs() + conv(e.abs() + de + dh, w2.abs() + dw2)
    w2_abs_sum = (w2.abs() + dw2).sum(dim=(1, 2, 3)).view(1, C, 1, 1)
    rounding = U * residual.abs() + (2 * chunks(H // 2) + 2) * U * M2 + R1.max().item() * w2_abs_sum
    w1_max = (w1.abs() + dw1).amax(dim=(1, 2, 3))
    flip = 2 * S_a * conv(torch.ones_like(e), (w2.abs() + dw2) * w1_max.view(1, H, 1, 1))
    flip = flip + S_h * (w2.abs() + dw2).amax(dim=(1, 2, 3)).view(1, C, 1, 1)
    quantisation = conv(de + dh, w2.abs() + dw2) + conv(e.abs(), dw2) + (H + 2) * U * M2
    return rounding, flip, quantisation


def transpose_bounds(x, weight, bias, stride, trim_left, trim_right, alpha):
    """Per output (float64 [B, Cout, 1, L]): (rounding, flip, quantisation) bounds of elu_conv_transpose_int12, as in
    resblock_bounds for one layer: a weight's error is half the scale of its column (phase m % stride, channel o)."""
    C, Cout, _, k = weight.shape
    taps = -(-k // stride)
    a = F.elu(x.double(), alpha)
    S_a = (a.abs().max().item() + ELU_ERROR) / LEVELS
    da = S_a / 2 + ELU_ERROR
    w = weight.double()
    s = pack_int12(weight, stride)[1].double().view(stride, Cout)  # column p * Cout + o
    positions = torch.arange(k) % stride
    dw = (s[positions].T / 2).view(1, Cout, 1, k).expand_as(w)  # [C, Cout, 1, k]: half the column's scale

    def transposed(v, u):
        y = F.conv_transpose2d(v, u, stride=(1, stride))
        return y[..., trim_left : y.shape[-1] - trim_right]

    M = bias.double().abs().view(1, Cout, 1, 1) + transposed(a.abs() + da, w.abs() + dw)
    rounding = (2 * chunks(taps * C // 2) + 2) * U * M
    column_max = torch.zeros(stride, Cout, dtype=torch.float64)  # max |w| + dw over a column's inputs and taps
    for p in range(min(stride, k)):  # (phases p >= k hold no weight)
        column_max[p] = (w.abs() + dw)[:, :, 0, p::stride].amax(dim=(0, 2))
    length = rounding.shape[-1]
    phase = (torch.arange(length) + trim_left) % stride  # the untrimmed sample u * stride + p
    flip = S_a * column_max[phase].T.reshape(1, Cout, 1, length)
    quantisation = transposed(a.abs(), dw) + transposed(torch.full_like(a, da), w.abs() + dw)
    quantisation = quantisation + (taps * C + 2) * U * M
    return rounding, flip, quantisation


def check_against_fallback(got, want, rounding, flip, mostly_exact=True):
    """The kernel against its fallback: every output within rounding + FLIPS one-level flips, and (mostly_exact) at
    least MOST_EXACT of them within the rounding alone; both bounds far below the output's peak."""
    assert got.shape == want.shape and got.dtype == want.dtype == torch.float32
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert want.is_contiguous(memory_format=torch.channels_last)
    diff = (got.double() - want.double()).abs()
    peak = want.abs().max().item()
    # float32 rounding is below a level's effect, and the whole tolerance far below the peak
    tolerance = rounding + FLIPS * flip
    if flip.max() > 0:  # (else every output is a bias: a transposed kernel's phases past k, all trimmed but those)
        assert rounding.max().item() < 0.25 * flip.max().item(), (rounding.max().item(), flip.max().item())
    assert tolerance.max().item() < 0.02 * peak, (tolerance.max().item(), peak)
    worst = (diff - tolerance).max().item()
    assert worst <= 0, f"an output {worst:.3g} past its bound (peak {peak:.3g})"
    exact = (diff <= rounding).double().mean().item()
    assert not mostly_exact or exact >= MOST_EXACT, f"only {exact:.1%} of the outputs within float32 rounding"


def check_against_float(got, float_op, quantisation, op, weighted=True):
    """The kernel against the float op: within the quantisation bound, which is non-vacuous, and not equal (where the
    outputs are ``weighted``: not just biases)."""
    diff = (got.double() - float_op.double()).abs()
    peak = float_op.abs().max().item()
    assert quantisation.max().item() < FLOAT_BOUND_FRACTION[op] * peak, (quantisation.max().item(), peak)
    worst = (diff - quantisation).max().item()
    assert worst <= 0, f"an output {worst:.3g} past the quantisation bound (peak {peak:.3g})"
    # the op does round to 12 bits (a handful of outputs may come within float32 rounding of the float op by chance)
    assert not weighted or diff.numel() < 64 or diff.max().item() > 1e-6 * peak


def check_resblock(case):
    args = resblock_int12_args(*case)
    got = torch.ops.jasco_fast.elu_resblock_int12.default(*args)
    rounding, flip, quantisation = resblock_bounds(*case)
    alpha = case[-1]
    check_against_fallback(got, ops.elu_resblock_int12_fallback(*args), rounding, flip, mostly_exact=alpha == 0)
    check_against_float(got, ops.elu_resblock(*case), quantisation, "resblock")


def check_transpose(case):
    args = transpose_int12_args(*case)
    got = torch.ops.jasco_fast.elu_conv_transpose_int12.default(*args)
    rounding, flip, quantisation = transpose_bounds(*case)
    check_against_fallback(got, ops.elu_conv_transpose_int12_fallback(*args), rounding, flip)
    check_against_float(got, ops.elu_conv_transpose(*case), quantisation, "transpose", weighted=flip.max() > 0)


# ---------------------------------------------------------------------------------------------------
# elu_resblock_int12

# (C, H): the AVX2 copy (both multiples of 16; tiles of 512, 256, 64 and 32 steps, conv1's sums in 1 to 3 chunks)
# and the portable one
RESBLOCK_WIDTHS = [(32, 16), (64, 32), (256, 128), (512, 256), (6, 4), (24, 12), (16, 10)]


@pytest.mark.parametrize("C,H", RESBLOCK_WIDTHS)
@pytest.mark.parametrize("k,dilation,causal", [(3, 1, False), (3, 3, False), (7, 1, True), (1, 1, False)])
def test_resblock_matches_fallback_and_float(C, H, k, dilation, causal):
    tile = max(12, min(512, 16384 // max(C, H))) // 12 * 12
    for B, T, alpha in ((1, 1, 1.0), (2, 7, 0.0), (2, 2 * tile + 5, 1.0), (1, 2 * tile + 5, 0.0)):  # up to 3 tiles
        check_resblock(make_resblock(B, C, H, T, k, dilation, "reflect", causal, alpha, seed=C + T + k))


@pytest.mark.parametrize("pad_mode", PAD_MODES)
@pytest.mark.parametrize("C,H", [(32, 16), (6, 4)])
def test_resblock_pad_modes(pad_mode, C, H):
    for B, T, alpha in ((2, 6, 0.7), (1, 1100, 0.0), (1, 1100, 0.7)):
        check_resblock(make_resblock(B, C, H, T, 3, 3, pad_mode, alpha=alpha, seed=T))


@pytest.mark.parametrize("T", [1, 2, 3])
def test_resblock_reflect_shorter_than_padding(T):
    for alpha in (1.0, 0.0):
        check_resblock(make_resblock(2, 16, 16, T, 7, 1, "reflect", alpha=alpha))


# ---------------------------------------------------------------------------------------------------
# elu_conv_transpose_int12

# (C, Cout, stride, k): N = stride * Cout and C multiples of 16 take the AVX2 copy, others the portable one; k not a
# multiple of the stride leaves zero weights in the last tap
TRANSPOSE_SHAPES = [
    (32, 16, 4, 8),
    (16, 8, 2, 5),
    (64, 16, 8, 16),
    (512, 64, 2, 4),  # 2 taps x 256 pairs: two chunks; tiles of 128 rows
    (32, 2, 8, 19),
    (16, 8, 3, 7),  # N = 24: portable
    (6, 5, 5, 9),
    (24, 3, 6, 13),
    (10, 4, 7, 7),
]


@pytest.mark.parametrize("C,Cout,stride,k", TRANSPOSE_SHAPES)
def test_transpose_matches_fallback_and_float(C, Cout, stride, k):
    tile = max(12, min(512, 65536 // C)) // 12 * 12
    full = lambda T: (T - 1) * stride + k  # noqa: E731
    for B, T, trims in ((1, 1, (0, 0)), (2, 5, (stride - 1, 1)), (2, 2 * tile + 3, (k - stride, k - stride))):
        trims = tuple(min(t, (full(T) - 1) // 2) for t in trims)
        check_transpose(make_transpose(B, C, Cout, T, stride, k, *trims, seed=C + T + k))


def test_transpose_any_trim():
    for left, right in ((0, 0), (5, 0), (0, 9), (58, 0), (0, 58), (7, 3)):
        check_transpose(make_transpose(2, 16, 8, 8, 8, 11, left, right, alpha=0.4))


# ---------------------------------------------------------------------------------------------------
# Properties: random shapes against the fallback and the float op


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    C=st.sampled_from([16, 32, 2, 6, 24]),
    H=st.sampled_from([16, 32, 4, 10]),
    k=st.integers(1, 5),
    dilation=st.integers(1, 3),
    causal=st.booleans(),
    pad_mode=st.sampled_from(PAD_MODES),
    B=st.integers(1, 2),
    T=st.integers(1, 1200),
    alpha=st.sampled_from([1.0, 0.0, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_resblock_property(C, H, k, dilation, causal, pad_mode, B, T, alpha, seed):
    if pad_mode == "circular" and T < (k - 1) * dilation:
        return
    check_resblock(make_resblock(B, C, H, T, k, dilation, pad_mode, causal, alpha, seed))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    C=st.sampled_from([16, 32, 2, 6]),
    Cout=st.sampled_from([16, 8, 5, 1]),
    stride=st.integers(1, 8),
    extra=st.integers(-3, 3),
    B=st.integers(1, 2),
    T=st.integers(1, 600),
    trims=st.tuples(st.integers(0, 20), st.integers(0, 20)),
    seed=st.integers(0, 2**16),
)
def test_transpose_property(C, Cout, stride, extra, B, T, trims, seed):
    k = max(1, 2 * stride + extra)
    full = (T - 1) * stride + k
    left, right = (min(t, (full - 1) // 2) for t in trims)
    check_transpose(make_transpose(B, C, Cout, T, stride, k, left, right, seed=seed))


def test_the_checks_can_fail():
    """The float op (no rounding to 12 bits) passes for neither op's fallback check: most of its outputs are
    further from the fallback's than float32 rounding."""
    case = make_resblock(2, 32, 16, 600, 3, 1, alpha=0.0)
    args = resblock_int12_args(*case)
    rounding, flip, _ = resblock_bounds(*case)
    with pytest.raises(AssertionError, match="within float32 rounding|past its bound"):
        check_against_fallback(ops.elu_resblock(*case), ops.elu_resblock_int12_fallback(*args), rounding, flip, True)
    case = make_transpose(2, 32, 16, 300, 4, 8, 2, 2)
    args = transpose_int12_args(*case)
    rounding, flip, _ = transpose_bounds(*case)
    with pytest.raises(AssertionError, match="within float32 rounding|past its bound"):
        check_against_fallback(
            ops.elu_conv_transpose(*case), ops.elu_conv_transpose_int12_fallback(*args), rounding, flip
        )


# ---------------------------------------------------------------------------------------------------
# Non-finite inputs: NaN outputs in the tiles whose rounded input holds them


@pytest.mark.parametrize("C,H", [(32, 16), (6, 4)])
def test_resblock_non_finite_input(C, H):
    T, k, dilation = 1300, 3, 3  # conv1 reads 3 rows either side
    tile = 504  # clamp(16384 // max(C, H), 12, 512) // 12 * 12: three tiles
    case = list(make_resblock(2, C, H, T, k, dilation, "reflect"))
    x = case[0].clone()
    x[0, 1, 0, tile + 16] = float("nan")  # read by tile 1 only
    x[1, 0, 0, 2 * tile + 1] = float("inf")  # read by tile 1 (its halo) and tile 2
    x[1, 2, 0, 200] = float("-inf")  # elu(-inf) = -alpha is finite: only its own output is -inf
    case[0] = x
    args = resblock_int12_args(*case)
    got = torch.ops.jasco_fast.elu_resblock_int12.default(*args)
    want_nan = torch.zeros(2, C, 1, T, dtype=torch.bool)
    want_nan[0, :, :, tile : 2 * tile] = True
    want_nan[1, :, :, tile:] = True
    assert torch.equal(got.isnan(), want_nan)
    assert got[1, 2, 0, 200] == float("-inf") and got[~want_nan].isinf().sum() == 1
    want = ops.elu_resblock_int12_fallback(*args)
    assert torch.equal(want.isnan(), want_nan) and want[1, 2, 0, 200] == float("-inf")
    finite = got.isfinite()
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("C,Cout,stride", [(32, 16, 4), (6, 5, 3)])
def test_transpose_non_finite_input(C, Cout, stride):
    T, k = 1100, 3 * stride - 1  # 3 taps: row u reads x rows u - 2 ... u
    tile = 504  # clamp(65536 // C, 12, 512) // 12 * 12 rows: three tiles of the 1102 rows
    case = list(make_transpose(2, C, Cout, T, stride, k, 1, 2))
    x = case[0].clone()
    x[0, 3, 0, tile - 1] = float("nan")  # rows tile - 1 ... tile + 1: tiles 0 and 1
    x[1, 1, 0, 1050] = float("inf")  # rows 1050 ... 1052: tile 2
    case[0] = x
    args = transpose_int12_args(*case)
    got = torch.ops.jasco_fast.elu_conv_transpose_int12.default(*args)
    L = (T - 1) * stride + k - 3
    want_nan = torch.zeros(2, Cout, 1, L, dtype=torch.bool)
    want_nan[0, :, :, : 2 * tile * stride - 1] = True  # rows [0, 2 tile) -> samples [0, 2 tile stride), 1 trimmed
    want_nan[1, :, :, 2 * tile * stride - 1 :] = True
    assert torch.equal(got.isnan(), want_nan)
    want = ops.elu_conv_transpose_int12_fallback(*args)
    assert torch.equal(want.isnan(), want_nan)
    torch.testing.assert_close(got[~want_nan], want[~want_nan], rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------------------------------
# The copies, threads, opcheck, torch.compile, argument errors


def test_lower_instruction_sets():
    """The AVX2 shapes on the portable copy (JASCO_FAST_TAIL_ISA caps the choice in a fresh process)."""
    calls = (
        "t.test_resblock_matches_fallback_and_float(64, 32, 3, 3, False)\n"
        "t.test_transpose_matches_fallback_and_float(32, 16, 4, 8)\n"
        "t.test_resblock_non_finite_input(32, 16)\n"
        "t.test_transpose_non_finite_input(32, 16, 4)\n"
    )
    check_passes_under_tail_isa(Path(__file__), "portable", calls)


def test_same_bits_for_any_thread_count():
    case = make_resblock(2, 64, 32, 3000, 3, 1)
    check_same_bits_for_any_thread_count(
        lambda *a: torch.ops.jasco_fast.elu_resblock_int12.default(*a), *resblock_int12_args(*case)
    )
    case = make_transpose(2, 64, 32, 1500, 4, 8, 2, 2)
    check_same_bits_for_any_thread_count(
        lambda *a: torch.ops.jasco_fast.elu_conv_transpose_int12.default(*a), *transpose_int12_args(*case)
    )


def test_empty_batch():
    """B = 0: an empty output of the right shape and layout, from the kernel, the fallback and the fake kernel."""
    resblock = make_resblock(1, 16, 8, 20)
    transpose = make_transpose(1, 16, 8, 20, 4, 7)
    for op, fallback, args in (
        (
            torch.ops.jasco_fast.elu_resblock_int12.default,
            ops.elu_resblock_int12_fallback,
            resblock_int12_args(resblock[0][:0], *resblock[1:]),
        ),
        (
            torch.ops.jasco_fast.elu_conv_transpose_int12.default,
            ops.elu_conv_transpose_int12_fallback,
            transpose_int12_args(transpose[0][:0], *transpose[1:]),
        ),
    ):
        with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
            fake = op(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args))
        for out in (op(*args), fallback(*args)):
            assert out.shape == fake.shape and out.shape[0] == 0 and out.stride() == fake.stride()


_OPCHECK_UTILS = ("test_schema", "test_faketensor", "test_aot_dispatch_static", "test_aot_dispatch_dynamic")


def test_opcheck():
    torch.library.opcheck(
        torch.ops.jasco_fast.pack_int12.default, (torch.randn(20, 6, 1, 3), 0), test_utils=_OPCHECK_UTILS
    )
    torch.library.opcheck(
        torch.ops.jasco_fast.pack_int12.default, (torch.randn(6, 5, 1, 7), 3), test_utils=_OPCHECK_UTILS
    )
    case = make_resblock(2, 16, 8, 40, 3, 1)
    torch.library.opcheck(
        torch.ops.jasco_fast.elu_resblock_int12.default, resblock_int12_args(*case), test_utils=_OPCHECK_UTILS
    )
    case = make_transpose(2, 16, 8, 40, 4, 8, 2, 2, alpha=0.7)
    torch.library.opcheck(
        torch.ops.jasco_fast.elu_conv_transpose_int12.default, transpose_int12_args(*case), test_utils=_OPCHECK_UTILS
    )


def test_torch_compile_fullgraph():
    x, w1, b1, w2, b2, *rest = make_resblock(2, 16, 8, 40, 3, 1)
    (p1, s1), (p2, s2) = pack_int12(w1), pack_int12(w2)
    weight = make_transpose(2, 16, 8, 40, 4, 8)[1]
    w, s = pack_int12(weight, 4)

    def fn(x):
        y = elu_resblock_int12(torch.relu(x), p1, s1, b1, p2, s2, b2, *rest)
        return elu_conv_transpose_int12(y, w, s, b2[:8], 4, 8, 2, 2, 1.0) * 2

    compiled = torch.compile(fn, fullgraph=True, dynamic=False)
    assert torch.equal(compiled(x), fn(x))


def test_resblock_argument_errors():
    case = make_resblock(1, 16, 8, 20, 3, 1)
    x, p1, s1, b1, p2, s2, b2, *rest = resblock_int12_args(*case)
    bad = {
        "x float64": ((x.double(), p1, s1, b1, p2, s2, b2), TypeError, "x must be float32"),
        "pairs float32": ((x, p1.float(), s1, b1, p2, s2, b2), TypeError, "w1 must be int32 pairs"),
        "scales float64": ((x, p1, s1, b1, p2, s2.double(), b2), TypeError, "w2 must be int32 pairs"),
        "w2's pairs as w1": ((x, p2, s2, b1, p2, s2, b2), ValueError, "w1 must be pack_int12's"),
        "x of 8 channels": ((x[:, :8], p1, s1, b1, p2, s2, b2), ValueError, "w1 must be pack_int12's"),
        "b1 of 6": ((x, p1, s1, b1[:6], p2, s2, b2), ValueError, r"the scales of w1 must be \[6\]"),
        "b2 float64": ((x, p1, s1, b1, p2, s2, b2.double()), TypeError, "b2 must be float32"),
    }
    for args, error, message in bad.values():
        with pytest.raises(error, match=f"elu_resblock_int12: {message}"):
            elu_resblock_int12(*args, *rest)
        with pytest.raises(kernel_error(error), match=f"elu_resblock_int12: {message}"):
            torch.ops.jasco_fast.elu_resblock_int12.default(*args, *rest)
        with pytest.raises(error, match=f"elu_resblock_int12: {message}"):
            ops.elu_resblock_int12_fallback(*args, *rest)


def test_transpose_argument_errors():
    case = make_transpose(1, 16, 8, 6, 4, 8)
    x, w, s, bias, stride, k, left, right, alpha = transpose_int12_args(*case)
    bad = {
        "x bfloat16": ((x.bfloat16(), w, s, bias, stride, k), TypeError, "x must be float32"),
        "pairs int64": ((x, w.long(), s, bias, stride, k), TypeError, "w must be int32 pairs"),
        "x of 8 channels": ((x[:, :8], w, s, bias, stride, k), ValueError, "w must be pack_int12's"),
        "another stride": ((x, w, s, bias, 2, k), ValueError, "w must be pack_int12's"),
        "another kernel": ((x, w, s, bias, stride, 9), ValueError, "w has 2 taps, a kernel of 9 at stride 4 has 3"),
        "bias of 4": ((x, w, s, bias[:4], stride, k), ValueError, "w must be pack_int12's"),
        "scales of 16": ((x, w, s[:16], bias, stride, k), ValueError, r"the scales of w must be \[32\]"),
        "bias float64": ((x, w, s, bias.double(), stride, k), TypeError, "bias must be float32"),
    }
    for args, error, message in bad.values():
        with pytest.raises(error, match=f"elu_conv_transpose_int12: {message}"):
            elu_conv_transpose_int12(*args, left, right, alpha)
        with pytest.raises(kernel_error(error), match=f"elu_conv_transpose_int12: {message}"):
            torch.ops.jasco_fast.elu_conv_transpose_int12.default(*args, left, right, alpha)
        with pytest.raises(error, match=f"elu_conv_transpose_int12: {message}"):
            ops.elu_conv_transpose_int12_fallback(*args, left, right, alpha)
