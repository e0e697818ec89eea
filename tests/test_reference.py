"""jasco_fast.reference, the oracle every fast path is tested against: itself checked against the upstream
decoders (transformers, audiocraft) and against JASCO's generate_audio written out."""

from __future__ import annotations

import pytest
import torch
from checkpoints import (
    AUDIOCRAFT_CONFIGS,
    F32_TOL,
    HF_CONFIGS,
    LENGTHS,
    needs_audiocraft,
    rel_err,
    seed_of,
    write_audiocraft_checkpoint,
    write_transformers_dir,
)

from jasco_fast import JASCO_LATENT_MEAN, JASCO_LATENT_STD, load_decoder, reference


@pytest.mark.parametrize("name", HF_CONFIGS)
def test_reference_decoder_matches_transformers(name, tmp_path):
    path, model = write_transformers_dir(tmp_path, seed=seed_of(name), **HF_CONFIGS[name])
    oracle = reference.ReferenceDecoder(load_decoder(path))
    for T in LENGTHS:
        x = torch.randn(2, model.config.hidden_size, T)
        with torch.no_grad():
            want, got = model.decoder(x), oracle(x)
        assert got.shape == want.shape
        assert rel_err(got, want) < F32_TOL, (name, T)


@needs_audiocraft
@pytest.mark.parametrize("name", AUDIOCRAFT_CONFIGS)
def test_reference_decoder_matches_audiocraft(name, tmp_path):
    path, upstream = write_audiocraft_checkpoint(
        tmp_path / "compression_state_dict.bin", seed=seed_of(name), **AUDIOCRAFT_CONFIGS[name]
    )
    oracle = reference.ReferenceDecoder(load_decoder(path))
    lengths = (3, 5, 37) if AUDIOCRAFT_CONFIGS[name].get("pad_mode") == "circular" else LENGTHS
    for T in lengths:
        x = torch.randn(2, 8, T)
        with torch.no_grad():
            want, got = upstream(x), oracle(x)
        assert got.shape == want.shape
        assert rel_err(got, want) < F32_TOL, (name, T)


def test_decode_is_jascos_generate_audio(tmp_path):
    """reference.decode from a checkpoint path, a SEANetDecoder or a ReferenceDecoder against JASCO's
    generate_audio written out on the transformers model that produced the checkpoint."""
    path, model = write_transformers_dir(tmp_path, seed=17)
    latents = torch.randn(2, 9, 8)
    with torch.no_grad():
        want = model.decoder((latents * JASCO_LATENT_STD + JASCO_LATENT_MEAN).permute(0, 2, 1))
    decoder = load_decoder(path)
    for source in (path, decoder, reference.ReferenceDecoder(decoder)):
        got = reference.decode(source, latents)
        assert got.shape == want.shape == (2, 1, 9 * decoder.hop_length)
        assert rel_err(got, want) < F32_TOL, type(source).__name__
    mean, std = torch.randn(8) * 0.1, torch.rand(8) + 0.5  # per-channel statistics
    with torch.no_grad():
        want = model.decoder((latents * std + mean).permute(0, 2, 1))
    assert rel_err(reference.decode(path, latents, mean, std), want) < F32_TOL


@pytest.mark.parametrize("channels_last", [False, True])
def test_denormalize_transpose_element_formula_and_layout(channels_last):
    latents = torch.randn(2, 5, 3, dtype=torch.float64)
    mean, std = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64)
    got = reference.denormalize_transpose(latents, mean, std, dtype=torch.float32, channels_last=channels_last)
    assert got.shape == (2, 3, 5) and got.dtype == torch.float32
    assert got.stride() == ((15, 1, 3) if channels_last else (15, 5, 1))
    for b in range(2):
        for t in range(5):
            for d in range(3):
                assert got[b, d, t].item() == pytest.approx(latents[b, t, d].item() * 3.0 + mean[d].item(), rel=1e-6)


def test_removed_old_name_eager_decoder_is_gone():
    assert not hasattr(reference, "EagerDecoder")
