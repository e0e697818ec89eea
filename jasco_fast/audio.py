"""Writing generated audio to disk: a drop-in for audiocraft's ``audio_write``.

``audio_write`` keeps audiocraft's signature and loudness semantics (``normalize_audio``:
peak, clip, rms, loudness, none) but encodes in-process with soundfile/libsndfile instead of
piping every file through an ffmpeg subprocess. On top of upstream it:

* validates every argument (dtype, shape, finiteness, format, strategy, sample rate, bitrate,
  channel count, output folder) before any file or folder is created, and raises
  ``TypeError`` / ``ValueError`` with a message instead of ``assert``;
* writes silence as silence (no 0/0, no NaN) for every strategy;
* accepts float16/bfloat16/float32/float64 tensors on any device and float numpy arrays;
* never leaves a partial file: it writes to a hidden temporary name in the destination folder
  (``.<name>.<12 hex>.tmp``, locked with ``flock`` while being written) and ``os.replace``-s it onto
  the final name, removing the temporary on any exception. A temporary that a killed process left
  (its lock is gone) is removed by the next write of the same output; nothing else is ever removed;
* writes files of any length: the samples go to libsndfile in blocks of ``BLOCK_FRAMES`` (65536)
  frames, normalised block by block, so the memory beyond the caller's tensor is one block (plus
  one float64 copy for the loudness measurement). One huge write call crashes libsndfile's Vorbis
  encoder (about 2 minutes of 32 kHz audio and beyond).

``write_batch`` writes a batch ``[B, C, T]`` with a small thread pool (libsndfile releases
the GIL while encoding).

Shapes: ``wav`` is ``[C, T]`` (channels first, as in audiocraft) or ``[T]`` (mono);
soundfile wants ``[T, C]``, the transposition happens here.

Encodings (all through libsndfile 1.2):

* ``wav``: 16-bit PCM; float -> int16 is ``round(x * 32768)`` clipped to [-32768, 32767]
  (libsndfile with clipping on, the same rule as ffmpeg's ``pcm_s16le``).
* ``flac``: 24-bit (what ffmpeg's FLAC encoder produces from float input). Rates 1..655350 Hz,
  1..8 channels.
* ``mp3``: LAME, constant bitrate ``mp3_rate`` kbps. Rates 8000, 11025, 12000, 16000, 22050,
  24000, 32000, 44100, 48000 Hz; 1 or 2 channels. Each MPEG version the rate implies has its band:
  [32, 320] kbps (MPEG-1, >= 32 kHz), [8, 160] (MPEG-2, 16-24 kHz), [8, 64] (MPEG-2.5, 8-12 kHz).
  A rate outside the band is clamped to the nearest end with a warning naming both rates, as
  upstream's ffmpeg/LAME writes such a file (so the default 320 works at 16 kHz: 160 kbps). A
  non-positive or non-integer rate raises. libsndfile maps a compression level c in [0, 1] linearly
  onto the band (``bitrate = int(max - c * (max - min))``); we invert that map, and LAME then rounds
  to the nearest standard bitrate of that MPEG version (e.g. 100 -> 96 kbps).
* ``ogg``: Vorbis, variable bitrate. libsndfile sets Vorbis quality ``q = 1 - compression_level``
  (q in [0, 1], i.e. oggenc's -q 0..10). ``ogg_rate`` (kbps) is turned into a quality by linear
  interpolation in libvorbis' nominal bitrates for 44.1 kHz stereo
  (q 0..10 -> 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 500 kbps), so ``ogg_rate`` must be in
  [64, 500]. ``ogg_rate=None`` uses q = 0.4 (oggenc -q 4, ~128 kbps nominal; libsndfile's default).
  The real bitrate is content, rate and channel dependent (lower at 32 kHz and for mono). Vorbis
  encodes 1..200000 Hz and 1..255 channels (libvorbis has no setup beyond; libsndfile crashes there).

Where this differs from upstream's ffmpeg path, and why:

* The final clamp to [-1, 1] applies to every strategy (upstream: rms and loudness only). It is
  reachable only for peak/clip with a negative headroom; upstream's ffmpeg then clips while
  converting to 16/24-bit integers for wav/flac anyway, and hands LAME/Vorbis out-of-range floats.
  Same files for wav/flac, no overdriven encoder input for mp3/ogg.
* FLAC is 24-bit: what ffmpeg's FLAC encoder makes of upstream's float input (it encodes s32 with
  24 significant bits), so the same precision.
* ``ogg_rate`` selects a Vorbis quality instead of ffmpeg's bitrate-managed mode: libsndfile offers
  only quality-based VBR. The mapping keeps the order and the nominal size; a rate outside
  [64, 500] kbps raises: no Vorbis quality level corresponds to it.
* The mp3 bands match upstream (clamped as LAME clamps).
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import numbers
import os
import typing as tp
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from jasco_fast import _files

__all__ = ["audio_write", "write_batch", "normalize_audio"]

logger = logging.getLogger(__name__)

FORMATS = ("wav", "mp3", "ogg", "flac")
STRATEGIES = ("peak", "clip", "rms", "loudness", "none", "")
MP3_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
# libvorbis nominal bitrates (kbps, 44.1 kHz stereo) for quality -q 0..10.
VORBIS_NOMINAL_KBPS = (64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 500)
VORBIS_DEFAULT_QUALITY = 0.4
VORBIS_MAX_SAMPLE_RATE = 200_000
VORBIS_MAX_CHANNELS = 255
FLAC_MAX_SAMPLE_RATE = 655_350
FLAC_MAX_CHANNELS = 8
SNDFILE_MAX_CHANNELS = 1024
# RIFF sizes are 32-bit; keep some room for the header.
WAV_MAX_DATA_BYTES = 2**32 - 2**16
# audiocraft's normalize_loudness leaves signals whose RMS is below this alone.
LOUDNESS_ENERGY_FLOOR = 2e-3
# BS.1770 gating block; shorter signals are measured as one block (see _integrated_loudness).
LOUDNESS_BLOCK_S = 0.4
# Frames handed to libsndfile per write call. Its Vorbis encoder crashes the process when one call
# holds about 2 minutes of 32 kHz audio or more; 65536-frame writes are safe for any length, and
# every format is written the same way.
BLOCK_FRAMES = 65536


def mp3_rate_range(sample_rate: int) -> tuple[int, int, str]:
    """(lowest, highest kbps, MPEG version) an MP3 at ``sample_rate`` Hz can have; the highest is the best."""
    if sample_rate >= 32000:
        return 32, 320, "MPEG-1"
    if sample_rate >= 16000:
        return 8, 160, "MPEG-2"
    return 8, 64, "MPEG-2.5"


PathLike = str | os.PathLike
AudioLike = torch.Tensor | np.ndarray


@dataclass(frozen=True)
class _Encoding:
    format: str  # libsndfile major format
    subtype: str
    compression_level: float | None = None
    bitrate_mode: str | None = None


@dataclass
class _Plan:
    """Everything audio_write needs once validation has passed."""

    path: Path
    tmp_dir: Path
    wav: torch.Tensor  # [C, T] float CPU (the caller's precision), not yet normalized
    sample_rate: int
    encoding: _Encoding
    make_parent_dir: bool
    norm_kwargs: dict


def _is_int(x: tp.Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_real(name: str, value: tp.Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def _to_cpu_float(wav: tp.Any) -> torch.Tensor:
    """Any float tensor / array -> a float CPU tensor (same shape), or TypeError.

    The samples keep their own precision (float16/bfloat16/float32/float64): statistics and the gain
    are computed in float64 block by block, so long audio never needs a float64 copy of itself.
    """
    if isinstance(wav, torch.Tensor):
        if wav.dtype == torch.bool or wav.is_complex() or not wav.dtype.is_floating_point:
            raise TypeError(
                f"wav must hold real floating-point samples in [-1, 1], got dtype {wav.dtype}; "
                "convert integer PCM first, e.g. wav.float() / 32768"
            )
        return wav.detach().cpu()  # moved in the source dtype: the smallest transfer
    if isinstance(wav, np.ndarray):
        if wav.dtype.kind != "f":
            raise TypeError(
                f"wav must hold real floating-point samples in [-1, 1], got numpy dtype {wav.dtype}; "
                "convert integer PCM first, e.g. wav.astype(np.float32) / 32768"
            )
        # A native-endian, writeable array torch can view; float16 widens to float32 (numpy's
        # float16 has no fast torch path). Read-only or big-endian input is copied.
        dtype = np.float64 if wav.dtype.itemsize == 8 else np.float32
        if wav.dtype != np.dtype(dtype) or not wav.flags.writeable:
            wav = np.array(wav, dtype=dtype, copy=True)
        return torch.from_numpy(wav)
    raise TypeError(f"wav must be a torch.Tensor or numpy.ndarray, got {type(wav).__name__}")


def _check_wav(wav: tp.Any) -> torch.Tensor:
    """Validate and return ``wav`` as a [C, T] float CPU tensor."""
    out = _to_cpu_float(wav)
    if out.dim() == 1:
        out = out[None]
    elif out.dim() != 2:
        raise ValueError(f"wav must be [C, T] or [T], got {out.dim()} dimensions (shape {tuple(out.shape)})")
    channels, frames = out.shape
    if channels == 0 or frames == 0:
        raise ValueError(f"wav has no samples (shape [C, T] = {tuple(out.shape)})")
    if not all(bool(torch.isfinite(block).all()) for block in _blocks(out)):
        raise ValueError("wav contains NaN or Inf samples")
    return out


def _blocks(wav: torch.Tensor, frames: int = None) -> tp.Iterator[torch.Tensor]:
    """[..., T] in views of at most ``frames`` (default BLOCK_FRAMES) samples along T."""
    frames = frames or BLOCK_FRAMES
    for start in range(0, wav.shape[-1], frames):
        yield wav[..., start : start + frames]


def _encoding(
    format: str, sample_rate: int, channels: int, frames: int, mp3_rate: tp.Any, ogg_rate: tp.Any
) -> _Encoding:
    """Map (format, rates) to libsndfile settings; raise if the format cannot encode it."""
    layout_hint = "(wav is channels-first [C, T])"
    if format == "wav":
        if channels > SNDFILE_MAX_CHANNELS:
            raise ValueError(
                f"wav format supports at most {SNDFILE_MAX_CHANNELS} channels, got {channels} {layout_hint}"
            )
        if channels * frames * 2 > WAV_MAX_DATA_BYTES:
            raise ValueError(f"{channels} x {frames} 16-bit samples exceed the 4 GiB WAV limit; use format='flac'")
        return _Encoding("WAV", "PCM_16")
    if format == "flac":
        if sample_rate > FLAC_MAX_SAMPLE_RATE:
            raise ValueError(f"FLAC supports sample rates up to {FLAC_MAX_SAMPLE_RATE} Hz, got {sample_rate}")
        if channels > FLAC_MAX_CHANNELS:
            raise ValueError(f"FLAC supports at most {FLAC_MAX_CHANNELS} channels, got {channels} {layout_hint}")
        return _Encoding("FLAC", "PCM_24")
    if format == "mp3":
        if sample_rate not in MP3_SAMPLE_RATES:
            raise ValueError(f"MP3 supports only the sample rates {MP3_SAMPLE_RATES} Hz, got {sample_rate}")
        if channels > 2:
            raise ValueError(f"MP3 supports 1 or 2 channels, got {channels} {layout_hint}")
        lo, hi, version = mp3_rate_range(sample_rate)
        if (
            isinstance(mp3_rate, bool)
            or not isinstance(mp3_rate, numbers.Real)
            or (not _is_int(mp3_rate) and not float(mp3_rate).is_integer())
        ):
            raise TypeError(f"mp3_rate must be an int (kbps), got {mp3_rate!r}")
        if not mp3_rate > 0:
            raise ValueError(f"mp3_rate must be a positive bitrate in kbps, got {mp3_rate}")
        mp3_rate = int(mp3_rate)
        if not lo <= mp3_rate <= hi:
            # What ffmpeg's LAME encoder (upstream's writer) does: take the nearest rate this sample
            # rate allows, and write the file.
            clamped = min(max(mp3_rate, lo), hi)
            warnings.warn(
                f"mp3_rate={mp3_rate} kbps is outside [{lo}, {hi}] kbps, the range of {version} at "
                f"{sample_rate} Hz; writing {clamped} kbps",
                stacklevel=4,
            )
            mp3_rate = clamped
        # libsndfile: bitrate = int(hi - c * (hi - lo)); aim 0.25 kbps above the target so the
        # truncation lands on it despite rounding in c.
        level = min(1.0, max(0.0, (hi - mp3_rate - 0.25) / (hi - lo)))
        return _Encoding("MP3", "MPEG_LAYER_III", level, "CONSTANT")
    if format == "ogg":
        if sample_rate > VORBIS_MAX_SAMPLE_RATE:
            raise ValueError(f"Vorbis supports sample rates up to {VORBIS_MAX_SAMPLE_RATE} Hz, got {sample_rate}")
        if channels > VORBIS_MAX_CHANNELS:
            raise ValueError(f"Vorbis supports at most {VORBIS_MAX_CHANNELS} channels, got {channels} {layout_hint}")
        if ogg_rate is None:
            quality = VORBIS_DEFAULT_QUALITY
        else:
            rate = _check_real("ogg_rate", ogg_rate)
            lo, hi = VORBIS_NOMINAL_KBPS[0], VORBIS_NOMINAL_KBPS[-1]
            if not lo <= rate <= hi:
                raise ValueError(f"ogg_rate must be in [{lo}, {hi}] kbps (Vorbis quality 0..10), got {ogg_rate}")
            quality = float(np.interp(rate, VORBIS_NOMINAL_KBPS, np.arange(11))) / 10
        return _Encoding("OGG", "VORBIS", 1.0 - quality)
    raise ValueError(f"unknown format {format!r}; expected one of {FORMATS}")


def _check_writable(format: str, encoding: _Encoding) -> None:
    """The libsndfile that soundfile loaded can write this encoding (MP3 needs libsndfile >= 1.1)."""
    if encoding.subtype not in _available_subtypes(encoding.format):
        raise ValueError(
            f"format={format!r}: the libsndfile this soundfile uses ({sf.__libsndfile_version__}) "
            f"cannot write {encoding.format}/{encoding.subtype}; upgrade soundfile (its wheels bundle "
            f"libsndfile 1.1+, which writes every format here) or pick another format"
        )


@functools.cache
def _available_subtypes(major: str) -> frozenset[str]:
    return frozenset(sf.available_subtypes(major)) if major in sf.available_formats() else frozenset()


def _output_path(stem_name: tp.Any, format: str, add_suffix: bool) -> Path:
    if not isinstance(stem_name, (str, os.PathLike)):
        raise TypeError(f"stem_name must be a str or os.PathLike, got {type(stem_name).__name__}")
    return Path(os.fspath(stem_name) + (f".{format}" if add_suffix else ""))


def _plan(
    stem_name: tp.Any,
    wav: tp.Any,
    sample_rate: tp.Any,
    format: str = "wav",
    mp3_rate: int = 320,
    ogg_rate: int | None = None,
    normalize: bool = True,
    strategy: str = "peak",
    peak_clip_headroom_db: float = 1,
    rms_headroom_db: float = 18,
    loudness_headroom_db: float = 14,
    loudness_compressor: bool = False,
    log_clipping: bool = True,
    make_parent_dir: bool = True,
    add_suffix: bool = True,
) -> _Plan:
    """All of audio_write's validation; touches no file."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {FORMATS}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    if not _is_int(sample_rate):
        raise TypeError(f"sample_rate must be an int, got {type(sample_rate).__name__}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    sample_rate = int(sample_rate)
    for name, value in (
        ("peak_clip_headroom_db", peak_clip_headroom_db),
        ("rms_headroom_db", rms_headroom_db),
        ("loudness_headroom_db", loudness_headroom_db),
    ):
        _check_real(name, value)
    path = _output_path(stem_name, format, add_suffix)
    wav = _check_wav(wav)
    channels, frames = wav.shape
    encoding = _encoding(format, sample_rate, channels, frames, mp3_rate, ogg_rate)
    _check_writable(format, encoding)
    if strategy == "loudness" and channels > 5:
        raise ValueError(f"strategy='loudness' (ITU-R BS.1770) supports at most 5 channels, got {channels}")
    if strategy in ("none", ""):
        peak = _peak(wav)
        # Upstream asserts this: with no normalization the samples must already fit.
        if peak >= 1:
            raise ValueError(
                f"strategy='none' needs |wav| < 1, got a peak of {peak:.4g}; "
                "pick a normalization strategy (e.g. 'peak' or 'clip')"
            )
    if path.is_dir():
        raise ValueError(f"output path {str(path)!r} is a directory")
    parent = path.parent
    if not parent.is_dir():
        if parent.exists():
            raise ValueError(f"parent of the output path, {str(parent)!r}, is not a directory")
        if not make_parent_dir:
            raise FileNotFoundError(f"output folder {str(parent)!r} does not exist (make_parent_dir=False)")
    norm_kwargs = dict(
        normalize=bool(normalize),
        strategy=strategy,
        peak_clip_headroom_db=float(peak_clip_headroom_db),
        rms_headroom_db=float(rms_headroom_db),
        loudness_headroom_db=float(loudness_headroom_db),
        loudness_compressor=bool(loudness_compressor),
        log_clipping=bool(log_clipping),
        stem_name=str(stem_name),
    )
    return _Plan(path, parent, wav, sample_rate, encoding, bool(make_parent_dir), norm_kwargs)


def _integrated_loudness(wav: torch.Tensor, sample_rate: int) -> float:
    """ITU-R BS.1770-4 integrated loudness (LUFS) of [C, T] audio with pyloudnorm.

    Signals shorter than the 400 ms gating block (where pyloudnorm refuses and torchaudio gives
    NaN) are measured as a single block spanning the whole signal.
    """
    import pyloudnorm  # imported lazily: only the loudness strategy needs it

    frames = wav.shape[-1]
    block = LOUDNESS_BLOCK_S
    if frames < block * sample_rate:
        block = (frames - 0.5) / sample_rate  # pyloudnorm needs frames >= block * rate
    meter = pyloudnorm.Meter(sample_rate, block_size=block)
    return float(meter.integrated_loudness(wav.to(torch.float64).t().numpy()))


def _peak(wav: torch.Tensor) -> float:
    return max(block.abs().max().item() for block in _blocks(wav))


def _rms(x: torch.Tensor, peak: float, mono: bool = False) -> float:
    """Root mean square of every sample of ``x`` (``mono``: of its mean over dim 0, the mono mix), in
    float64, block by block; ``peak`` (max |x|) is factored out so the squares cannot overflow even
    for huge float64 input."""
    if peak == 0:
        return 0.0
    mix = (lambda b: b.mean(dim=0)) if mono and x.dim() > 1 else (lambda b: b)
    total = sum((mix(block.to(torch.float64) / peak) ** 2).sum().item() for block in _blocks(x))
    return peak * math.sqrt(total / (x.numel() // (x.shape[0] if mono and x.dim() > 1 else 1)))


@dataclass(frozen=True)
class _Transform:
    """What every normalisation strategy reduces to, sample by sample:
    ``y = clamp(f(gain * x), -limit, limit)`` with ``f = tanh`` for the loudness compressor, then the
    final clamp to [-1, 1] (``_clip_wav``). Applied block by block while writing."""

    gain: float = 1.0
    compress: bool = False
    limit: float = math.inf

    def peak_after(self, peak: float) -> float:
        """max |f(gain * x)| clamped to the limit, from the input's peak (f is monotonic)."""
        y = self.gain * peak
        return min(math.tanh(y) if self.compress else y, self.limit)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """float64 copy of ``x`` transformed, before the final [-1, 1] clamp."""
        y = x.to(torch.float64, copy=True)
        if self.gain != 1.0:
            y.mul_(self.gain)
        if self.compress:
            y.tanh_()
        if self.limit != math.inf:
            y.clamp_(-self.limit, self.limit)
        return y


def _normalization(
    wav: torch.Tensor,
    normalize: bool,
    strategy: str,
    peak_clip_headroom_db: float,
    rms_headroom_db: float,
    loudness_headroom_db: float,
    loudness_compressor: bool,
    sample_rate: int | None,
    peak: float,
) -> _Transform:
    """The transform audiocraft's ``normalize_audio`` applies to ``wav`` (``peak``: its max |x|)."""
    scale_peak = 10 ** (-peak_clip_headroom_db / 20)
    if strategy == "peak":
        if peak > 0:  # silence stays silence instead of 0 * inf
            rescaling = scale_peak / peak
            if normalize or rescaling < 1:
                return _Transform(gain=rescaling)
    elif strategy == "clip":
        return _Transform(limit=scale_peak)
    elif strategy == "rms":
        rms = _rms(wav, peak, mono=True)
        if rms > 0:
            rescaling = 10 ** (-rms_headroom_db / 20) / rms
            if normalize or rescaling < 1:
                return _Transform(gain=rescaling)
    elif strategy == "loudness":
        if sample_rate is None:
            raise ValueError("strategy='loudness' requires sample_rate")
        if _rms(wav, peak) >= LOUDNESS_ENERGY_FLOOR:
            loudness = _integrated_loudness(wav if wav.dim() > 1 else wav[None], sample_rate)
            # -inf when every block is gated out (e.g. pure DC, removed by K-weighting).
            if math.isfinite(loudness):
                gain = 10.0 ** ((-loudness_headroom_db - loudness) / 20.0)
                return _Transform(gain=gain, compress=loudness_compressor)
    elif peak >= 1:
        raise ValueError(f"strategy='none' needs |wav| < 1, got a peak of {peak:.4g}")
    return _Transform()


def _log_clipping(wav: torch.Tensor, transform: _Transform, peak: float, stem_name: str | None) -> None:
    """Warn (like upstream's _clip_wav) when the final clamp to [-1, 1] will actually clip."""
    peak_after = transform.peak_after(peak)
    if peak_after > 1:
        clipped = sum((transform(block).abs() > 1).sum().item() for block in _blocks(wav))
        logger.warning(
            "CLIPPING %s: %.4g%% of samples clamped to [-1, 1] (a bit of clipping is okay), maximum scale %.4g",
            stem_name or "",
            100 * clipped / wav.numel(),
            peak_after,
        )


def _clip_wav(wav: torch.Tensor, log_clipping: bool = False, stem_name: str | None = None) -> None:
    """Clamp ``wav`` to [-1, 1] in place, warning when samples actually clip (upstream's _clip_wav)."""
    if log_clipping:
        _log_clipping(wav, _Transform(), _peak(wav), stem_name)
    wav.clamp_(-1, 1)


def normalize_audio(
    wav: torch.Tensor,
    normalize: bool = True,
    strategy: str = "peak",
    peak_clip_headroom_db: float = 1,
    rms_headroom_db: float = 18,
    loudness_headroom_db: float = 14,
    loudness_compressor: bool = False,
    log_clipping: bool = False,
    sample_rate: int | None = None,
    stem_name: str | None = None,
) -> torch.Tensor:
    """Apply audiocraft's ``normalize_audio`` strategy to ``wav`` [C, T] (or [T]).

    Same semantics as upstream, computed in float64 and returned in ``wav``'s dtype:

    * ``peak``: scale so that max |x| = 10^(-peak_clip_headroom_db / 20); with ``normalize=False``
      only when that scale is < 1 (i.e. only to prevent clipping).
    * ``clip``: clamp to +-10^(-peak_clip_headroom_db / 20).
    * ``rms``: scale so that the RMS of the channel mean (mono mix) is -rms_headroom_db dB (with
      ``normalize=False`` only when that scale is < 1), then clamp to [-1, 1].
    * ``loudness``: if the RMS over all samples is >= 2e-3, gain to -loudness_headroom_db LUFS
      (BS.1770-4 integrated loudness via pyloudnorm), then ``tanh`` if ``loudness_compressor``;
      then clamp to [-1, 1]. Needs ``sample_rate``. At most 5 channels (BS.1770).
    * ``none`` / ``''``: unchanged; |wav| must be < 1 (upstream asserts it, we raise ValueError).

    Differences from upstream: silence (zero peak, zero mono RMS, or a loudness meter reading of
    -inf) is returned unchanged instead of becoming NaN; every strategy ends with the clamp to
    [-1, 1] (only reachable for peak/clip with a negative headroom); clipping is reported with
    ``logging`` (warning) instead of a print to stderr.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    peak = _peak(wav)
    transform = _normalization(
        wav,
        normalize,
        strategy,
        peak_clip_headroom_db,
        rms_headroom_db,
        loudness_headroom_db,
        loudness_compressor,
        sample_rate,
        peak,
    )
    if log_clipping:
        _log_clipping(wav, transform, peak, stem_name)
    out = transform(wav)
    _clip_wav(out)
    return out.to(wav.dtype)


def _execute(plan: _Plan) -> Path:
    """Normalize and encode block by block to a temporary file next to the target, then rename it into
    place. Memory beyond the input: one block, plus one float64 copy for the loudness measurement."""
    peak = _peak(plan.wav)
    norm = dict(plan.norm_kwargs)
    log_clipping, stem_name = norm.pop("log_clipping"), norm.pop("stem_name")
    transform = _normalization(plan.wav, sample_rate=plan.sample_rate, peak=peak, **norm)
    if log_clipping:
        _log_clipping(plan.wav, transform, peak, stem_name)
    enc = plan.encoding
    if plan.make_parent_dir:
        plan.tmp_dir.mkdir(parents=True, exist_ok=True)
    with _files.replacing(plan.path) as tmp:
        with sf.SoundFile(
            tmp,
            "w",
            samplerate=plan.sample_rate,
            channels=plan.wav.shape[0],
            format=enc.format,
            subtype=enc.subtype,
            compression_level=enc.compression_level,
            bitrate_mode=enc.bitrate_mode,
        ) as f:
            for block in _blocks(plan.wav):
                y = transform(block).clamp_(-1, 1)
                if enc.subtype == "PCM_16":
                    # Quantize here: libsndfile's float -> int16 path floors (up to 1 LSB of error);
                    # this rounds to nearest like ffmpeg's pcm_s16le, which upstream used.
                    y = y.mul_(32768).round_().clamp_(-32768, 32767).to(torch.int16)
                else:
                    y = y.to(torch.float32)  # what libsndfile's other encoders consume natively
                f.write(np.ascontiguousarray(y.t().numpy()))  # soundfile wants [T, C]
    return plan.path


def audio_write(
    stem_name: PathLike,
    wav: AudioLike,
    sample_rate: int,
    format: str = "wav",
    mp3_rate: int = 320,
    ogg_rate: int | None = None,
    normalize: bool = True,
    strategy: str = "peak",
    peak_clip_headroom_db: float = 1,
    rms_headroom_db: float = 18,
    loudness_headroom_db: float = 14,
    loudness_compressor: bool = False,
    log_clipping: bool = True,
    make_parent_dir: bool = True,
    add_suffix: bool = True,
) -> Path:
    """Normalize ``wav`` and write it to ``stem_name`` + ``.{format}``; return the path written.

    Args:
        stem_name: output path without extension (``add_suffix=True``) or the full path.
        wav: ``[C, T]`` (channels first) or ``[T]`` float audio, a torch tensor on any device
            (float16/bfloat16/float32/float64) or a float numpy array. Integer, bool, complex,
            NaN/Inf, empty or > 2-D input raises.
        sample_rate: positive int, and one the format can encode (see the module docstring).
        format: ``'wav'`` (16-bit PCM), ``'mp3'`` (CBR ``mp3_rate`` kbps), ``'ogg'`` (Vorbis VBR,
            quality from ``ogg_rate`` kbps) or ``'flac'`` (24-bit).
        mp3_rate: MP3 bitrate in kbps; outside the band of the rate's MPEG version it is clamped to
            the nearest end of that band, with a warning (module docstring).
        ogg_rate: nominal Vorbis bitrate in kbps in [64, 500], mapped to a quality level
            (module docstring); ``None``: quality 4 (~128 kbps nominal).
        normalize, strategy, peak_clip_headroom_db, rms_headroom_db, loudness_headroom_db,
            loudness_compressor, log_clipping: as in audiocraft; see :func:`normalize_audio`.
            Clipping is reported with a ``logging`` warning when ``log_clipping``.
        make_parent_dir: create the parent folder if missing (else FileNotFoundError).
        add_suffix: append ``.{format}`` to ``stem_name``.

    Everything is validated before any file or folder is created. The file is written to a hidden
    temporary name in the destination folder and renamed onto the final path, so a failure (or an
    interrupt) leaves neither a partial file nor the temporary behind; an existing file at the
    final path is replaced only on success. A process killed outright (SIGKILL, power loss) leaves
    its temporary; the next write of the same output removes it. Any length is written, in blocks.
    """
    plan = _plan(
        stem_name,
        wav,
        sample_rate,
        format=format,
        mp3_rate=mp3_rate,
        ogg_rate=ogg_rate,
        normalize=normalize,
        strategy=strategy,
        peak_clip_headroom_db=peak_clip_headroom_db,
        rms_headroom_db=rms_headroom_db,
        loudness_headroom_db=loudness_headroom_db,
        loudness_compressor=loudness_compressor,
        log_clipping=log_clipping,
        make_parent_dir=make_parent_dir,
        add_suffix=add_suffix,
    )
    return _execute(plan)


_AUDIO_WRITE_KWARGS = frozenset(inspect.signature(audio_write).parameters) - {"stem_name", "wav", "sample_rate"}


def write_batch(
    wavs: AudioLike | tp.Sequence[AudioLike],
    stems: tp.Sequence[PathLike],
    sample_rate: int,
    *,
    max_workers: int | None = None,
    **audio_write_kwargs: tp.Any,
) -> list[Path]:
    """Write a batch with :func:`audio_write`, several files at a time; return paths in input order.

    Args:
        wavs: ``[B, C, T]`` tensor/array, or a sequence of B items that :func:`audio_write`
            accepts (``[C, T]`` or ``[T]``, possibly of different lengths).
        stems: B stem names, one per item.
        sample_rate: shared sample rate.
        max_workers: threads; default ``min(4, os.cpu_count(), B)``. libsndfile encodes with the
            GIL released, so threads overlap the encoding of different files.
        **audio_write_kwargs: forwarded to :func:`audio_write` (format, strategy, ...).

    Every item is validated, and ``len(stems) == B`` and the uniqueness of the output paths are
    checked, before any file is written. If some items fail while writing, the others still
    complete, then the first failure (in input order) is raised; a failed item leaves no file.
    """
    if isinstance(wavs, (torch.Tensor, np.ndarray)):
        if wavs.ndim != 3:
            raise ValueError(f"a batch tensor must be [B, C, T], got shape {tuple(wavs.shape)}")
        if isinstance(wavs, torch.Tensor):
            wavs = wavs.detach().cpu()  # one device transfer for the whole batch
        items = [wavs[i] for i in range(wavs.shape[0])]
    elif isinstance(wavs, (list, tuple)):
        items = list(wavs)
    else:
        raise TypeError(f"wavs must be a [B, C, T] tensor/array or a list of them, got {type(wavs).__name__}")
    if isinstance(stems, (str, os.PathLike)) or not isinstance(stems, tp.Sequence):
        raise TypeError("stems must be a sequence of stem names, one per item")
    if len(stems) != len(items):
        raise ValueError(f"got {len(items)} items but {len(stems)} stems")
    unknown = set(audio_write_kwargs) - _AUDIO_WRITE_KWARGS
    if unknown:
        raise TypeError(f"unexpected keyword arguments for audio_write: {sorted(unknown)}")
    if not items:
        return []
    plans = [_plan(stem, wav, sample_rate, **audio_write_kwargs) for stem, wav in zip(stems, items)]
    seen: dict[str, int] = {}
    for i, plan in enumerate(plans):
        key = os.path.normcase(os.path.abspath(plan.path))
        if key in seen:
            raise ValueError(f"items {seen[key]} and {i} would both be written to {str(plan.path)!r}")
        seen[key] = i
    if max_workers is None:
        max_workers = min(4, os.cpu_count() or 1, len(plans))
    if not _is_int(max_workers) or max_workers < 1:
        raise ValueError(f"max_workers must be a positive int, got {max_workers!r}")
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="audio_write") as pool:
        futures = [pool.submit(_execute, plan) for plan in plans]
    # The pool has joined: every item has finished (written or cleaned up) by now.
    errors = [f.exception() for f in futures]
    for err in errors:
        if err is not None:
            raise err
    return [f.result() for f in futures]
