"""The CPU recurrence kernel of jasco_fast::lstm_skip (csrc/cpu/lstm_recurrence.cpp, B <= 8) and its recurrent
weight formats, against nn.LSTM's arithmetic in float64.

Tolerances, relative to the peak |value| of the reference (at least 1: gates and cell are O(1) arithmetic):
- float32: 1e-6 (float32 state and accumulation; the reference is float64 on the same float32 values);
- bfloat16: inputs and weights bfloat16-rounded, the reference float64 on those rounded values; the kernel's
  input GEMM rounds its projections to bfloat16 (as ATen's bfloat16 LSTM does) and its output is rounded
  once to bfloat16, so the bound is two bfloat16 roundings of the peak, and at most ATen's own bfloat16 error;
  above the kernel's batch limit the op is ATen's bfloat16 LSTM, whose rounding depends on the CPU (where the
  CPU lacks bfloat16 arithmetic, oneDNN or ATen's own cell round gates and state updates to bfloat16 more often:
  worst case of 4 seeds at B = 9, T = 17, C = 24, 1.0 bfloat16 roundings of the peak with AVX512-BF16 against 1.4
  under the AVX2 caps), so the bound there is twice ATen's own error on the same inputs (flash-attention's rule);
- bfloat16-stored recurrent matrices: against a float64 reference that uses the stored values: 1e-6, as float32;
- int8 recurrent matrices: the same reference (dequantised int8 rows), 1e-6 plus the error of the hidden state's
  fixed point in the integer matvec that this CPU runs (torch.ops.jasco_fast.lstm_int8_matvec(), which follows
  JASCO_FAST_LSTM_ISA; csrc/cpu/lstm_recurrence.cpp; checkpoints.int8_h_bound). Each h is represented to within
  delta:
    avx512_vnni: two bytes, a = 127 h, hi = round(a), lo = round(254 (a - hi)): delta = 0.5 / (127 * 254) = 1.55e-5;
    avx2_u7: one unsigned 7-bit byte, round(63 h) + 64 (vpmaddubsw's pair sums stay below 2^15): delta = 0.5 / 63
      = 7.9e-3;
    float32 (no integer matvec): the int8 weights widened exactly to float32, h as it is: delta = 0 (the
    float32 bound alone).
  The error is spread evenly (standard deviation delta / sqrt(3)) and independent from input to input (the
  integer sums are exact), so a pre-activation is off by about delta / sqrt(3) * ||W_r||_2; the bound takes 6
  such standard deviations, and twice that for the error's way through the gates and the cell (which forgets
  with a factor < 1, so it does not pile up step after step).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from checkpoints import child_env, int8_h_bound
from hypothesis import given, settings
from hypothesis import strategies as st

from jasco_fast.decoder import LSTM
from jasco_fast.ops import lstm_pack, lstm_skip
from jasco_fast.reference import int8_recurrent_rows

F32_REL = 1e-6
BF16_EPS = 2.0**-8  # a bfloat16 rounding, relative
BF16_REL = 2 * BF16_EPS
MAX_KERNEL_BATCH = 8


@pytest.fixture(autouse=True, scope="module")
def two_threads():
    """The kernel splits hidden units over the threads: two threads exercise the split and the barriers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def lstm_weights(C: int, layers: int, seed: int, std: float | None = None) -> list[torch.Tensor]:
    """nn.LSTM's default init (uniform +-1/sqrt(C)), or N(0, std) when std is given; float32."""
    gen = torch.Generator().manual_seed(seed)
    weights = []
    for _ in range(layers):
        for shape in ((4 * C, C), (4 * C, C), (4 * C,), (4 * C,)):
            if std is None:
                bound = C**-0.5
                weights.append((torch.rand(shape, generator=gen) * 2 - 1) * bound)
            else:
                weights.append(torch.randn(shape, generator=gen) * std)
    return weights


def stored_recurrent(weights: list[torch.Tensor], recurrent_dtype) -> list[torch.Tensor]:
    """The weights in float64 with each W_hh replaced by the values the op streams."""
    out = [w.double() for w in weights]
    for i in range(1, len(weights), 4):
        if recurrent_dtype == torch.int8:
            out[i] = int8_recurrent_rows(weights[i])
        elif recurrent_dtype == torch.bfloat16:
            out[i] = weights[i].bfloat16().double()
    return out


def reference(seq, weights, layers, h0=None, c0=None, n=None, dtype=torch.float64):
    """(y + seq, h, c) by ATen's LSTM (nn.LSTM's arithmetic) in ``dtype``, state after n frames."""
    seq = seq.to(dtype)
    weights = [w.to(dtype) for w in weights]
    B, T, C = seq.shape
    if h0 is None:
        h0 = c0 = torch.zeros(layers, B, C, dtype=dtype)
    h0, c0 = h0.to(dtype), c0.to(dtype)
    y, h, c = torch.lstm(seq, (h0, c0), weights, True, layers, 0.0, False, False, True)
    n = T if n is None else n
    if n == 0:
        h, c = h0, c0
    elif n < T:
        _, h, c = torch.lstm(seq[:, :n], (h0, c0), weights, True, layers, 0.0, False, False, True)
    return y + seq, h, c


def assert_close_rel(got, want, rel, what=""):
    # at least 1: the gates and the cell are O(1) quantities, so a tiny h or c (cancellation in
    # c = f c + i g) still carries float32 errors of O(1) arithmetic
    peak = max(want.abs().max().item(), 1.0)
    err = (got.double() - want).abs().max().item()
    assert err <= rel * peak, f"{what}: max error {err:.3g} > {rel:g} x peak {peak:.3g}"
    return err / peak


def aten_relative_error(want, aten) -> float:
    """The largest error of ATen's own LSTM over (y, h, c), relative to the peak as in assert_close_rel."""
    return max((a.double() - w).abs().max().item() / max(w.abs().max().item(), 1.0) for a, w in zip(aten, want))


def check_case(B, T, C, layers, with_state, n, dtype, recurrent_dtype, seed=0, contiguous=True):
    weights = lstm_weights(C, layers, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    seq = torch.randn(T, B, C, generator=gen).transpose(0, 1)  # [B, T, C], not contiguous
    if contiguous:
        seq = seq.contiguous()
    h0 = torch.randn(layers, B, C, generator=gen) * 0.5 if with_state else None
    c0 = torch.randn(layers, B, C, generator=gen) if with_state else None
    if dtype == torch.bfloat16:  # the op's inputs; the reference sees the same rounded values
        weights = [w.bfloat16() for w in weights]
        seq = seq.bfloat16()
        h0 = None if h0 is None else h0.bfloat16()
        c0 = None if c0 is None else c0.bfloat16()
    y, h, c = lstm_skip(seq, weights, layers, h0, c0, n, recurrent_dtype)
    assert y.shape == (B, T, C) and y.is_contiguous() and y.dtype == dtype
    assert h.shape == c.shape == (layers, B, C) and h.dtype == c.dtype == dtype
    stored = stored_recurrent(weights, recurrent_dtype)
    want = reference(seq, stored, layers, h0, c0, n)
    rel = BF16_REL if dtype == torch.bfloat16 else F32_REL
    if recurrent_dtype == torch.int8:
        rel += int8_h_bound(weights)
    if B > MAX_KERNEL_BATCH and dtype == torch.bfloat16:
        rel = max(rel, 2 * aten_relative_error(want, reference(seq, stored, layers, h0, c0, n, dtype)))
    for got, w, name in zip((y, h, c), want, ("y", "h", "c")):
        assert_close_rel(got, w, rel, f"{name} B={B} T={T} C={C} layers={layers} n={n} {dtype} {recurrent_dtype}")
    return y, h, c


FORMATS = [
    (torch.float32, None),
    (torch.bfloat16, None),
    (torch.float32, torch.int8),
    (torch.bfloat16, torch.int8),
    (torch.float32, torch.bfloat16),
]
FORMAT_IDS = ["f32", "bf16", "f32-int8", "bf16-int8", "f32-bf16rec"]


# reference


@pytest.mark.parametrize("dtype,recurrent_dtype", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("C", [16, 24, 64])
@pytest.mark.parametrize("T", [1, 2, 17, 100])
@pytest.mark.parametrize("B", [1, 2, 3, 8, 9])
def test_matches_float64_reference(B, T, C, dtype, recurrent_dtype):
    """Every batch size the kernel takes (and 9, which falls back to ATen's LSTM), with and without a state,
    the state after 0, some and all frames, one and two layers."""
    for i, (layers, with_state, n) in enumerate([(1, False, None), (2, True, T // 2), (2, False, 0), (1, True, T)]):
        check_case(B, T, C, layers, with_state, n, dtype, recurrent_dtype, seed=i)


@pytest.mark.parametrize("dtype,recurrent_dtype", FORMATS, ids=FORMAT_IDS)
def test_strided_input_and_odd_width(dtype, recurrent_dtype):
    """A [B, T, C] view that is not contiguous, and an odd C (bfloat16 tiles pair inputs: the last is padded)."""
    check_case(2, 9, 33, 2, True, 4, dtype, recurrent_dtype, contiguous=False)


@pytest.mark.parametrize("dtype,recurrent_dtype", FORMATS, ids=FORMAT_IDS)
def test_full_size_layer(dtype, recurrent_dtype):
    """The decoder's size (C = 1024, 2 layers) over a few frames: 64 unit groups split over the threads."""
    check_case(1, 6, 1024, 2, True, 3, dtype, recurrent_dtype)


@pytest.mark.parametrize("dtype,recurrent_dtype", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("B", [1, 3, 8])
def test_pack_gives_the_result_of_packing_per_call(dtype, recurrent_dtype, B):
    """lstm_pack once, then calls with the pack: bit-equal to calls that pack per call, at every batch (the
    tiles of B > 1 are slices of the pack's B = 1 tiles), with an h0 outside [-1, 1] too (the int8 integer
    matvec then packs the float tiles per call) and for C that is not a multiple of the unit group."""
    C, layers = 40, 2
    weights = [w.to(dtype) for w in lstm_weights(C, layers, 11)]
    gen = torch.Generator().manual_seed(13)
    seq = torch.randn(B, 9, C, generator=gen).to(dtype)
    packed = lstm_pack([weights[4 * k + 1] for k in range(layers)], recurrent_dtype)
    for scale in (0.5, 3.0):
        h0 = (scale * torch.randn(layers, B, C, generator=gen)).to(dtype)
        c0 = torch.randn(layers, B, C, generator=gen).to(dtype)
        want = lstm_skip(seq, weights, layers, h0, c0, 4, recurrent_dtype)
        got = lstm_skip(seq, weights, layers, h0, c0, 4, recurrent_dtype, packed)
        for g, w in zip(got, want):
            assert torch.equal(g, w)


def test_kernel_runs_below_the_batch_limit_and_aten_above():
    """B <= 8 gives the kernel's rounding (not bit-equal to ATen's LSTM); B = 9 is ATen's LSTM exactly."""
    weights = lstm_weights(64, 2, seed=5)
    seq = torch.randn(MAX_KERNEL_BATCH + 1, 30, 64)
    zeros = torch.zeros(2, MAX_KERNEL_BATCH + 1, 64)
    aten_y = torch.lstm(seq, (zeros, zeros), weights, True, 2, 0.0, False, False, True)[0] + seq
    torch.testing.assert_close(lstm_skip(seq, weights, 2)[0], aten_y, rtol=0, atol=0)
    kernel_y = lstm_skip(seq[:1], weights, 2)[0]
    assert not torch.equal(kernel_y, aten_y[:1])
    torch.testing.assert_close(kernel_y, aten_y[:1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("recurrent_dtype", [torch.int8, torch.bfloat16])
def test_stored_formats_agree_between_kernel_and_fallback(recurrent_dtype):
    """The kernel (B = 1 rows) and ATen's LSTM with the stored values (B = 9) use the same W_hh values."""
    weights = lstm_weights(40, 2, seed=7, std=0.05)
    seq = torch.randn(9, 12, 40)
    batch = lstm_skip(seq, weights, 2, recurrent_dtype=recurrent_dtype)[0]
    rows = torch.cat([lstm_skip(seq[i : i + 1], weights, 2, recurrent_dtype=recurrent_dtype)[0] for i in range(9)])
    rel = F32_REL + (int8_h_bound(weights) if recurrent_dtype == torch.int8 else 0)
    assert_close_rel(rows, batch.double(), rel, "kernel vs fallback")


def test_bfloat16_at_most_atens_bfloat16_error():
    """The kernel's float32 state makes its bfloat16 output at least as accurate as ATen's bfloat16 LSTM: on average,
    and at the worst element up to the output's own rounding, which dominates both maxima (half a bfloat16 ulp of
    the peak: the two roundings may land on either side of one value)."""
    C, T, layers = 256, 100, 2
    weights = [w.bfloat16() for w in lstm_weights(C, layers, seed=2)]
    seq = torch.randn(1, T, C, generator=torch.Generator().manual_seed(3)).bfloat16()
    want = reference(seq, weights, layers)[0]
    zeros = torch.zeros(layers, 1, C, dtype=torch.bfloat16)
    aten = torch.lstm(seq, (zeros, zeros), weights, True, layers, 0.0, False, False, True)[0] + seq
    ours = lstm_skip(seq, weights, layers)[0]
    aten_err, ours_err = (aten.double() - want).abs(), (ours.double() - want).abs()
    assert ours_err.mean() <= aten_err.mean(), (ours_err.mean().item(), aten_err.mean().item())
    half_ulp = 2.0 ** (torch.frexp(want.abs().max()).exponent.item() - 9)
    assert ours_err.max() <= aten_err.max() + half_ulp, (ours_err.max().item(), aten_err.max().item())


@pytest.mark.parametrize("std", [None, 0.05], ids=["default-init", "normal-0.05"])
def test_int8_error_against_unquantised(std):
    """The int8 format's effect on the output (reported; bounded so that a broken scale fails)."""
    C, T, layers = 256, 100, 2
    weights = lstm_weights(C, layers, seed=3, std=std)
    seq = torch.randn(1, T, C)
    want = reference(seq, weights, layers)[0]
    got = lstm_skip(seq, weights, layers, recurrent_dtype=torch.int8)[0]
    rel = assert_close_rel(got, want, 0.02, "int8 vs unquantised")
    snr = 10 * torch.log10(want.pow(2).sum() / (got.double() - want).pow(2).sum()).item()
    print(f"int8 recurrent matrices, {std or 'default init'}: max error {rel:.2e} x peak, SNR {snr:.1f} dB")
    assert snr > 30


@pytest.mark.parametrize("isa", ["avx512", "avx2", "portable"])
def test_lower_instruction_sets(isa):
    """AVX-512 without VNNI and AVX2 (the int8 format through vpmaddubsw where the CPU has AVX2), and plain loops
    (the int8 format in float32) (JASCO_FAST_LSTM_ISA lowers the path in a fresh process)."""
    script = (
        "import torch; import test_lstm_kernel as t\n"
        "torch.set_num_threads(2)\n"
        "print(torch.ops.jasco_fast.lstm_int8_matvec())\n"
        "for dtype, rec in t.FORMATS:\n"
        "    for B, T, C in [(1, 9, 40), (3, 5, 16), (5, 4, 24), (8, 3, 33)]:\n"
        "        t.check_case(B, T, C, 2, True, T // 2, dtype, rec)\n"
        "print('ok')\n"
    )
    env = child_env(Path(__file__).parent, JASCO_FAST_LSTM_ISA=isa)
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]
    matvec = run.stdout.split()[0]
    assert matvec == "float32" if isa == "portable" else matvec in ("avx2_u7", "float32"), matvec


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 9),
    T=st.integers(1, 12),
    C=st.integers(1, 40),
    layers=st.integers(1, 2),
    with_state=st.booleans(),
    n_frac=st.floats(0, 1),
    fmt=st.sampled_from(FORMATS),
    seed=st.integers(0, 100),
    threads=st.sampled_from([1, 2]),
)
def test_random_shapes(B, T, C, layers, with_state, n_frac, fmt, seed, threads):
    torch.set_num_threads(threads)
    try:
        check_case(B, T, C, layers, with_state, round(n_frac * T), *fmt, seed=seed)
    finally:
        torch.set_num_threads(2)


def test_state_carries_across_calls_int8():
    """Chunked decoding in the int8 format: two calls joined by the state equal one call."""
    weights = lstm_weights(32, 2, seed=4)
    seq = torch.randn(1, 40, 32)
    whole = lstm_skip(seq, weights, 2, recurrent_dtype=torch.int8)[0]
    first, h, c = lstm_skip(seq[:, :25], weights, 2, state_frames=20, recurrent_dtype=torch.int8)
    second = lstm_skip(seq[:, 20:], weights, 2, h, c, recurrent_dtype=torch.int8)[0]
    torch.testing.assert_close(first, whole[:, :25], rtol=0, atol=0)
    torch.testing.assert_close(second, whole[:, 20:], rtol=0, atol=1e-6)


def test_outputs_never_alias_inputs():
    weights = lstm_weights(16, 1, seed=0)
    seq = torch.randn(1, 4, 16)
    h0, c0 = torch.randn(1, 1, 16), torch.randn(1, 1, 16)
    y, h, c = lstm_skip(seq, weights, 1, h0, c0, 0)
    assert h.data_ptr() != h0.data_ptr() and c.data_ptr() != c0.data_ptr() and y.data_ptr() != seq.data_ptr()
    torch.testing.assert_close(h, h0, rtol=0, atol=0)
    torch.testing.assert_close(c, c0, rtol=0, atol=0)


def test_decoder_lstm_passes_recurrent_dtype():
    torch.manual_seed(0)
    layer = LSTM(24, 2, recurrent_dtype=torch.int8)
    x = torch.randn(1, 24, 1, 10)
    seq = x.squeeze(2).transpose(1, 2)
    want = lstm_skip(seq, layer.flat_weights(), 2, recurrent_dtype=torch.int8)[0]
    with torch.no_grad():
        got = layer(x)
    torch.testing.assert_close(got.squeeze(2).transpose(1, 2), want, rtol=0, atol=0)
    assert not torch.equal(want, lstm_skip(seq, layer.flat_weights(), 2)[0])


def test_int8_state_outside_the_unit_range():
    """The integer matvec needs |h| <= 1; a given h0 beyond it (or not finite) takes the float int8 tiles, which
    meet the float32 bound. Feeding it to the integer matvec would wrap its bytes: errors of O(1)."""
    B, T, C, layers = 2, 6, 40, 2
    weights = lstm_weights(C, layers, 3)
    gen = torch.Generator().manual_seed(4)
    seq = torch.randn(B, T, C, generator=gen)
    h0 = torch.full((layers, B, C), 1.5)
    c0 = torch.randn(layers, B, C, generator=gen)
    got = lstm_skip(seq, weights, layers, h0, c0, None, torch.int8)
    want = reference(seq, stored_recurrent(weights, torch.int8), layers, h0, c0)
    for g, w, name in zip(got, want, ("y", "h", "c")):
        assert_close_rel(g, w, F32_REL, f"{name} with |h0| = 1.5")


@pytest.mark.parametrize("recurrent_dtype", [None, torch.int8])
def test_nan_spreads_like_float_arithmetic(recurrent_dtype):
    """A NaN input at frame t makes that frame's unit NaN, and through W_hh every unit from frame t + 1 on (the
    integer matvec's bytes cannot hold a NaN: the kernel tracks it)."""
    B, T, C = 1, 8, 48
    weights = lstm_weights(C, 1, 5)
    seq = torch.randn(B, T, C, generator=torch.Generator().manual_seed(6))
    seq[0, 3, 7] = float("nan")
    y = lstm_skip(seq, weights, 1, None, None, None, recurrent_dtype)[0]
    want = reference(seq, stored_recurrent(weights, recurrent_dtype), 1)[0]
    assert torch.equal(torch.isnan(y), torch.isnan(want))
    assert torch.isnan(y[0, 4:]).all() and not torch.isnan(y[0, :3]).any()


# opcheck


def opcheck_samples():
    for B, rec, dtype in [
        (1, torch.int8, torch.float32),
        (2, torch.bfloat16, torch.float32),
        (1, None, torch.bfloat16),
        (9, torch.int8, torch.float32),
    ]:
        weights = [w.to(dtype) for w in lstm_weights(8, 2, seed=B)]
        seq = torch.randn(B, 5, 8, dtype=dtype)
        state = torch.randn(2, B, 8, dtype=dtype)
        yield seq, weights, 2, state, state.clone(), 3, rec


def test_opcheck_with_recurrent_dtype():
    for args in opcheck_samples():
        torch.library.opcheck(torch.ops.jasco_fast.lstm_skip.default, args)


# gradcheck and torch.compile: lstm_skip has no autograd formula; its torch.compile test is in test_lstm_skip.py


# argument errors


def test_pack_of_other_weights_layout_or_format_is_refused():
    """A pack is checked against the call (header: version, layout, tile width, shape, dtype; size), never misread."""
    C = 32
    weights = lstm_weights(C, 2, 3)
    w_hh = [weights[1], weights[5]]
    seq = torch.randn(1, 4, C)
    packed = lstm_pack(w_hh, torch.int8)
    lstm_skip(seq, weights, 2, recurrent_dtype=torch.int8, packed=packed)  # the right one is taken
    bf16_pack = lstm_pack(w_hh, torch.bfloat16)  # larger than the int8 one: its first bytes, misread as int8
    for B in (1, 9):  # B = 9 runs ATen's LSTM, which does not read the pack: checked all the same
        with pytest.raises(ValueError, match="layout"):
            lstm_skip(torch.randn(B, 4, C), weights, 2, recurrent_dtype=torch.int8, packed=bf16_pack[: packed.numel()])
    with pytest.raises(ValueError, match="layout"):  # float32 format wanted
        lstm_skip(seq, weights, 2, packed=lstm_pack(w_hh, torch.bfloat16))
    for field, what in ((3, "layout"), (2, "layout"), (5, "matrix"), (1, "version"), (7, "size")):
        bad = packed.clone()  # header fields: magic, version, format, width, rows, cols, dtype, bytes
        bad[:64].view(torch.int64)[field] += 1
        with pytest.raises(ValueError, match=what):
            lstm_skip(seq, weights, 2, recurrent_dtype=torch.int8, packed=bad)
    with pytest.raises(ValueError, match="made from"):  # bfloat16 weights of the same shapes
        lstm_skip(seq.bfloat16(), [w.bfloat16() for w in weights], 2, recurrent_dtype=torch.int8, packed=packed)
    small = lstm_weights(16, 2, 4)
    with pytest.raises(ValueError, match="matrix"):  # another C
        lstm_skip(seq, weights, 2, recurrent_dtype=torch.int8, packed=lstm_pack([small[1], small[5]], torch.int8))
    with pytest.raises(ValueError, match="more than num_layers"):
        lstm_skip(seq, weights[:4], 1, recurrent_dtype=torch.int8, packed=packed)
    with pytest.raises(ValueError, match="ends before"):
        lstm_skip(seq, weights, 2, recurrent_dtype=torch.int8, packed=packed[: packed.numel() // 2 + 32])
    with pytest.raises(TypeError, match="uint8"):
        lstm_skip(seq, weights, 2, recurrent_dtype=torch.int8, packed=packed.float())


def test_pack_made_for_another_cpu_layout_is_refused(tmp_path):
    """A pack saved by a process with another instruction set (JASCO_FAST_LSTM_ISA) and loaded here: refused."""
    here = torch.ops.jasco_fast.lstm_int8_matvec()
    env = {k: v for k, v in os.environ.items() if k not in ("JASCO_FAST_ISA", "JASCO_FAST_LSTM_ISA")}
    if here != "float32":  # the child packs int8 as float tiles; else it packs for this CPU's integer matvec
        env["JASCO_FAST_LSTM_ISA"] = "portable"
    path = tmp_path / "pack.pt"
    script = (
        "import sys, torch; from jasco_fast.ops import lstm_pack\n"
        "torch.manual_seed(0); w = torch.randn(64, 16)\n"
        "print(torch.ops.jasco_fast.lstm_int8_matvec()); torch.save(lstm_pack([w], torch.int8), sys.argv[1])\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(path)], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split()[0] != here
    torch.manual_seed(0)
    weights = [torch.randn(64, 16), torch.randn(64, 16), torch.randn(64), torch.randn(64)]
    weights[:2] = weights[1], weights[0]  # w_hh: the child's matrix
    with pytest.raises(ValueError, match="layout"):
        lstm_skip(torch.randn(1, 3, 16), weights, 1, recurrent_dtype=torch.int8, packed=torch.load(path))


def test_pack_argument_errors():
    w = torch.randn(16, 4)
    with pytest.raises(ValueError, match="at least one"):
        lstm_pack([])
    with pytest.raises(ValueError, match=r"\[4C, C\]"):
        lstm_pack([torch.randn(12, 4)])
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        lstm_pack([w.double()])
    with pytest.raises(TypeError, match="recurrent_dtype"):
        lstm_pack([w.bfloat16()], torch.float16)


def test_recurrent_dtype_errors():
    weights = lstm_weights(8, 1, seed=0)
    seq = torch.randn(1, 3, 8)
    with pytest.raises(TypeError, match="recurrent_dtype"):
        lstm_skip(seq, weights, 1, recurrent_dtype=torch.float16)
    with pytest.raises(TypeError, match="recurrent_dtype"):
        lstm_skip(seq.bfloat16(), [w.bfloat16() for w in weights], 1, recurrent_dtype=torch.float32)
    # the weights' own dtype is the default format
    torch.testing.assert_close(
        lstm_skip(seq, weights, 1, recurrent_dtype=torch.float32)[0], lstm_skip(seq, weights, 1)[0], rtol=0, atol=0
    )
