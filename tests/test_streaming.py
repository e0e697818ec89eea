"""Exact chunked decoding (jasco_fast.streaming, LatentDecoder.stream and the chunked forward): the
receptive-field arithmetic against brute force, chunked == one pass == the reference across lengths,
chunk sizes, batch sizes, pad modes, causal and not, stereo, ragged iterable input, compiled and eager."""

from __future__ import annotations

import itertools

import pytest
import torch

from jasco_fast import DecoderConfig, LatentDecoder, SEANetDecoder, reference
from jasco_fast.decoder import LSTM, layer_context, receptive_field
from jasco_fast.streaming import chunk_plan, why_not_chunkable

# float32: chunked and one-pass run the same convolutions on the same numbers; only the kernels'
# summation order can change with the window length. Budget: max abs difference <= 1e-5 of the peak.
PEAK_TOL = 1e-5
MEAN, STD = -0.0074, 4.0102


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_config(**overrides) -> DecoderConfig:
    base = dict(dimension=8, n_filters=4, ratios=(4, 2), lstm=1, kernel_size=7, last_kernel_size=5)
    return DecoderConfig(**{**base, **overrides})


def tiny_decoder(seed: int = 0, **overrides) -> SEANetDecoder:
    torch.manual_seed(seed)
    decoder = SEANetDecoder(tiny_config(**overrides)).eval()
    with torch.no_grad():  # away from the init, so no dependency is accidentally zero
        for p in decoder.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return decoder


def peak_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


# --------------------------------------------------------------------------------------------------
# Receptive field: the arithmetic against brute force


def brute_context(layers: torch.nn.Module, channels: int, frames: int = 48, margin: int = 16) -> tuple[int, int]:
    """(left, right) measured: perturb one input frame at a time and see which output frames change,
    over output frames far enough from both ends that the padding plays no part."""
    layers = layers.double()
    x = torch.randn(1, channels, 1, frames, dtype=torch.float64)
    with torch.no_grad():
        base = layers(x)
        hop = base.shape[-1] // frames
        deps = [set() for _ in range(frames)]
        for j in range(frames):
            xp = x.clone()
            xp[..., j] += 1.0
            changed = ((layers(xp) - base).abs() > 1e-12).reshape(-1, frames * hop).any(0)
            for q in set((changed.nonzero().flatten() // hop).tolist()):
                deps[q].add(j)
    left = max(q - min(deps[q]) for q in range(margin, frames - margin))
    right = max(max(deps[q]) - q for q in range(margin, frames - margin))
    return left, right


RF_CONFIGS = {
    "encodec_like": dict(lstm=0),
    "causal": dict(lstm=0, causal=True),
    "causal_trim_quarter": dict(lstm=0, causal=True, trim_right_ratio=0.25, ratios=(3, 2)),
    "odd": dict(
        lstm=0,
        ratios=(3, 5),
        kernel_size=5,
        last_kernel_size=3,
        residual_kernel_size=5,
        dilation_base=3,
        n_residual_layers=2,
        compress=1,
    ),
    "conv_shortcut_three_stages": dict(lstm=0, true_skip=False, ratios=(2, 3, 2), n_residual_layers=2),
}


@pytest.mark.parametrize("name", RF_CONFIGS)
def test_receptive_field_matches_brute_force(name):
    decoder = tiny_decoder(**RF_CONFIGS[name])
    ctx = decoder.receptive_field()
    assert ctx.upsample == decoder.hop_length
    assert (ctx.left, ctx.right) == brute_context(decoder.layers, decoder.dimension)


def test_receptive_field_per_layer_matches_brute_force():
    decoder = tiny_decoder(lstm=0, ratios=(5,), causal=True, trim_right_ratio=0.5)
    for layer in decoder.layers:
        ctx = layer_context(layer)
        channels = next((p.shape[1] for n, p in layer.named_parameters() if "weight" in n), 4)
        if type(layer).__name__ == "ConvTranspose":
            channels = layer.weight.shape[0]
        assert (ctx.left, ctx.right) == brute_context(torch.nn.Sequential(layer), channels), type(layer).__name__


def test_receptive_field_around_the_lstm():
    decoder = tiny_decoder(lstm=2)
    layers = list(decoder.layers)
    i = next(k for k, layer in enumerate(layers) if isinstance(layer, LSTM))
    for part, channels in ((layers[:i], decoder.dimension), (layers[i + 1 :], layers[i].weight_ih_l0.shape[1])):
        ctx = receptive_field(part)
        assert (ctx.left, ctx.right) == brute_context(torch.nn.Sequential(*part), channels)
    # the LSTM: every earlier frame, no later one
    whole = decoder.receptive_field()
    assert (
        whole.left is None and whole.right == receptive_field(layers[:i]).right + receptive_field(layers[i + 1 :]).right
    )
    lstm = torch.nn.Sequential(layers[i])
    x = torch.randn(1, layers[i].weight_ih_l0.shape[1], 1, 30)
    with torch.no_grad():
        base = lstm(x)
        xp = x.clone()
        xp[..., 5] += 1
        changed = ((lstm(xp) - base).abs() > 0).any(1).flatten()
    assert not changed[:5].any() and changed[5:].all()


def test_group_norm_depends_on_everything():
    decoder = tiny_decoder(lstm=0, norm="time_group_norm")
    assert not decoder.receptive_field().bounded
    assert "time_group_norm" in why_not_chunkable(decoder)


# --------------------------------------------------------------------------------------------------
# Chunked == one pass == reference


STREAM_CONFIGS = {
    "reflect": dict(),
    "constant_causal": dict(pad_mode="constant", causal=True),
    "replicate_stereo_two_lstm_layers": dict(pad_mode="replicate", channels=2, lstm=2),
    "reflect_causal_trim_half": dict(causal=True, trim_right_ratio=0.5, n_residual_layers=2),
    "constant_no_lstm_odd_ratios": dict(
        pad_mode="constant", lstm=0, ratios=(3, 5), kernel_size=5, dilation_base=3, n_residual_layers=2
    ),
    "replicate_causal_conv_shortcut": dict(pad_mode="replicate", causal=True, true_skip=False, channels=2),
}


def lengths_for(chunk: int, right: int) -> list[int]:
    return sorted(
        {
            1,
            2,
            chunk - 1,
            chunk,
            chunk + 1,
            chunk + right - 1,
            chunk + right,
            chunk + right + 1,
            2 * chunk + right,
            3 * chunk + 7,
            4 * chunk + right + 3,
        }
    )


@pytest.mark.parametrize("name", STREAM_CONFIGS)
def test_stream_equals_one_pass_and_reference(name):
    decoder = tiny_decoder(seed=len(name), **STREAM_CONFIGS[name])
    one_pass = LatentDecoder(decoder, MEAN, STD, backend="eager", chunk_frames=None)
    chunked = LatentDecoder(decoder, MEAN, STD, backend="eager")
    for chunk in (chunk_plan(decoder, 64).left, 16, 23):
        plan = chunk_plan(decoder, chunk)
        for T, B in itertools.product(lengths_for(chunk, plan.right), (1, 3)):
            latents = torch.randn(B, T, decoder.dimension)
            want = one_pass(latents)
            pieces = list(chunked.stream(latents, chunk_frames=chunk))
            got = torch.cat(pieces, dim=-1)
            assert got.dtype == torch.float32 and got.shape == want.shape == (
                B,
                decoder.channels,
                T * decoder.hop_length,
            )
            assert peak_err(got, want) <= PEAK_TOL, (chunk, T, B)
            middles = max(0, (T - plan.right - chunk) // chunk)  # chunks whose look-ahead has arrived
            expected_pieces = 1 if T < chunk + plan.right else 1 + middles + ((1 + middles) * chunk < T)
            assert len(pieces) == expected_pieces, (chunk, T)
            assert all(p.shape[-1] == chunk * decoder.hop_length for p in pieces[:-1])
        latents = torch.randn(2, 3 * chunk + 5, decoder.dimension)
        assert (
            peak_err(
                torch.cat(list(chunked.stream(latents, chunk_frames=chunk)), -1),
                reference.decode(decoder, latents, MEAN, STD),
            )
            <= PEAK_TOL
        )


@pytest.mark.parametrize("pad_mode", ["constant", "reflect", "replicate"])
def test_long_forward_takes_the_chunked_path_and_equals_one_pass(pad_mode):
    decoder = tiny_decoder(pad_mode=pad_mode)
    chunked = LatentDecoder(decoder, backend="eager", chunk_frames=20)
    one_pass = LatentDecoder(decoder, backend="eager", chunk_frames=None)
    latents = torch.randn(2, 157, decoder.dimension)
    got = chunked(latents)
    assert torch.equal(got, torch.cat(list(chunked.stream(latents)), -1))  # the very same chunks
    assert peak_err(got, one_pass(latents)) <= PEAK_TOL
    assert chunked.chunk_frames == 20 and one_pass.chunk_frames is None


def ragged(latents: torch.Tensor, sizes) -> list[torch.Tensor]:
    cuts = list(itertools.accumulate(sizes, initial=0))
    return [latents[:, a:b] for a, b in zip(cuts, cuts[1:])] + [latents[:, cuts[-1] :]]


@pytest.mark.parametrize("name", ["reflect", "constant_causal", "replicate_stereo_two_lstm_layers"])
def test_iterable_of_ragged_chunks(name):
    decoder = tiny_decoder(**STREAM_CONFIGS[name])
    fast = LatentDecoder(decoder, backend="eager", chunk_frames=16)
    one_pass = LatentDecoder(decoder, backend="eager", chunk_frames=None)
    latents = torch.randn(2, 111, decoder.dimension)
    want = one_pass(latents)
    for sizes in ([1] * 40, [0, 5, 0, 33, 2, 17], [111], [15, 16, 17, 1, 28]):
        got = torch.cat(list(fast.stream(iter(ragged(latents, sizes)))), -1)
        assert peak_err(got, want) <= PEAK_TOL, sizes


def test_pieces_come_out_as_soon_as_final():
    decoder = tiny_decoder()
    fast = LatentDecoder(decoder, backend="eager", chunk_frames=16)
    plan = chunk_plan(decoder, 16)
    arrived = 0

    def source():
        nonlocal arrived
        for _ in range(100):
            arrived += 1
            yield torch.randn(1, 1, decoder.dimension)

    stream = fast.stream(source())
    seen = []
    for piece in stream:
        seen.append(arrived)
        assert piece.shape[-1] == 16 * decoder.hop_length or arrived == 100
    # chunk k (committing frames [16k, 16k + 16)) is out once its right context has arrived
    assert seen[:-1] == [16 * (k + 1) + plan.right for k in range(len(seen) - 1)]
    assert seen[-1] == 100


def test_circular_and_group_norm_take_one_pass():
    for overrides in (dict(pad_mode="circular"), dict(norm="time_group_norm", lstm=0)):
        decoder = tiny_decoder(**overrides)
        fast = LatentDecoder(decoder, backend="eager", chunk_frames=16)
        assert fast.chunk_frames is None  # never chunked
        latents = torch.randn(2, 90, decoder.dimension)
        pieces = list(fast.stream(ragged(latents, [10, 30])))
        assert len(pieces) == 1
        want = reference.decode(decoder, latents)
        assert peak_err(pieces[0], want) <= PEAK_TOL and peak_err(fast(latents), want) <= PEAK_TOL
        with pytest.raises(ValueError, match="cannot be decoded chunk by chunk"):
            chunk_plan(decoder, 16)


def test_chunk_steps_driven_by_hand():
    """The per-position functions are the whole per-chunk work (what an ahead-of-time build compiles)."""
    decoder = tiny_decoder(lstm=2)
    fast = LatentDecoder(decoder, backend="eager", chunk_frames=16)
    plan = chunk_plan(decoder, 16)
    latents = torch.randn(2, 70, decoder.dimension)
    C, L, R = plan.chunk_frames, plan.left, plan.right
    h = c = torch.zeros(2, 2, decoder.layers[1].weight_hh_l0.shape[1])
    with torch.inference_mode():
        first, h, c = fast.chunk_step("first")(latents[:, : plan.window_frames("first")], h, c)
        pieces, s = [first], C
        while s + C + R <= 70:
            audio, h, c = fast.chunk_step("middle")(latents[:, s - L : s + C + R], h, c)
            pieces.append(audio)
            s += C
        pieces.append(fast.chunk_step("last")(latents[:, s - L :], h, c)[0])
    assert torch.equal(torch.cat(pieces, -1), torch.cat(list(fast.stream(latents)), -1))


def test_empty_batch():
    decoder = tiny_decoder()
    fast = LatentDecoder(decoder, backend="eager", chunk_frames=16)
    out = torch.cat(list(fast.stream(torch.randn(0, 50, decoder.dimension))), -1)
    assert out.shape == (0, 1, 50 * decoder.hop_length)
    assert fast(torch.randn(0, 50, decoder.dimension)).shape == (0, 1, 50 * decoder.hop_length)


def test_compiled_stream_equals_eager_without_recompiling():
    decoder = tiny_decoder(lstm=2, channels=2)
    eager = LatentDecoder(decoder, backend="eager", chunk_frames=None)
    fast = LatentDecoder(decoder, backend="inductor", chunk_frames=16)
    for T in (45, 61):  # compiles first, middle and last (dynamic length) once
        latents = torch.randn(2, T, decoder.dimension)
        assert peak_err(torch.cat(list(fast.stream(latents)), -1), eager(latents)) <= PEAK_TOL
    with torch.compiler.set_stance("fail_on_recompile"):  # raises on any new compilation
        for T in (46, 77, 130):
            latents = torch.randn(2, T, decoder.dimension)
            assert peak_err(fast(latents), eager(latents)) <= PEAK_TOL, T
        latents = torch.randn(2, 83, decoder.dimension)
        got = torch.cat(list(fast.stream(iter(ragged(latents, [7, 1, 30, 0, 9])))), -1)
        assert peak_err(got, eager(latents)) <= PEAK_TOL


# --------------------------------------------------------------------------------------------------
# Errors


def test_argument_errors():
    decoder = tiny_decoder()
    left = chunk_plan(decoder, 64).left
    fast = LatentDecoder(decoder, backend="eager", chunk_frames=16)
    with pytest.raises(ValueError, match=f"at least {left}"):
        list(fast.stream(torch.randn(1, 50, 8), chunk_frames=left - 1))
    with pytest.raises(ValueError, match=f"at least {left}"):
        LatentDecoder(decoder, backend="eager", chunk_frames=left - 1)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            chunk_plan(decoder, bad)
    with pytest.raises(TypeError, match="SEANetDecoder"):
        chunk_plan(torch.nn.Linear(2, 2), 16)
    with pytest.raises(TypeError, match="tensor or an iterable"):
        fast.stream(3)
    with pytest.raises(TypeError, match="tensor or an iterable"):
        fast.stream("latents")
    with pytest.raises(ValueError, match=r"\[B, T, 8\]"):
        fast.stream(torch.randn(50, 8))
    with pytest.raises(TypeError, match="must be a tensor"):
        list(fast.stream([torch.randn(1, 5, 8), "x"]))
    with pytest.raises(ValueError, match=r"\[B, T, 8\]"):
        list(fast.stream([torch.randn(1, 5, 8), torch.randn(1, 5, 7)]))
    with pytest.raises(ValueError, match="agree in B"):
        list(fast.stream([torch.randn(1, 5, 8), torch.randn(2, 5, 8)]))
    with pytest.raises(ValueError, match="T >= 1"):
        list(fast.stream([]))
    with pytest.raises(ValueError, match="T >= 1"):
        list(fast.stream([torch.randn(1, 0, 8)]))
    with pytest.raises(TypeError, match="latents must be float32/float64/float16/bfloat16"):
        list(fast.stream([torch.ones(1, 5, 8, dtype=torch.int64)]))
    with pytest.raises(ValueError, match="position"):
        fast.chunk_step("middle_ish")


# --------------------------------------------------------------------------------------------------
# The command line decodes long inputs chunk by chunk


def test_cli_decodes_long_items_chunk_by_chunk(tmp_path, tiny_hf_checkpoint, capsys):
    import numpy as np
    import soundfile as sf

    from jasco_fast import load_decoder
    from jasco_fast.cli import main

    decoder = load_decoder(tiny_hf_checkpoint)
    latents = torch.randn(300, decoder.dimension)
    np.save(tmp_path / "long.npy", latents.numpy())
    args = [
        "decode",
        str(tmp_path / "long.npy"),
        "--checkpoint",
        str(tiny_hf_checkpoint),
        "--backend",
        "eager",
        "--format",
        "flac",
        "--strategy",
        "none",
    ]
    assert main(args + ["--out-dir", str(tmp_path / "chunked"), "--chunk-frames", "16"]) == 0
    want = LatentDecoder(decoder, backend="eager", chunk_frames=None)(latents[None])[0, 0].numpy()
    got, rate = sf.read(str(tmp_path / "chunked" / "long.flac"))
    assert rate == decoder.sample_rate and got.shape == want.shape
    assert np.abs(got - want.clip(-1, 1)).max() <= 1 / 32768  # 16-bit rounding only
    left = chunk_plan(decoder, 64).left
    assert main(args + ["--out-dir", str(tmp_path / "bad"), "--chunk-frames", str(left - 1)]) == 2
    assert f"at least {left}" in capsys.readouterr().err
