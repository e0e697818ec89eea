"""LatentDecoder(recurrent_dtype=...): the LSTM's recurrent matrices streamed as int8 / bfloat16 (float32 state and
arithmetic), the reduced-precision mode's LSTM. The kernel itself is tested in tests/ops/test_lstm_kernel.py; here the
decoder's plumbing and its error against the float32 reference."""

from __future__ import annotations

import copy

import pytest
import torch
from checkpoints import rel_err

from jasco_fast import DecoderConfig, LatentDecoder, SEANetDecoder, reference
from jasco_fast.cli import main as cli_main
from jasco_fast.decoder import LSTM


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    return SEANetDecoder(DecoderConfig(dimension=16, n_filters=8, ratios=(2, 2), lstm=2)).eval()


def lstms(fast):
    return [m for m in fast.decoder.modules() if isinstance(m, LSTM)]


@pytest.mark.parametrize(
    "dtype,recurrent", [(torch.float32, torch.int8), (torch.float32, torch.bfloat16), (torch.bfloat16, torch.int8)]
)
@pytest.mark.parametrize("backend", ["eager", "inductor"])
def test_error_within_budget(decoder, dtype, recurrent, backend):
    """Against the float32 reference: within twice the error of the same decoder without the recurrent format
    plus what the format's own arithmetic costs (measured by the reference with it: the recurrent weights
    rounded; for int8 also h at the fixed point of the integer matvec this CPU runs)."""
    latents = torch.randn(2, 300, 16)  # long enough to chunk at the default 256 frames
    want = reference.decode(decoder, latents)
    fast = LatentDecoder(decoder, backend=backend, dtype=dtype, recurrent_dtype=recurrent)
    assert fast.recurrent_dtype == recurrent and all(m.recurrent_dtype == recurrent for m in lstms(fast))
    assert all(m.recurrent_dtype is None for m in decoder.modules() if isinstance(m, LSTM))  # a copy is changed
    plain = LatentDecoder(decoder, backend="eager", dtype=dtype)(latents)
    format_err = rel_err(reference.decode(_format_reference(decoder, recurrent), latents), want)
    budget = 2 * (rel_err(plain, want) + format_err) + 1e-4
    with torch.no_grad():
        got = fast(latents)
    assert rel_err(got, want) <= budget
    assert budget < 0.05
    assert rel_err(got, plain) > 0  # the format is really used


def _format_reference(decoder, recurrent):
    """The reference with the recurrent format's arithmetic: int8 as the kernel on this CPU computes it (W_hh as
    stored, h at the integer matvec's fixed point); bfloat16: W_hh rounded."""
    if recurrent == torch.int8:
        return reference.ReferenceDecoder(decoder, int8_matvec=torch.ops.jasco_fast.lstm_int8_matvec())
    out = copy.deepcopy(decoder)
    for m in out.modules():
        if isinstance(m, LSTM):
            for k in range(m.num_layers):
                w = getattr(m, f"weight_hh_l{k}").data
                w.copy_(w.to(recurrent).float())
    return out


def test_invalid_combinations(decoder):
    with pytest.raises(ValueError, match="recurrent_dtype"):
        LatentDecoder(decoder, backend="eager", recurrent_dtype=torch.float16)
    with pytest.raises(ValueError, match="recurrent_dtype"):
        LatentDecoder(decoder, backend="eager", dtype=torch.float16, recurrent_dtype=torch.bfloat16)
    # the compute dtype itself means the plain format
    assert (
        LatentDecoder(decoder, backend="eager", dtype=torch.bfloat16, recurrent_dtype=torch.bfloat16).recurrent_dtype
        is None
    )


def test_artifact_recipes_differ_by_format(decoder):
    keys = {
        LatentDecoder(decoder, backend="eager", recurrent_dtype=r).aot_recipe(single=True).key
        for r in (None, torch.int8, torch.bfloat16)
    }
    assert len(keys) == 3


def test_cli_refuses_bfloat16_recurrent_with_float16(capsys):
    assert (
        cli_main(
            ["demo", "--seconds", "0.2", "--backend", "eager", "--dtype", "float16", "--recurrent-dtype", "bfloat16"]
        )
        == 2
    )
    assert "--recurrent-dtype bfloat16 needs --dtype float32" in capsys.readouterr().err


def test_lstm_holds_packs_that_follow_its_weights():
    """LSTM.prepack(): later calls use the held pack, with the output of packing per call; setting
    recurrent_dtype, .to(dtype) and load_state_dict pack again; the pack is not in the state dict."""
    torch.manual_seed(1)
    x = torch.randn(1, 24, 1, 7)
    plain = LSTM(24, 2)
    held = LSTM(24, 2)
    held.load_state_dict(plain.state_dict())
    assert held.prepack() is held and held.packed_recurrent is not None
    assert torch.equal(held(x), plain(x))
    assert held.state_dict().keys() == plain.state_dict().keys()
    plain.recurrent_dtype = held.recurrent_dtype = torch.int8
    assert torch.equal(held(x), plain(x))  # a pack of the float32 format would be refused
    held.to(torch.bfloat16)
    plain.to(torch.bfloat16)
    assert torch.equal(held(x.bfloat16()), plain(x.bfloat16()))
    other = LSTM(24, 2, torch.int8).to(torch.bfloat16)
    held.load_state_dict(other.state_dict())
    assert torch.equal(held(x.bfloat16()), other(x.bfloat16()))
    with torch.no_grad():  # in place: prepack() again, as documented
        held.weight_hh_l1.mul_(-1)
        other.weight_hh_l1.mul_(-1)
    assert torch.equal(held.prepack()(x.bfloat16()), other(x.bfloat16()))


def test_latent_decoder_prepacks_its_lstms(decoder):
    fast = LatentDecoder(decoder, backend="eager", recurrent_dtype=torch.int8)
    assert all(m.packed_recurrent is not None for m in lstms(fast))
    assert all(m.packed_recurrent is None for m in decoder.modules() if isinstance(m, LSTM))  # a copy is packed


def test_int8_reference_is_the_kernels_arithmetic(decoder):
    """ReferenceDecoder(int8_matvec=...) models what the int8 format computes on this CPU: the fast decode is far
    closer to it than to the plain reference (h's fixed point and the int8 rows are the error's source)."""
    latents = torch.randn(1, 200, 16, generator=torch.Generator().manual_seed(5))
    fast = LatentDecoder(decoder, backend="eager", recurrent_dtype=torch.int8)
    with torch.no_grad():
        got = fast(latents)
    plain_err = rel_err(got, reference.decode(decoder, latents))
    matvec = torch.ops.jasco_fast.lstm_int8_matvec()
    modelled_err = rel_err(got, reference.decode(reference.ReferenceDecoder(decoder, int8_matvec=matvec), latents))
    assert plain_err > 0 and modelled_err <= 0.1 * plain_err, (matvec, modelled_err, plain_err)
    with pytest.raises(ValueError, match="int8_matvec must be one of"):
        reference.ReferenceDecoder(decoder, int8_matvec="avx2_int16")
