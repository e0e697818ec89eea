"""conv_format="int12": a float32 CPU decoder whose residual blocks and transposed convolutions run as the 12-bit
integer ops (jasco_fast.ops.elu_resblock_int12 / elu_conv_transpose_int12; their arithmetic is tested op by op in
tests/ops/test_int12.py). Here: what fuse() swaps in, what the mode keeps (state_dict, the LSTM, the final
convolution), its fidelity against the float64 reference, and the argument rules."""

import copy

import _fidelity  # benchmarks/ is on pytest's pythonpath (pyproject.toml)
import pytest
import torch

from jasco_fast import (
    CodeDecoder,
    DecoderConfig,
    LatentDecoder,
    Quantizer,
    SEANetDecoder,
    artifacts,
    extension,
    reference,
)
from jasco_fast.decoder import (
    ConvTranspose,
    FusedEluConv,
    FusedEluConvTranspose,
    FusedEluConvTransposeInt12,
    FusedResBlock,
    FusedResBlockInt12,
    ResBlock,
)

pytestmark = pytest.mark.skipif(
    not extension.STATUS.loaded, reason="needs the compiled extension (fuse() fuses nothing)"
)

# Channels 64 -> 32 -> 16: the 32- and 64-channel layers take the ops' AVX2 copy (multiples of 16) where the CPU
# has AVX2, the 16 -> 8 residual block's hidden width the portable copy.
CONFIG = DecoderConfig(dimension=16, n_filters=16, ratios=(4, 2), lstm=1)

# The mode's floor is 40 dB on bench_fidelity's calibrated checkpoints. Here every convolution input and weight is
# rounded to 12 bits (a step of max / 2047): for activations whose tile maximum is ~4-5 standard deviations, each
# layer's rounding noise sits ~60 dB below its signal, and four layers are rounded, so ~50 dB is expected;
# 40 dB leaves room for this random decoder's heavier tails and still fails if a scale or an input pair is wrong
# (one wrong level anywhere in a tile is ~30 dB).
MIN_SNR_DB = 40.0


def decoder(seed: int = 0) -> SEANetDecoder:
    torch.manual_seed(seed)
    return SEANetDecoder(CONFIG).eval()


def latents(frames: int = 60, seed: int = 1) -> torch.Tensor:
    return torch.randn(1, frames, CONFIG.dimension, generator=torch.Generator().manual_seed(seed))


def test_fuse_swaps_in_the_int12_modules_everywhere_they_apply():
    fast = LatentDecoder(decoder(), backend="eager", conv_format="int12")
    assert fast.conv_format == "int12"
    kinds = [type(m) for m in fast.decoder.modules()]
    blocks = [k for k in kinds if issubclass(k, ResBlock)]
    uppers = [k for k in kinds if issubclass(k, ConvTranspose)]
    assert blocks and all(k is FusedResBlockInt12 for k in blocks), blocks
    assert uppers and all(k is FusedEluConvTransposeInt12 for k in uppers), uppers
    assert FusedEluConv in kinds  # the final convolution keeps float32
    plain = LatentDecoder(decoder(), backend="eager")
    assert plain.conv_format is None
    assert not any(k in (FusedResBlockInt12, FusedEluConvTransposeInt12) for k in map(type, plain.decoder.modules()))
    assert {FusedResBlock, FusedEluConvTranspose} <= set(map(type, plain.decoder.modules()))


def test_the_packs_are_not_state():
    fast = LatentDecoder(decoder(), backend="eager", conv_format="int12")
    plain = LatentDecoder(decoder(), backend="eager")
    state, plain_state = fast.decoder.state_dict(), plain.decoder.state_dict()
    assert state.keys() == plain_state.keys()
    assert all(torch.equal(state[k], plain_state[k]) for k in state)
    # loading other weights packs again: the decode follows them
    other = LatentDecoder(decoder(seed=5), backend="eager", conv_format="int12")
    fast.decoder.load_state_dict(other.decoder.state_dict())
    x = latents()
    assert torch.equal(fast(x), other(x))


@pytest.mark.parametrize("frames", [1, 7, 60, 250])
def test_int12_decodes_within_the_modes_floor_and_is_not_float32(frames):
    dec = decoder()
    x = latents(frames)
    want = reference.decode(reference.ReferenceDecoder(dec), x)
    got = LatentDecoder(dec, backend="eager", conv_format="int12", chunk_frames=None)(x)
    exact = LatentDecoder(dec, backend="eager", chunk_frames=None)(x)
    assert got.shape == want.shape and torch.isfinite(got).all()
    snr = _fidelity.snr_db(want, got)
    assert snr >= MIN_SNR_DB, snr
    # float32 is far more exact: the format really rounds
    assert _fidelity.snr_db(want, exact) > snr + 20


def test_chunked_decoding_stays_within_the_floor():
    dec = decoder()
    x = latents(300)
    want = reference.decode(reference.ReferenceDecoder(dec), x)
    chunked = LatentDecoder(dec, backend="eager", conv_format="int12", chunk_frames=64)(x)
    assert _fidelity.snr_db(want, chunked) >= MIN_SNR_DB


def test_moved_or_cast_it_runs_the_layers_own_math():
    fast = LatentDecoder(decoder(), backend="eager", conv_format="int12")
    x = latents().permute(0, 2, 1).double() * 4.0
    # float64 parameters: the packs are dropped and the fused modules run the float64 layers
    as_double = copy.deepcopy(fast.decoder).double()
    assert all(m.w_int12 is None for m in as_double.modules() if isinstance(m, FusedEluConvTransposeInt12))
    want = decoder().double()(x)
    assert torch.allclose(as_double(x), want, rtol=1e-12, atol=1e-12)
    # and back to float32: packed again, the int12 ops run
    back = as_double.float()
    assert all(m.w1_int12 is not None for m in back.modules() if isinstance(m, FusedResBlockInt12))
    assert torch.equal(back(x.float()), fast.decoder(x.float()))


def test_code_decoder_takes_the_format():
    quantizer = Quantizer(torch.randn(2, 32, CONFIG.dimension))
    fast = CodeDecoder(decoder(), quantizer, backend="eager", conv_format="int12")
    assert fast.conv_format == "int12"
    assert fast(torch.randint(0, 32, (1, 2, 20))).shape == (1, 1, 20 * CONFIG.hop_length)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(conv_format="int8"), "conv_format must be None, 'int12' or 'auto'"),
        (dict(conv_format="int12", dtype=torch.bfloat16), "needs a float32 decoder on the CPU"),
    ],
)
def test_bad_formats_are_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LatentDecoder(decoder(), backend="eager", **kwargs)


def test_the_artifact_recipe_names_the_format():
    fast = LatentDecoder(decoder(), backend="eager", conv_format="int12")
    plain = LatentDecoder(decoder(), backend="eager")
    assert fast.aot_recipe().params["conv_format"] == "int12"
    assert plain.aot_recipe().params["conv_format"] is None
    assert fast.aot_recipe().key_material() != plain.aot_recipe().key_material()


def test_the_ahead_of_time_artifact_runs_the_int12_ops(monkeypatch, tmp_path):
    """The packs are buffers: an artifact reads them as constants, so it computes what eager does."""
    monkeypatch.setenv("JASCO_FAST_CACHE_DIR", str(tmp_path))
    dec = decoder()
    aot = LatentDecoder(dec, backend="aot", conv_format="int12", background_build=False, chunk_frames=None)
    recipe = aot.aot_recipe(single=True)
    artifacts.build(recipe)
    status = aot.load_artifacts()
    assert any(v.startswith("loaded") for v in status.values()), status
    x = latents()
    eager = LatentDecoder(dec, backend="eager", conv_format="int12", chunk_frames=None)
    assert torch.equal(aot(x), eager(x))


def test_the_command_line_takes_the_format(tmp_path, capsys):
    from jasco_fast.cli import main

    args = ["demo", "--seconds", "0.2", "--backend", "eager", "--out-dir", str(tmp_path)]
    assert main([*args, "--conv-format", "int12"]) == 0
    assert "int12 convolutions" in capsys.readouterr().out
    assert main([*args, "--dtype", "bfloat16", "--conv-format", "int12"]) == 2
    assert "--conv-format int12 needs --dtype float32 on the CPU" in capsys.readouterr().err
