"""LatentDecoder(recurrent_dtype=...): the LSTM's recurrent matrices streamed as int8 / bfloat16 (float32 state and
arithmetic), the reduced-precision mode's LSTM. The kernel itself is tested in tests/ops/test_lstm_kernel.py; here the
decoder's plumbing and its error against the float32 reference."""

from __future__ import annotations

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
    plus what rounding the recurrent weights alone costs (measured by the reference with them rounded)."""
    latents = torch.randn(2, 300, 16)  # long enough to chunk at the default 256 frames
    want = reference.decode(decoder, latents)
    fast = LatentDecoder(decoder, backend=backend, dtype=dtype, recurrent_dtype=recurrent)
    assert fast.recurrent_dtype == recurrent and all(m.recurrent_dtype == recurrent for m in lstms(fast))
    assert all(m.recurrent_dtype is None for m in decoder.modules() if isinstance(m, LSTM))  # a copy is changed
    plain = LatentDecoder(decoder, backend="eager", dtype=dtype)(latents)
    rounded = _with_rounded_recurrent(decoder, recurrent)
    budget = 2 * (rel_err(plain, want) + rel_err(reference.decode(rounded, latents), want)) + 1e-4
    with torch.no_grad():
        got = fast(latents)
    assert rel_err(got, want) <= budget
    assert budget < 0.05
    assert rel_err(got, plain) > 0  # the format is really used


def _with_rounded_recurrent(decoder, recurrent):
    """decoder with each W_hh as the format stores it (int8: symmetric, a scale per row)."""
    import copy

    out = copy.deepcopy(decoder)
    for m in out.modules():
        if isinstance(m, LSTM):
            for k in range(m.num_layers):
                w = getattr(m, f"weight_hh_l{k}").data
                if recurrent == torch.int8:
                    scale = w.abs().amax(dim=1, keepdim=True) / 127
                    w.copy_(torch.round(w / scale).clamp(-127, 127) * scale)
                else:
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
