"""jasco_fast::lstm_skip (the SEANet LSTM block with state) against nn.LSTM, opcheck of it and of lstm_pack,
torch.compile, and the op's argument errors (the kernel's numerics: test_lstm_kernel.py)."""

from __future__ import annotations

import pytest
import torch

from jasco_fast.ops import lstm_pack, lstm_skip

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# float32 against nn.LSTM running the same ATen kernel: the same arithmetic, split into calls.
F32_ATOL = 1e-6


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make_lstm(dim: int, layers: int, device: str, dtype=torch.float32, seed: int = 0) -> torch.nn.LSTM:
    torch.manual_seed(seed)
    return torch.nn.LSTM(dim, dim, layers, batch_first=True).to(device=device, dtype=dtype).eval()


def flat(lstm: torch.nn.LSTM) -> list[torch.Tensor]:
    return [w.detach() for w in lstm._flat_weights]


# reference


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("with_state", [False, True])
def test_matches_nn_lstm_with_state(device, layers, with_state):
    B, T, C = 3, 13, 8
    lstm = make_lstm(C, layers, device)
    seq = torch.randn(B, T, C, device=device)
    h0 = torch.randn(layers, B, C, device=device) if with_state else None
    c0 = torch.randn(layers, B, C, device=device) if with_state else None
    zeros = torch.zeros(layers, B, C, device=device)
    with torch.no_grad():
        want, (h_all, c_all) = lstm(seq, (h0, c0) if with_state else None)
        for n in (None, 0, 1, 6, T):
            y, h, c = lstm_skip(seq, flat(lstm), layers, h0, c0, n)
            assert y.shape == (B, T, C) and y.is_contiguous()
            torch.testing.assert_close(y, want + seq, rtol=0, atol=F32_ATOL)
            if n is None or n == T:
                h_want, c_want = h_all, c_all
            elif n == 0:
                h_want, c_want = (h0, c0) if with_state else (zeros, zeros)
            else:
                _, (h_want, c_want) = lstm(seq[:, :n], (h0, c0) if with_state else None)
            torch.testing.assert_close(h, h_want, rtol=0, atol=F32_ATOL)
            torch.testing.assert_close(c, c_want, rtol=0, atol=F32_ATOL)


def test_state_carries_across_calls():
    """Two calls joined by the returned state give the one-call output: what chunked decoding relies on."""
    lstm = make_lstm(6, 2, "cpu", seed=3)
    seq = torch.randn(2, 20, 6)
    whole, _, _ = lstm_skip(seq, flat(lstm), 2)
    first, h, c = lstm_skip(seq[:, :12], flat(lstm), 2, state_frames=7)  # frames 7..11 are look-ahead
    second, _, _ = lstm_skip(seq[:, 7:], flat(lstm), 2, h, c)
    torch.testing.assert_close(first, whole[:, :12], rtol=0, atol=F32_ATOL)
    torch.testing.assert_close(second, whole[:, 7:], rtol=0, atol=F32_ATOL)


def test_strided_input_and_outputs_never_alias():
    lstm = make_lstm(8, 1, "cpu")
    base = torch.randn(12, 2, 8)
    seq = base.transpose(0, 1)  # [B, T, C] view, not contiguous
    h0, c0 = torch.randn(1, 2, 8), torch.randn(1, 2, 8)
    y, h, c = lstm_skip(seq, flat(lstm), 1, h0, c0, 0)
    torch.testing.assert_close(y, lstm_skip(seq.contiguous(), flat(lstm), 1, h0, c0)[0], rtol=0, atol=0)
    assert h.data_ptr() != h0.data_ptr() and c.data_ptr() != c0.data_ptr()
    torch.testing.assert_close(h, h0, rtol=0, atol=0)


def test_bfloat16_close_to_float32():
    lstm = make_lstm(16, 2, "cpu")
    seq = torch.randn(2, 30, 16)
    want = lstm_skip(seq, flat(lstm), 2)[0]
    got = lstm_skip(seq.bfloat16(), [w.bfloat16() for w in flat(lstm)], 2)[0]
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).abs().max() < 0.05 * want.abs().max()


# opcheck


def lstm_samples(device: str):
    for layers, B, T, with_state, n in [
        (1, 1, 5, False, None),
        (2, 3, 7, True, 4),
        (2, 2, 6, True, 0),
        (1, 2, 1, True, 1),
    ]:
        lstm = make_lstm(4, layers, device, seed=layers)
        seq = torch.randn(B, T, 4, device=device)
        state = (
            (torch.randn(layers, B, 4, device=device), torch.randn(layers, B, 4, device=device))
            if with_state
            else (None, None)
        )
        yield seq, flat(lstm), layers, *state, n
    seq = torch.randn(5, 2, 4, device=device).transpose(0, 1)  # strided
    yield seq, flat(make_lstm(4, 1, device)), 1, None, None, 3
    if device == "cpu":  # with a pack (lstm_pack: CPU)
        for recurrent_dtype in (None, torch.int8):
            weights = flat(make_lstm(4, 2, device, seed=3))
            packed = lstm_pack([weights[1], weights[5]], recurrent_dtype)
            yield torch.randn(2, 5, 4), weights, 2, None, None, 3, recurrent_dtype, packed


def pack_samples(device: str):
    if device != "cpu":  # the pack is for the CPU kernel
        return
    for C, dtype, recurrent_dtype in [
        (4, torch.float32, None),
        (20, torch.float32, torch.bfloat16),
        (20, torch.bfloat16, torch.int8),
        (16, torch.float32, torch.int8),
    ]:
        yield [torch.randn(4 * C, C, dtype=dtype), torch.randn(4 * C, C, dtype=dtype)], recurrent_dtype


# lstm_skip's and lstm_pack's opcheck samples (tests/ops/test_registration.py: every op has an opcheck).
OP_SAMPLES = {"lstm_skip": lstm_samples, "lstm_pack": pack_samples}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", sorted(OP_SAMPLES))
def test_opcheck(device, op):
    for args in OP_SAMPLES[op](device):
        torch.library.opcheck(getattr(torch.ops.jasco_fast, op).default, args)


# gradcheck: does not apply, the op has no autograd formula


# torch.compile


def test_lstm_op_under_compile_matches_eager():
    lstm = make_lstm(8, 2, "cpu")
    seq, h0, c0 = torch.randn(2, 9, 8), torch.randn(2, 2, 8), torch.randn(2, 2, 8)
    weights = flat(lstm)

    def fn(x, h, c):
        y, h, c = lstm_skip(torch.relu(x), weights, 2, h, c, 5)
        return y * 2, h, c

    want = fn(seq, h0, c0)
    got = torch.compile(fn, fullgraph=True, backend="aot_eager")(seq, h0, c0)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=F32_ATOL)


# argument errors


def test_argument_errors():
    lstm = make_lstm(4, 2, "cpu")
    seq = torch.randn(2, 5, 4)
    state = torch.zeros(2, 2, 4)
    with pytest.raises(ValueError, match="3-D"):
        lstm_skip(seq[0], flat(lstm), 2)
    with pytest.raises(ValueError, match="4 \\* num_layers"):
        lstm_skip(seq, flat(lstm)[:4], 2)
    with pytest.raises(ValueError, match="both h0 and c0"):
        lstm_skip(seq, flat(lstm), 2, state, None)
    with pytest.raises(ValueError, match="h0 must be"):
        lstm_skip(seq, flat(lstm), 2, torch.zeros(1, 2, 4), state)
    with pytest.raises(TypeError, match="dtype"):
        lstm_skip(seq, flat(lstm), 2, state.double(), state.double())
    with pytest.raises(ValueError, match="state_frames"):
        lstm_skip(seq, flat(lstm), 2, state_frames=6)
    with pytest.raises(ValueError, match="state_frames"):
        lstm_skip(seq, flat(lstm), 2, state_frames=-1)
