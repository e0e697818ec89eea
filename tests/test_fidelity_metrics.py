"""The fidelity metrics of benchmarks/_fidelity.py on signals whose answer is known in closed form."""

from __future__ import annotations

import math

import _fidelity  # benchmarks/ is on pytest's pythonpath (pyproject.toml)
import bench_fidelity
import pytest
import torch

import jasco_fast
from jasco_fast.decoder import LSTM

SR = 32000


def _music_like(seconds: float = 2.0, seed: int = 0) -> torch.Tensor:
    """A few harmonic tones with an envelope plus a little broadband noise, [1, 1, samples]."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    x = sum(0.2 / k * torch.sin(2 * math.pi * 220 * k * t) for k in range(1, 8))
    x = x * (0.6 + 0.4 * torch.sin(2 * math.pi * 1.5 * t)) + 0.01 * torch.randn(
        t.shape, generator=gen, dtype=torch.float64
    )
    return x.view(1, 1, -1)


@pytest.mark.parametrize("snr", [20.0, 42.0, 60.0])
def test_snr_of_added_noise_of_known_power(snr):
    x = _music_like()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    # scale the noise to exactly the power that gives this SNR
    noise *= math.sqrt(x.square().sum().item() / noise.square().sum().item() / 10 ** (snr / 10))
    assert _fidelity.snr_db(x, x + noise) == pytest.approx(snr, abs=0.1)
    assert _fidelity.snr_db(x.float(), (x + noise).float()) == pytest.approx(snr, abs=0.1)


def test_snr_of_a_gain_error():
    x = _music_like()
    # y = 1.01 x: error power / signal power = 1e-4, so 40 dB
    assert _fidelity.snr_db(x, 1.01 * x) == pytest.approx(40.0, abs=1e-6)
    assert _fidelity.snr_db(x, x.clone()) == math.inf


def test_max_error_over_peak():
    x = torch.tensor([0.0, 0.5, -2.0, 1.0])
    assert _fidelity.max_error_over_peak(x, x + torch.tensor([0.0, 0.02, 0.0, -0.01])) == pytest.approx(0.01)


def test_metrics_reject_mismatched_shapes_and_silence():
    with pytest.raises(ValueError, match="same shape"):
        _fidelity.snr_db(torch.ones(10), torch.ones(11))
    with pytest.raises(ValueError, match="silent"):
        _fidelity.snr_db(torch.zeros(10), torch.ones(10))
    with pytest.raises(ValueError, match="silent"):
        _fidelity.log_mel_distance(torch.zeros(4096), torch.ones(4096), SR)


def test_mel_filterbank_shape_and_peaks():
    bank = _fidelity.mel_filterbank(SR, 2048, 80)
    assert bank.shape == (80, 1025)
    assert bank.max().item() <= 1.0 and (bank >= 0).all()
    assert (bank.sum(dim=1) > 0).all()  # no empty filter at this resolution
    centres = bank.argmax(dim=1)
    assert (centres[1:] > centres[:-1]).all()  # centres rise with the band index
    # HTK mel: 1000 Hz is 1000 mel (by the scale's definition, within rounding)
    assert _fidelity.hz_to_mel(1000.0).item() == pytest.approx(1000.0, abs=0.5)
    assert _fidelity.mel_to_hz(_fidelity.hz_to_mel(5000.0)).item() == pytest.approx(5000.0)


def test_a_tone_lands_in_the_band_around_its_frequency():
    t = torch.arange(SR, dtype=torch.float64) / SR
    mel = _fidelity.mel_power(torch.sin(2 * math.pi * 1000 * t), SR)
    band = mel.mean(dim=-1).argmax().item()
    bank = _fidelity.mel_filterbank(SR, 2048, 80)
    peak_hz = bank[band].argmax().item() * SR / 2048
    assert abs(peak_hz - 1000) < 150


def test_log_mel_distance_of_a_gain_is_the_gain_in_db():
    x = _music_like()
    assert _fidelity.log_mel_distance(x, x.clone(), SR) == 0.0
    # a gain of 2 multiplies every mel power by 4: 6.02 dB in every band above the floor
    assert _fidelity.log_mel_distance(x, 2 * x, SR) == pytest.approx(20 * math.log10(2), abs=0.01)
    assert _fidelity.log_mel_distance(x, 0.5 * x, SR) == pytest.approx(20 * math.log10(2), abs=0.01)


def test_log_mel_distance_grows_as_the_noise_rises():
    x = _music_like()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    noise /= noise.square().mean().sqrt()
    level = x.square().mean().sqrt()
    d = [_fidelity.log_mel_distance(x, x + level * 10 ** (-snr / 20) * noise, SR) for snr in (80, 50, 30, 10)]
    assert d == sorted(d) and d[0] < 0.01 and d[-1] > 1.0


def test_worst_band_snr_finds_an_error_confined_to_one_band():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 1, 2 * SR, generator=gen, dtype=torch.float64)  # white: every band carries signal
    white = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    white *= math.sqrt(x.square().sum().item() / white.square().sum().item() / 1e4)  # 40 dB overall
    # white error: every band has about the overall SNR
    assert _fidelity.worst_band_snr_db(x, x + white, SR) == pytest.approx(40.0, abs=1.0)
    # the same error power as a 12 kHz tone: 40 dB overall, far worse in the band around 12 kHz
    t = torch.arange(x.shape[-1], dtype=torch.float64) / SR
    tone = torch.sin(2 * math.pi * 12000 * t).view(1, 1, -1)
    tone *= math.sqrt(white.square().sum().item() / tone.square().sum().item())
    assert _fidelity.snr_db(x, x + tone) == pytest.approx(40.0, abs=0.01)
    assert _fidelity.worst_band_snr_db(x, x + tone, SR) < 30.0
    assert _fidelity.worst_band_snr_db(x, x.clone(), SR) == math.inf


def _realistic_audio(decoder) -> torch.Tensor:
    """The decoder's audio for 40 frames of realistic latents (not the calibration's)."""
    latents = bench_fidelity.realistic_latents(1, 40, decoder.config.dimension, torch.Generator().manual_seed(1))
    x = jasco_fast.reference.denormalize_transpose(latents, jasco_fast.JASCO_LATENT_MEAN, jasco_fast.JASCO_LATENT_STD)
    with torch.no_grad():
        return decoder(x)


def test_realistic_decoder_calibrates_through_the_fused_cpu_ops():
    # Small channel counts, so every fused CPU op (residual block, activation + upsampling, final
    # activation + convolution) would run: calibration must still see each convolution's output.
    config = jasco_fast.DecoderConfig(dimension=16, n_filters=4, ratios=(4, 2), lstm=1)
    audio = _realistic_audio(bench_fidelity.realistic_decoder(0, config, calibration_frames=40))
    # the calibration latents differ from these, so the level is close, not exact
    rms = bench_fidelity._rms(audio)
    assert 0.5 * bench_fidelity.AUDIO_RMS < rms < 2 * bench_fidelity.AUDIO_RMS
    assert abs(audio.mean().item()) < 0.2 * rms


def _lstm_weights(decoder) -> torch.Tensor:
    return torch.cat([p.flatten() for m in decoder.modules() if isinstance(m, LSTM) for p in m.flat_weights()])


def test_checkpoints_alternate_between_two_lstm_scales():
    # the high-gain LSTM checkpoints: weights N(0, 0.05^2), and the rest of the decoder still calibrated
    assert [bench_fidelity.lstm_std_of_checkpoint(k) for k in range(4)] == [None, 0.05, None, 0.05]
    config = jasco_fast.DecoderConfig(dimension=16, n_filters=4, ratios=(4, 2), lstm=2)
    default = bench_fidelity.realistic_decoder(0, config, calibration_frames=40)
    high = bench_fidelity.realistic_decoder(0, config, calibration_frames=40, lstm_std=0.05)
    n = config.n_filters * 2 ** len(config.ratios)  # the LSTM's width
    assert _lstm_weights(default).abs().max() <= n**-0.5
    assert _lstm_weights(high).std().item() == pytest.approx(0.05, rel=0.05)
    rms = bench_fidelity._rms(_realistic_audio(high))
    assert 0.5 * bench_fidelity.AUDIO_RMS < rms < 2 * bench_fidelity.AUDIO_RMS
