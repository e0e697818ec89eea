"""jasco_fast.decoder: the SEANet network against audiocraft's and transformers' decoders with the same
weights, its config validation, and that the removed old name is gone."""

from __future__ import annotations

import pytest
import torch
from checkpoints import (
    AUDIOCRAFT_CONFIGS,
    F32_TOL,
    HF_CONFIGS,
    LENGTHS,
    audiocraft_modules,
    needs_audiocraft,
    rel_err,
    seed_of,
    transformers_model,
    write_audiocraft_checkpoint,
    write_transformers_dir,
)

import jasco_fast
from jasco_fast import DecoderConfig, SEANetDecoder, load_decoder


@pytest.mark.parametrize("name", HF_CONFIGS)
def test_matches_transformers(name, tmp_path):
    path, model = write_transformers_dir(tmp_path, seed=seed_of(name), **HF_CONFIGS[name])
    decoder = load_decoder(path)
    cfg = model.config
    for T in LENGTHS:
        x = torch.randn(2, cfg.hidden_size, T)
        with torch.no_grad():
            want, got = model.decoder(x), decoder(x)
        assert got.shape == want.shape == (2, cfg.audio_channels, T * decoder.hop_length)
        assert rel_err(got, want) < F32_TOL, (name, T)


@needs_audiocraft
@pytest.mark.parametrize("name", AUDIOCRAFT_CONFIGS)
def test_matches_audiocraft(name, tmp_path):
    path, upstream = write_audiocraft_checkpoint(
        tmp_path / "compression_state_dict.bin", seed=seed_of(name), **AUDIOCRAFT_CONFIGS[name]
    )
    decoder = load_decoder(path)
    lengths = LENGTHS
    if decoder.config.pad_mode == "circular":  # upstream cannot wrap a pad around more than once either
        with pytest.raises(ValueError, match="circular padding"):
            decoder(torch.randn(1, 8, 1))
        lengths = (3, 5, 37)
    for T in lengths:
        x = torch.randn(2, 8, T)
        with torch.no_grad():
            want, got = upstream(x), decoder(x)
        assert got.shape == want.shape == (2, 1, T * decoder.hop_length)
        assert rel_err(got, want) < F32_TOL, (name, T)


@needs_audiocraft
def test_audiocraft_modules_are_the_real_ones():
    seanet = audiocraft_modules()
    assert seanet is not None and seanet.SEANetDecoder.__module__ == "_ac_modules.seanet"


def test_full_size_32khz_matches_transformers():
    model = transformers_model(
        seed=3,
        audio_channels=1,
        sampling_rate=32000,
        num_filters=64,
        hidden_size=128,
        upsampling_ratios=[8, 5, 4, 4],
        num_lstm_layers=2,
        use_causal_conv=False,
        pad_mode="reflect",
        use_conv_shortcut=False,
    )
    state = {f"decoder.{k}": v for k, v in model.decoder.state_dict().items()}
    decoder = jasco_fast.loading.load_state(SEANetDecoder(DecoderConfig()), state, "transformers", "<memory>").eval()
    # the same parameters once weight norm's g is folded away: ~28.4 M
    upstream_count = sum(p.numel() for n, p in model.decoder.named_parameters() if not n.endswith("original0"))
    assert sum(p.numel() for p in decoder.parameters()) == upstream_count
    assert 28.3e6 < upstream_count < 28.5e6
    x = torch.randn(1, 128, 6)
    with torch.no_grad():
        assert rel_err(decoder(x), model.decoder(x)) < F32_TOL


def test_config_validation():
    with pytest.raises(ValueError, match="ratios"):
        DecoderConfig(ratios=())
    with pytest.raises(ValueError, match="trim_right_ratio"):
        DecoderConfig(trim_right_ratio=0.5)
    with pytest.raises(ValueError, match="activation"):
        DecoderConfig(activation="NotAnActivation")
    with pytest.raises(ValueError, match=r"SEANetDecoder expects \[B, 128, T\]"):
        SEANetDecoder()(torch.randn(1, 64, 5))
    with pytest.raises(ValueError, match=r"T >= 1"):
        SEANetDecoder()(torch.randn(1, 128, 0))


def test_removed_old_name_decoder_is_gone():
    with pytest.raises(ImportError):
        from jasco_fast import Decoder  # noqa: F401
    assert not hasattr(jasco_fast.decoder, "Decoder")
