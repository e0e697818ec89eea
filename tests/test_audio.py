"""Tests for jasco_fast.audio: round trips measured back from the written files."""

import logging
import math
import os
import warnings

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
import torch

import jasco_fast.audio as audio_mod
from jasco_fast.audio import audio_write, write_batch

SR = 32000  # JASCO's rate
FORMATS = ["wav", "mp3", "ogg", "flac"]
LOSSY = {"mp3", "ogg"}
# Level tolerances (dB / LU) when measuring back from the file.
LEVEL_TOL = {"wav": 0.01, "flac": 0.001, "mp3": 0.5, "ogg": 0.5}
# Minimum SNR (dB) of the decoded file against the normalized input.
MIN_SNR = {"wav": 80, "flac": 120, "mp3": 20, "ogg": 20}
HALF_LSB16 = 0.5 / 32768


def signal(channels=2, seconds=2.0, sr=SR, amp=0.3, seed=0):
    """Band-limited (< 5 kHz) test audio [C, T] float32: lossy codecs keep its levels."""
    t = torch.arange(int(seconds * sr), dtype=torch.float64) / sr
    gen = torch.Generator().manual_seed(seed)
    chans = []
    for c in range(channels):
        f0 = 220.0 * (c + 1)
        x = (
            torch.sin(2 * math.pi * f0 * t)
            + 0.5 * torch.sin(2 * math.pi * 3.1 * f0 * t + c)
            + 0.3 * torch.sin(2 * math.pi * 1234.5 * t + 0.7 * c)
        )
        # slow amplitude envelope so that loudness gating has something to do
        x = x * (0.6 + 0.4 * torch.sin(2 * math.pi * 0.7 * t + torch.rand(1, generator=gen).item()))
        chans.append(x)
    x = torch.stack(chans)
    return (amp * x / x.abs().max()).float()


def read(path):
    """Decoded file as [C, T] float64 and its sample rate."""
    y, sr = sf.read(str(path), dtype="float64", always_2d=True)
    return y.T, sr


def peak_db(y):
    return 20 * np.log10(np.abs(y).max())


def mono_rms_db(y):
    return 20 * np.log10(np.sqrt((y.mean(axis=0) ** 2).mean()))


def lufs(y, sr):
    return pyloudnorm.Meter(sr).integrated_loudness(y.T)


def snr_db(ref, y):
    ref = np.asarray(ref, dtype=np.float64)
    return 10 * np.log10((ref**2).sum() / max(((y - ref) ** 2).sum(), 1e-300))


def listing(folder):
    return sorted(os.listdir(folder))


# ---------------------------------------------------------------------------------------------
# Round trips: every format, mono and stereo, peak strategy (the default).


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("channels", [1, 2])
def test_roundtrip_peak(tmp_path, fmt, channels):
    x = signal(channels)
    wav = x[0] if channels == 1 else x  # mono as [T]
    path = audio_write(tmp_path / "out", wav, SR, format=fmt)
    assert path == tmp_path / f"out.{fmt}"
    assert listing(tmp_path) == [f"out.{fmt}"]
    info = sf.info(str(path))
    assert info.samplerate == SR and info.channels == channels
    y, sr = read(path)
    assert sr == SR
    # libsndfile writes the LAME gapless header, so even mp3 decodes to the exact length.
    assert y.shape == (channels, x.shape[-1])
    assert abs(peak_db(y) - (-1.0)) < LEVEL_TOL[fmt] + (0 if fmt not in LOSSY else 0.3)
    expected = (x.double() * 10 ** (-1 / 20) / x.abs().max()).numpy()
    for c in range(channels):  # per channel: catches swapped / interleaved channels
        assert snr_db(expected[c], y[c]) > MIN_SNR[fmt]


# ---------------------------------------------------------------------------------------------
# Strategies, measured back from the file, for every format.


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("strategy", ["peak", "clip", "rms", "loudness", "loudness_compressor", "none"])
def test_strategies_levels(tmp_path, fmt, strategy):
    x = signal(2, amp=1.5 if strategy == "clip" else 0.3)
    compressor = strategy == "loudness_compressor"
    strat = "loudness" if compressor else strategy
    path = audio_write(tmp_path / "s", x, SR, format=fmt, strategy=strat, loudness_compressor=compressor)
    y, _ = read(path)
    assert y.shape == tuple(x.shape)
    tol = LEVEL_TOL[fmt]
    if strat == "peak":
        assert abs(peak_db(y) + 1) < tol + (0.3 if fmt in LOSSY else 0)
    elif strat == "clip":
        limit = 10 ** (-1 / 20)
        expected = x.double().clamp(-limit, limit).numpy()
        if fmt not in LOSSY:  # lossy codecs overshoot on the clipped edges
            assert abs(peak_db(y) + 1) < tol
        assert (np.abs(x.numpy()) > limit).any()  # the test input really clips
        assert snr_db(expected, y) > MIN_SNR[fmt]
    elif strat == "rms":
        assert abs(mono_rms_db(y) + 18) < tol
    elif strat == "loudness" and not compressor:
        assert abs(lufs(y, SR) + 14) < (0.05 if fmt not in LOSSY else 0.5)
    elif compressor:
        xd = x.double().numpy()
        gain = 10 ** ((-14 - lufs(xd, SR)) / 20)
        expected = np.tanh(gain * xd)
        assert snr_db(expected, y) > MIN_SNR[fmt]
        # tanh only lowers the level: loudness a little under the target, never above
        assert -14 - 2 < lufs(y, SR) < -14 + (0.05 if fmt not in LOSSY else 0.5)
    else:  # none: untouched
        if fmt == "wav":
            assert np.abs(y - x.double().numpy()).max() <= HALF_LSB16 + 1e-12
        assert snr_db(x.numpy(), y) > MIN_SNR[fmt]


def test_none_equals_input_within_16bit(tmp_path):
    x = signal(2, amp=0.9, seed=3)
    y, _ = read(audio_write(tmp_path / "n", x, SR, strategy="none"))
    err = np.abs(y - x.double().numpy())
    assert err.max() <= HALF_LSB16 + 1e-12
    assert err.max() > 0  # it really went through 16-bit quantization


def test_peak_normalize_false_only_prevents_clipping(tmp_path):
    quiet = signal(2, amp=0.1)
    y, _ = read(audio_write(tmp_path / "q", quiet, SR, format="flac", normalize=False))
    assert np.abs(y - quiet.double().numpy()).max() < 1e-6  # left alone
    loud = quiet * 25  # peak 2.5
    y, _ = read(audio_write(tmp_path / "l", loud, SR, format="flac", normalize=False))
    assert abs(peak_db(y) + 1) < 1e-3  # scaled down to the headroom


def test_rms_normalize_false_and_headroom(tmp_path):
    quiet = signal(2, amp=0.01)  # mono RMS far below -18 dB
    y, _ = read(audio_write(tmp_path / "q", quiet, SR, format="flac", strategy="rms", normalize=False))
    assert np.abs(y - quiet.double().numpy()).max() < 1e-6
    y, _ = read(audio_write(tmp_path / "h", quiet, SR, format="flac", strategy="rms", rms_headroom_db=24))
    assert abs(mono_rms_db(y) + 24) < 1e-3


def test_peak_clip_headroom(tmp_path):
    x = signal(1)
    y, _ = read(audio_write(tmp_path / "p", x, SR, format="flac", peak_clip_headroom_db=6))
    assert abs(peak_db(y) + 6) < 1e-3


def test_rms_clipping_is_logged_and_clamped(tmp_path, caplog):
    # An impulse train: at -3 dB RMS its peaks must clip.
    x = torch.zeros(1, SR)
    x[0, ::100] = 0.5
    with caplog.at_level(logging.WARNING, logger="jasco_fast.audio"):
        y, _ = read(audio_write(tmp_path / "c", x, SR, format="flac", strategy="rms", rms_headroom_db=3))
    assert np.abs(y).max() <= 1.0
    assert np.isclose(np.abs(y).max(), 1.0, atol=1e-6)
    assert any("CLIPPING" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="jasco_fast.audio"):
        y, _ = read(
            audio_write(tmp_path / "d", x, SR, format="flac", strategy="rms", rms_headroom_db=3, log_clipping=False)
        )
    assert np.abs(y).max() <= 1.0
    assert not [r for r in caplog.records if "CLIPPING" in r.getMessage()]


def test_loudness_quiet_signal_left_alone(tmp_path):
    x = signal(2, amp=1e-3)  # RMS < 2e-3: upstream leaves it alone
    y, _ = read(audio_write(tmp_path / "q", x, SR, format="flac", strategy="loudness"))
    assert np.abs(y - x.double().numpy()).max() < 1e-6


def test_loudness_short_signal(tmp_path):
    # Shorter than the 400 ms BS.1770 gating block: measured as one block, still normalized.
    x = signal(2, seconds=0.25)
    y, _ = read(audio_write(tmp_path / "s", x, SR, format="flac", strategy="loudness"))
    assert y.shape == tuple(x.shape)
    meter = pyloudnorm.Meter(SR, block_size=(x.shape[-1] - 0.5) / SR)
    assert abs(meter.integrated_loudness(y.T) + 14) < 0.05


def test_loudness_target(tmp_path):
    x = signal(2)
    y, _ = read(audio_write(tmp_path / "l", x, SR, format="wav", strategy="loudness", loudness_headroom_db=20))
    assert abs(lufs(y, SR) + 20) < 0.05


# ---------------------------------------------------------------------------------------------
# Input types.


@pytest.mark.parametrize(
    "make",
    [
        lambda x: x.half(),
        lambda x: x.bfloat16(),
        lambda x: x.double(),
        lambda x: x.clone().requires_grad_(True),
        lambda x: x.numpy(),
        lambda x: x.double().numpy(),
        lambda x: np.ascontiguousarray(x.numpy().T).T,  # non-contiguous [C, T] view
    ],
    ids=["float16", "bfloat16", "float64", "requires_grad", "np_float32", "np_float64", "np_strided"],
)
def test_input_dtypes(tmp_path, make):
    x = signal(2)
    wav = make(x)
    y, _ = read(audio_write(tmp_path / "d", wav, SR, format="flac", strategy="none"))
    ref = wav.detach().double().numpy() if isinstance(wav, torch.Tensor) else wav.astype(np.float64)
    assert np.abs(y - ref).max() < 2**-22  # 24-bit FLAC
    y, _ = read(audio_write(tmp_path / "p", wav, SR, format="wav"))
    assert abs(peak_db(y) + 1) < 0.01


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("strategy", ["peak", "clip", "rms", "loudness", "none", ""])
@pytest.mark.parametrize("normalize", [True, False])
def test_silence_stays_silence(tmp_path, fmt, strategy, normalize, caplog):
    x = torch.zeros(2, SR // 2)
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING):
        warnings.simplefilter("error")  # e.g. numpy's divide-by-zero RuntimeWarning
        path = audio_write(
            tmp_path / "z", x, SR, format=fmt, strategy=strategy, normalize=normalize, loudness_compressor=True
        )
    assert not caplog.records
    y, _ = read(path)
    assert y.shape == (2, SR // 2)
    assert np.all(y == 0)


def test_loudness_unmeasurable_left_alone(tmp_path, monkeypatch):
    # A signal over the RMS floor whose gated loudness is -inf (every block gated out) must not
    # get an infinite gain (NaN): it is left alone.
    monkeypatch.setattr(audio_mod, "_integrated_loudness", lambda wav, sr: -math.inf)
    x = signal(2)
    y, _ = read(audio_write(tmp_path / "u", x, SR, format="flac", strategy="loudness"))
    assert np.abs(y - x.double().numpy()).max() < 1e-6


def test_dc_signal_loudness_stays_finite(tmp_path):
    # Pure DC: K-weighting removes almost all of it, so the gain is huge; the result is clamped,
    # never NaN/Inf.
    x = torch.full((1, SR), 0.1)
    y, _ = read(audio_write(tmp_path / "dc", x, SR, format="flac", strategy="loudness"))
    assert np.all(np.isfinite(y)) and np.abs(y).max() <= 1


def test_overwrites_existing_file(tmp_path):
    target = tmp_path / "o.wav"
    target.write_bytes(b"old")
    audio_write(tmp_path / "o", signal(1), SR)
    assert sf.info(str(target)).frames == signal(1).shape[-1]
    assert listing(tmp_path) == ["o.wav"]


# ---------------------------------------------------------------------------------------------
# Errors: raised before anything is created.

GOOD = signal(2, seconds=0.5)


def _nan():
    x = GOOD.clone()
    x[1, 7] = float("nan")
    return x


def _inf():
    x = GOOD.clone()
    x[0, 3] = float("-inf")
    return x


ERROR_CASES = {
    "int16": (TypeError, dict(wav=(GOOD * 32767).short())),
    "bool": (TypeError, dict(wav=GOOD > 0)),
    "complex": (TypeError, dict(wav=GOOD.to(torch.complex64))),
    "np_int": (TypeError, dict(wav=(GOOD.numpy() * 32767).astype(np.int16))),
    "list": (TypeError, dict(wav=[[0.0, 0.1]])),
    "nan": (ValueError, dict(wav=_nan())),
    "inf": (ValueError, dict(wav=_inf())),
    "3d": (ValueError, dict(wav=GOOD[None])),
    "0d": (ValueError, dict(wav=torch.tensor(0.5))),
    "empty": (ValueError, dict(wav=torch.zeros(2, 0))),
    "format": (ValueError, dict(format="aac")),
    "format_case": (ValueError, dict(format="WAV")),
    "strategy": (ValueError, dict(strategy="max")),
    "sr_zero": (ValueError, dict(sample_rate=0)),
    "sr_negative": (ValueError, dict(sample_rate=-32000)),
    "sr_float": (TypeError, dict(sample_rate=32000.0)),
    "sr_bool": (TypeError, dict(sample_rate=True)),
    "mp3_sr": (ValueError, dict(format="mp3", sample_rate=44000)),
    "mp3_sr_high": (ValueError, dict(format="mp3", sample_rate=96000)),
    "mp3_channels": (ValueError, dict(format="mp3", wav=signal(3, seconds=0.5))),
    "mp3_transposed": (ValueError, dict(format="mp3", wav=GOOD.T)),  # [T, C] by mistake
    "mp3_rate_zero": (ValueError, dict(format="mp3", mp3_rate=0)),
    "mp3_rate_negative": (ValueError, dict(format="mp3", mp3_rate=-128)),
    "mp3_rate_float": (TypeError, dict(format="mp3", mp3_rate=128.5)),
    "mp3_rate_str": (TypeError, dict(format="mp3", mp3_rate="320k")),
    "mp3_rate_none": (TypeError, dict(format="mp3", mp3_rate=None)),
    "ogg_sr": (ValueError, dict(format="ogg", sample_rate=384000)),
    "ogg_rate_low": (ValueError, dict(format="ogg", ogg_rate=32)),
    "ogg_rate_high": (ValueError, dict(format="ogg", ogg_rate=1000)),
    "ogg_rate_nan": (ValueError, dict(format="ogg", ogg_rate=float("nan"))),
    "flac_sr": (ValueError, dict(format="flac", sample_rate=700000)),
    "flac_channels": (ValueError, dict(format="flac", wav=torch.zeros(9, 100))),
    "loudness_channels": (ValueError, dict(strategy="loudness", wav=torch.zeros(6, 100))),
    "none_clipping": (ValueError, dict(strategy="none", wav=GOOD * 4)),
    "headroom_nan": (ValueError, dict(peak_clip_headroom_db=float("nan"))),
    "stem_type": (TypeError, dict(stem_name=123)),
    "no_parent": (FileNotFoundError, dict(make_parent_dir=False)),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_leave_nothing(tmp_path, case):
    exc, kwargs = ERROR_CASES[case]
    args = dict(stem_name=tmp_path / "sub" / "deeper" / "out", wav=GOOD, sample_rate=SR)
    args.update(kwargs)
    with pytest.raises(exc) as info:
        audio_write(**args)
    assert str(info.value)  # a message, not a bare assert
    assert listing(tmp_path) == []  # not even the parent folder


def test_output_is_a_directory(tmp_path):
    (tmp_path / "d.wav").mkdir()
    with pytest.raises(ValueError, match="directory"):
        audio_write(tmp_path / "d", GOOD, SR)
    assert listing(tmp_path) == ["d.wav"] and listing(tmp_path / "d.wav") == []


def test_mp3_rate_range_per_mpeg_version(tmp_path):
    for sr, rate in [(16000, 160), (16000, 8), (8000, 64), (48000, 32)]:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # in range: no warning
            p = audio_write(tmp_path / f"m{sr}_{rate}", signal(1, seconds=0.3, sr=sr), sr, format="mp3", mp3_rate=rate)
        assert sf.info(str(p)).samplerate == sr


@pytest.mark.parametrize(
    "sr,asked,written",
    [
        (8000, 320, 64),
        (8000, 80, 64),
        (16000, 320, 160),
        (24000, 192, 160),
        (32000, 400, 320),
        (32000, 16, 32),
        (44100, 8, 32),
    ],
)
def test_mp3_rate_out_of_range_is_clamped(tmp_path, sr, asked, written):
    """As ffmpeg's LAME encoder (upstream's writer) does: the nearest rate the sample rate allows."""
    seconds = 4.0
    with pytest.warns(UserWarning, match=f"mp3_rate={asked} kbps.*writing {written} kbps"):
        p = audio_write(tmp_path / "c", signal(1, seconds=seconds, sr=sr), sr, format="mp3", mp3_rate=asked)
    kbps = p.stat().st_size * 8 / seconds / 1000
    assert written * 0.95 < kbps < written * 1.1, kbps


# ---------------------------------------------------------------------------------------------
# Failures while writing: no partial file, no temporary left, an existing file untouched.


class _FailingSoundFile(sf.SoundFile):
    def write(self, data):
        super().write(data[: len(data) // 2])  # really put bytes on disk first
        raise OSError("disk full (simulated)")


@pytest.mark.parametrize("fmt", FORMATS)
def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(audio_mod.sf, "SoundFile", _FailingSoundFile)
    with pytest.raises(OSError, match="simulated"):
        audio_write(tmp_path / "f", GOOD, SR, format=fmt)
    assert listing(tmp_path) == []


def test_failure_keeps_existing_file(tmp_path, monkeypatch):
    target = tmp_path / "f.wav"
    target.write_bytes(b"previous")
    monkeypatch.setattr(audio_mod.sf, "SoundFile", _FailingSoundFile)
    with pytest.raises(OSError):
        audio_write(tmp_path / "f", GOOD, SR)
    assert listing(tmp_path) == ["f.wav"] and target.read_bytes() == b"previous"


def test_interrupt_leaves_nothing(tmp_path, monkeypatch):
    class Interrupted(sf.SoundFile):
        def write(self, data):
            super().write(data[:10])
            raise KeyboardInterrupt

    monkeypatch.setattr(audio_mod.sf, "SoundFile", Interrupted)
    with pytest.raises(KeyboardInterrupt):
        audio_write(tmp_path / "k", GOOD, SR, format="flac")
    assert listing(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# Paths.


def test_add_suffix_false(tmp_path):
    p = audio_write(tmp_path / "track.bin", GOOD, SR, format="flac", add_suffix=False)
    assert p == tmp_path / "track.bin"
    assert sf.info(str(p)).format == "FLAC"  # the format argument decides, not the name
    p = audio_write(str(tmp_path / "x"), GOOD, SR, format="ogg", add_suffix=True)
    assert p == tmp_path / "x.ogg" and sf.info(str(p)).format == "OGG"


def test_make_parent_dir(tmp_path):
    p = audio_write(tmp_path / "a" / "b" / "c", GOOD, SR)
    assert p == tmp_path / "a" / "b" / "c.wav" and p.is_file()
    assert listing(tmp_path / "a" / "b") == ["c.wav"]


def test_file_permissions_follow_umask(tmp_path):
    p = audio_write(tmp_path / "perm", GOOD, SR)
    old = os.umask(0o022)
    os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o666 & ~old


# ---------------------------------------------------------------------------------------------
# Bitrates (file size / duration).


@pytest.mark.parametrize(
    "sr,rate", [(32000, 320), (32000, 128), (44100, 192), (48000, 64), (16000, 64), (22050, 160), (8000, 32)]
)
def test_mp3_bitrate(tmp_path, sr, rate):
    seconds = 4.0
    p = audio_write(tmp_path / "b", signal(2, seconds=seconds, sr=sr), sr, format="mp3", mp3_rate=rate)
    kbps = p.stat().st_size * 8 / seconds / 1000
    # + one info frame and the encoder delay / padding frames
    assert rate * 0.99 < kbps < rate * 1.08, kbps


def test_ogg_rate_orders_bitrates(tmp_path):
    seconds = 3.0
    gen = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(2, int(seconds * SR), generator=gen)  # rich content: VBR uses the bits
    sizes = {}
    for rate in [64, 96, None, 192, 320, 500]:
        p = audio_write(tmp_path / f"o{rate}", x, SR, format="ogg", ogg_rate=rate)
        sizes[rate] = p.stat().st_size * 8 / seconds / 1000
    order = [sizes[r] for r in [64, 96, None, 192, 320, 500]]
    assert order == sorted(order) and order[0] * 3 < order[-1], sizes
    # ogg_rate is the nominal 44.1 kHz bitrate; at 32 kHz the quality gives the same order of size
    assert 0.5 * 192 < sizes[192] < 1.5 * 192, sizes


# ---------------------------------------------------------------------------------------------
# write_batch.


def _batch(b=5, seconds=0.5):
    return torch.stack([signal(2, seconds=seconds, amp=0.05 * (i + 1), seed=i) for i in range(b)])


def test_write_batch_order_and_content(tmp_path):
    wavs = _batch()
    stems = [tmp_path / f"item{i}" for i in range(len(wavs))]
    paths = write_batch(wavs, stems, SR, strategy="none", format="flac")
    assert paths == [tmp_path / f"item{i}.flac" for i in range(len(wavs))]
    for i, p in enumerate(paths):
        y, _ = read(p)
        assert np.abs(y - wavs[i].double().numpy()).max() < 2**-22
    assert len(listing(tmp_path)) == len(wavs)


def test_write_batch_list_of_different_lengths(tmp_path):
    wavs = [signal(1, seconds=0.1 * (i + 1))[0] for i in range(3)] + [signal(2, seconds=0.2)]
    paths = write_batch(wavs, [str(tmp_path / f"w{i}") for i in range(4)], SR, max_workers=2)
    for w, p in zip(wavs, paths):
        info = sf.info(str(p))
        assert info.frames == w.shape[-1] and info.channels == (1 if w.dim() == 1 else w.shape[0])


def test_write_batch_empty(tmp_path):
    assert write_batch([], [], SR) == []


@pytest.mark.parametrize(
    "stems_fn,exc",
    [
        (lambda d: [d / "a", d / "b"], ValueError),  # 2 stems for 3 items
        (lambda d: [d / "a", d / "b", d / "a"], ValueError),  # duplicate output path
        (lambda d: [d / "a", d / "b", str(d / "sub" / ".." / "a")], ValueError),  # same file, other spelling
        (lambda d: str(d / "abc"), TypeError),  # a single string is not a list of stems
    ],
)
def test_write_batch_validation_writes_nothing(tmp_path, stems_fn, exc):
    with pytest.raises(exc):
        write_batch(_batch(3), stems_fn(tmp_path), SR)
    assert listing(tmp_path) == []


def test_write_batch_invalid_item_writes_nothing(tmp_path):
    wavs = _batch(4)
    wavs[2, 0, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        write_batch(wavs, [tmp_path / f"i{i}" for i in range(4)], SR)
    with pytest.raises(TypeError):
        write_batch(_batch(2), [tmp_path / "a", tmp_path / "b"], SR, not_an_option=1)
    with pytest.raises(ValueError):
        write_batch(_batch(2)[0], [tmp_path / "a", tmp_path / "b"], SR)  # [C, T] is not a batch
    assert listing(tmp_path) == []


@pytest.mark.parametrize("workers", [1, 3])
def test_write_batch_failing_item(tmp_path, monkeypatch, workers):
    class FailOnBad(sf.SoundFile):
        def write(self, data):
            if ".bad" in os.path.basename(str(self.name)):
                super().write(data[: len(data) // 2])
                raise OSError("encoder failed (simulated)")
            return super().write(data)

    monkeypatch.setattr(audio_mod.sf, "SoundFile", FailOnBad)
    stems = [tmp_path / n for n in ["a", "bad", "c", "bad2", "e"]]
    with pytest.raises(OSError, match="simulated"):
        write_batch(_batch(5), stems, SR, format="ogg", max_workers=workers)
    # the others completed; the failed ones left nothing (no partial, no temporary)
    assert listing(tmp_path) == ["a.ogg", "c.ogg", "e.ogg"]
    for n in ["a", "c", "e"]:
        assert sf.info(str(tmp_path / f"{n}.ogg")).frames == _batch(1).shape[-1]


# ---------------------------------------------------------------------------------------------
# Long audio: written block by block (libsndfile's Vorbis encoder crashes on one huge write).


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("channels", [1, 2])
def test_long_audio_every_format(tmp_path, fmt, channels):
    """Past the ~2 minutes one libsndfile Vorbis write call survives; the file holds all of it."""
    seconds = 150 if fmt == "ogg" else 40  # 150 s crashed OGG as one write; the others: blocks still join
    t = torch.arange(int(seconds * SR), dtype=torch.float32) / SR
    x = 0.5 * torch.sin(2 * math.pi * 440 * t)[None].repeat(channels, 1)
    x[:, -SR:] *= 0.25  # a quieter last second: the block boundaries must not reorder or drop samples
    p = audio_write(tmp_path / "long", x, SR, format=fmt, strategy="none")
    y, sr = read(p)
    assert sr == SR and y.shape[0] == channels
    if fmt in LOSSY:
        assert abs(y.shape[1] - x.shape[1]) < 0.05 * SR  # encoder delay / padding
    else:
        assert y.shape[1] == x.shape[1]
        assert np.abs(y - x.double().numpy()).max() <= 1.5 / 32768
    head = np.abs(y[:, SR : 2 * SR]).max()
    tail = np.abs(y[:, -SR // 2 :]).max()
    assert head == pytest.approx(0.5, abs=0.05) and tail == pytest.approx(0.125, abs=0.05)
    assert listing(tmp_path) == ["long." + fmt]


def test_blocks_equal_one_write(tmp_path, monkeypatch):
    """Normalising block by block gives the same file as normalising the whole signal at once."""
    x = signal(2, seconds=3.0) * 3  # loud: the peak gain and the clamp both matter
    for strategy in ["peak", "rms", "loudness", "clip"]:
        monkeypatch.setattr(audio_mod, "BLOCK_FRAMES", 1_000_000)
        whole = read(
            audio_write(tmp_path / f"w_{strategy}", x, SR, format="flac", strategy=strategy, loudness_compressor=True)
        )[0]
        monkeypatch.setattr(audio_mod, "BLOCK_FRAMES", 977)  # many ragged blocks
        blocks = read(
            audio_write(tmp_path / f"b_{strategy}", x, SR, format="flac", strategy=strategy, loudness_compressor=True)
        )[0]
        np.testing.assert_array_equal(whole, blocks)
        want = audio_mod.normalize_audio(x.double(), strategy=strategy, sample_rate=SR, loudness_compressor=True)
        assert np.abs(whole - want.numpy()).max() < 2**-22  # 24-bit FLAC


# ---------------------------------------------------------------------------------------------
# Temporaries left by a killed run.


def _stale(folder, name, hexpart="0123456789ab"):
    p = folder / f".{name}.{hexpart}.tmp"
    p.write_bytes(b"half-written by a killed run")
    return p


def test_stale_temporary_is_removed_by_next_write_of_same_output(tmp_path):
    _stale(tmp_path, "a.wav")
    _stale(tmp_path, "a.wav", "ba9876543210")
    keep = [
        _stale(tmp_path, "b.wav"),  # another output's temporary
        _stale(tmp_path, "a.wav.x", "0123456789ab"),  # a longer name
        tmp_path / ".a.wav.notmine.tmp",  # not our pattern
        tmp_path / "notes.txt",
    ]
    keep[2].write_bytes(b"x")
    keep[3].write_bytes(b"x")
    audio_write(tmp_path / "a", GOOD, SR)
    assert listing(tmp_path) == sorted(["a.wav"] + [p.name for p in keep])


def test_temporary_being_written_is_not_removed(tmp_path):
    """A temporary whose lock is held (another writer at work) survives a concurrent write."""
    import fcntl

    live = _stale(tmp_path, "a.wav")
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        audio_write(tmp_path / "a", GOOD, SR)
        assert live.exists()
    finally:
        os.close(fd)
    audio_write(tmp_path / "a", GOOD, SR)  # the lock is gone: now it is stale
    assert listing(tmp_path) == ["a.wav"]


def test_killed_writer_leaves_a_temporary_that_the_next_run_removes(tmp_path):
    """A real process killed mid-write, then a rerun: one whole file, nothing else."""
    import signal as sig
    import subprocess
    import sys
    import time

    code = (
        "import sys, time, torch, soundfile as sf\n"
        "import jasco_fast.audio as a\n"
        "class Slow(sf.SoundFile):\n"
        "    def write(self, data):\n"
        "        super().write(data[:10]); print('writing', flush=True); time.sleep(60)\n"
        "a.sf.SoundFile = Slow\n"
        f"a.audio_write({str(tmp_path / 'k')!r}, torch.zeros(1, 32000) + 0.1, 32000, format='flac')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        proc.send_signal(sig.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    left = listing(tmp_path)
    assert len(left) == 1 and left[0].startswith(".k.flac.") and left[0].endswith(".tmp")
    time.sleep(0.01)
    audio_write(tmp_path / "k", GOOD, SR, format="flac")
    assert listing(tmp_path) == ["k.flac"]


def test_format_missing_from_libsndfile_is_named(tmp_path, monkeypatch):
    """An old libsndfile without MP3: the error names the format and what to do, and nothing is written."""
    monkeypatch.setattr(
        audio_mod,
        "_available_subtypes",
        lambda major: frozenset() if major == "MP3" else frozenset(sf.available_subtypes(major)),
    )
    with pytest.raises(ValueError, match="format='mp3'.*cannot write MP3/MPEG_LAYER_III.*upgrade soundfile"):
        audio_write(tmp_path / "m", GOOD, SR, format="mp3")
    audio_write(tmp_path / "w", GOOD, SR, format="wav")
    assert listing(tmp_path) == ["w.wav"]
