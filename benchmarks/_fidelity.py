"""How far a decode is from the float32 reference, in numbers a listener can read: SNR, a log-mel
spectral distance, and the largest sample error relative to the peak. Used by bench_fidelity.py and
bench_decode.py; tested in tests/test_fidelity_metrics.py.

Every metric takes (reference, test) audio of the same shape [..., samples] and computes in float64.
"""

from __future__ import annotations

import math

import torch


def _pair(reference: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if reference.shape != test.shape:
        raise ValueError(
            f"reference and test must have the same shape, got {list(reference.shape)} and {list(test.shape)}"
        )
    return reference.detach().double().cpu(), test.detach().double().cpu()


def snr_db(reference: torch.Tensor, test: torch.Tensor) -> float:
    """10 log10(signal power / error power), over all samples; inf when they are equal."""
    ref, test = _pair(reference, test)
    signal, error = ref.square().sum().item(), (test - ref).square().sum().item()
    if signal == 0:
        raise ValueError("snr_db: the reference is silent")
    return math.inf if error == 0 else 10 * math.log10(signal / error)


def max_error_over_peak(reference: torch.Tensor, test: torch.Tensor) -> float:
    """max |test - reference| / max |reference|."""
    ref, test = _pair(reference, test)
    return ((test - ref).abs().max() / ref.abs().max()).item()


def hz_to_mel(hz):
    """The HTK mel scale (2595 log10(1 + f / 700))."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(hz, dtype=torch.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (torch.as_tensor(mel, dtype=torch.float64) / 2595.0) - 1.0)


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None
) -> torch.Tensor:
    """Triangular filters [n_mels, n_fft // 2 + 1], centres equally spaced on the HTK mel scale, each
    peaking at 1 (no area normalisation: the distance below compares two signals through the same bank)."""
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2, got {f_min}, {f_max}, {sample_rate}")
    bins = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = mel_to_hz(torch.linspace(hz_to_mel(f_min).item(), hz_to_mel(f_max).item(), n_mels + 2, dtype=torch.float64))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


def mel_power(
    audio: torch.Tensor, sample_rate: int, n_fft: int = 2048, hop: int = 512, n_mels: int = 80
) -> torch.Tensor:
    """Mel power spectrogram [..., n_mels, frames] of audio [..., samples] (Hann window, float64)."""
    x = audio.detach().double().cpu()
    lead = x.shape[:-1]
    spec = (
        torch.stft(
            x.reshape(-1, x.shape[-1]),
            n_fft,
            hop,
            window=torch.hann_window(n_fft, dtype=torch.float64),
            center=True,
            return_complex=True,
        )
        .abs()
        .square()
    )
    mel = mel_filterbank(sample_rate, n_fft, n_mels) @ spec
    return mel.reshape(*lead, n_mels, mel.shape[-1])


def log_mel_distance(
    reference: torch.Tensor,
    test: torch.Tensor,
    sample_rate: int,
    *,
    n_mels: int = 80,
    n_fft: int = 2048,
    hop: int = 512,
    floor_db: float = -100.0,
) -> float:
    """Mean absolute difference of the two log-mel spectrograms, in dB (10 |log10(P_test / P_ref)|, averaged
    over mel bands and frames).

    Powers are floored at ``floor_db`` below the reference's loudest mel bin (default -100 dB: below
    16-bit PCM's quantisation noise, about -98 dB for a full-scale sine), so bins that are silent in both
    signals do not count, and an error that rises above that floor does.
    """
    ref, test = _pair(reference, test)
    p_ref, p_test = mel_power(ref, sample_rate, n_fft, hop, n_mels), mel_power(test, sample_rate, n_fft, hop, n_mels)
    floor = p_ref.max() * 10 ** (floor_db / 10)
    if floor == 0:
        raise ValueError("log_mel_distance: the reference is silent")
    return (10 * (torch.log10(p_test.clamp_min(floor)) - torch.log10(p_ref.clamp_min(floor)))).abs().mean().item()


def worst_band_snr_db(
    reference: torch.Tensor,
    test: torch.Tensor,
    sample_rate: int,
    *,
    n_mels: int = 80,
    n_fft: int = 2048,
    hop: int = 512,
    floor_db: float = -100.0,
) -> float:
    """The lowest SNR of any mel band: per band, the reference's power over the error's power (summed over
    frames), over the bands whose reference power lies above ``floor_db`` below the loudest band. Where the
    overall SNR could hide an error concentrated where the music is quiet (e.g. high frequencies), this
    does not."""
    ref, test = _pair(reference, test)
    p_ref = mel_power(ref, sample_rate, n_fft, hop, n_mels).sum(dim=-1).flatten(0, -2).sum(dim=0)
    p_err = mel_power(test - ref, sample_rate, n_fft, hop, n_mels).sum(dim=-1).flatten(0, -2).sum(dim=0)
    if p_ref.max() == 0:
        raise ValueError("worst_band_snr_db: the reference is silent")
    audible = p_ref > p_ref.max() * 10 ** (floor_db / 10)
    ratio = p_ref[audible] / p_err[audible]
    return math.inf if torch.isinf(ratio).all() else (10 * torch.log10(ratio.min())).item()
