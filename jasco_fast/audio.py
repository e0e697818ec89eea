"""Writing generated audio to disk: a drop-in for audiocraft's ``audio_write``.

``audio_write`` keeps audiocraft's signature and loudness semantics (``normalize_audio``:
peak, clip, rms, loudness, none) but encodes in-process with soundfile/libsndfile instead of
piping every file through an ffmpeg subprocess. On top of upstream it:

* validates every argument (dtype, shape, finiteness, format, strategy, sample rate, bitrate,
  channel count, output folder) before any file or folder is created, and raises
  ``TypeError`` / ``ValueError`` with a message instead of ``assert``;
* writes silence as silence (no 0/0, no NaN) for every strategy;
* accepts float16/bfloat16/float32/float64 tensors on any device and float numpy arrays;
* never leaves a partial file: it writes to a hidden temporary name in the destination folder and
  ``os.replace``-s it onto the final name, removing the temporary on any exception.

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
  24000, 32000, 44100, 48000 Hz; 1 or 2 channels. ``mp3_rate`` must lie in the range of the MPEG
  version the rate implies: [32, 320] kbps (MPEG-1, >= 32 kHz), [8, 160] (MPEG-2, 16-24 kHz),
  [8, 64] (MPEG-2.5, 8-12 kHz). libsndfile maps a compression level c in [0, 1] linearly onto that
  range (``bitrate = int(max - c * (max - min))``); we invert that map, and LAME then rounds to the
  nearest standard bitrate of that MPEG version (e.g. 100 -> 96 kbps).
* ``ogg``: Vorbis, variable bitrate. libsndfile sets Vorbis quality ``q = 1 - compression_level``
  (q in [0, 1], i.e. oggenc's -q 0..10). ``ogg_rate`` (kbps) is turned into a quality by linear
  interpolation in libvorbis' nominal bitrates for 44.1 kHz stereo
  (q 0..10 -> 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 500 kbps), so ``ogg_rate`` must be in
  [64, 500]. ``ogg_rate=None`` uses q = 0.4 (oggenc -q 4, ~128 kbps nominal; libsndfile's default).
  The real bitrate is content, rate and channel dependent (lower at 32 kHz and for mono). Vorbis
  encodes 1..200000 Hz and 1..255 channels (libvorbis has no setup beyond; libsndfile crashes there).
"""
from __future__ import annotations

import inspect
import logging
import math
import numbers
import os
import secrets
import typing as tp
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

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


def mp3_rate_range(sample_rate: int) -> tp.Tuple[int, int, str]:
    """(lowest, highest kbps, MPEG version) an MP3 at ``sample_rate`` Hz can have; the highest is the best."""
    if sample_rate >= 32000:
        return 32, 320, "MPEG-1"
    if sample_rate >= 16000:
        return 8, 160, "MPEG-2"
    return 8, 64, "MPEG-2.5"


PathLike = tp.Union[str, "os.PathLike[str]"]
AudioLike = tp.Union[torch.Tensor, np.ndarray]


@dataclass(frozen=True)
class _Encoding:
    format: str  # libsndfile major format
    subtype: str
    compression_level: tp.Optional[float] = None
    bitrate_mode: tp.Optional[str] = None


@dataclass
class _Plan:
    """Everything audio_write needs once validation has passed."""
    path: Path
    tmp_dir: Path
    wav: torch.Tensor  # [C, T] float64 CPU, not yet normalized
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


def _to_float64_cpu(wav: tp.Any) -> torch.Tensor:
    """Any float tensor / array -> float64 CPU tensor (same shape), or TypeError."""
    if isinstance(wav, torch.Tensor):
        if wav.dtype == torch.bool or wav.is_complex() or not wav.dtype.is_floating_point:
            raise TypeError(
                f"wav must hold real floating-point samples in [-1, 1], got dtype {wav.dtype}; "
                "convert integer PCM first, e.g. wav.float() / 32768")
        # Move in the source dtype (smaller transfer), widen on the CPU. float64 keeps the gain
        # arithmetic of very quiet or very loud inputs from overflowing.
        return wav.detach().cpu().to(torch.float64)
    if isinstance(wav, np.ndarray):
        if wav.dtype.kind != "f":
            raise TypeError(
                f"wav must hold real floating-point samples in [-1, 1], got numpy dtype {wav.dtype}; "
                "convert integer PCM first, e.g. wav.astype(np.float32) / 32768")
        # A copy: the input may be read-only, strided or big-endian.
        return torch.from_numpy(np.array(wav, dtype=np.float64, order="C", copy=True))
    raise TypeError(f"wav must be a torch.Tensor or numpy.ndarray, got {type(wav).__name__}")


def _check_wav(wav: tp.Any) -> torch.Tensor:
    """Validate and return ``wav`` as a [C, T] float64 CPU tensor."""
    out = _to_float64_cpu(wav)
    if out.dim() == 1:
        out = out[None]
    elif out.dim() != 2:
        raise ValueError(f"wav must be [C, T] or [T], got {out.dim()} dimensions (shape {tuple(out.shape)})")
    channels, frames = out.shape
    if channels == 0 or frames == 0:
        raise ValueError(f"wav has no samples (shape [C, T] = {tuple(out.shape)})")
    if not bool(torch.isfinite(out).all()):
        raise ValueError("wav contains NaN or Inf samples")
    return out


def _encoding(format: str, sample_rate: int, channels: int, frames: int,
              mp3_rate: tp.Any, ogg_rate: tp.Any) -> _Encoding:
    """Map (format, rates) to libsndfile settings; raise if the format cannot encode it."""
    layout_hint = "(wav is channels-first [C, T])"
    if format == "wav":
        if channels > SNDFILE_MAX_CHANNELS:
            raise ValueError(f"wav format supports at most {SNDFILE_MAX_CHANNELS} channels, got {channels} {layout_hint}")
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
        if not _is_int(mp3_rate):
            raise TypeError(f"mp3_rate must be an int (kbps), got {type(mp3_rate).__name__}")
        lo, hi, version = mp3_rate_range(sample_rate)
        if not lo <= mp3_rate <= hi:
            raise ValueError(f"mp3_rate must be in [{lo}, {hi}] kbps for {version} at {sample_rate} Hz, got {mp3_rate}")
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


def _output_path(stem_name: tp.Any, format: str, add_suffix: bool) -> Path:
    if not isinstance(stem_name, (str, os.PathLike)):
        raise TypeError(f"stem_name must be a str or os.PathLike, got {type(stem_name).__name__}")
    return Path(os.fspath(stem_name) + (f".{format}" if add_suffix else ""))


def _plan(stem_name: tp.Any, wav: tp.Any, sample_rate: tp.Any, format: str = "wav",
          mp3_rate: int = 320, ogg_rate: tp.Optional[int] = None, normalize: bool = True,
          strategy: str = "peak", peak_clip_headroom_db: float = 1, rms_headroom_db: float = 18,
          loudness_headroom_db: float = 14, loudness_compressor: bool = False,
          log_clipping: bool = True, make_parent_dir: bool = True, add_suffix: bool = True) -> _Plan:
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
    for name, value in (("peak_clip_headroom_db", peak_clip_headroom_db),
                        ("rms_headroom_db", rms_headroom_db),
                        ("loudness_headroom_db", loudness_headroom_db)):
        _check_real(name, value)
    path = _output_path(stem_name, format, add_suffix)
    wav = _check_wav(wav)
    channels, frames = wav.shape
    encoding = _encoding(format, sample_rate, channels, frames, mp3_rate, ogg_rate)
    if strategy == "loudness" and channels > 5:
        raise ValueError(f"strategy='loudness' (ITU-R BS.1770) supports at most 5 channels, got {channels}")
    if strategy in ("none", ""):
        peak = wav.abs().max().item()
        # Upstream asserts this: with no normalization the samples must already fit.
        if peak >= 1:
            raise ValueError(f"strategy='none' needs |wav| < 1, got a peak of {peak:.4g}; "
                             "pick a normalization strategy (e.g. 'peak' or 'clip')")
    if path.is_dir():
        raise ValueError(f"output path {str(path)!r} is a directory")
    parent = path.parent
    if not parent.is_dir():
        if parent.exists():
            raise ValueError(f"parent of the output path, {str(parent)!r}, is not a directory")
        if not make_parent_dir:
            raise FileNotFoundError(f"output folder {str(parent)!r} does not exist (make_parent_dir=False)")
    norm_kwargs = dict(normalize=bool(normalize), strategy=strategy,
                       peak_clip_headroom_db=float(peak_clip_headroom_db),
                       rms_headroom_db=float(rms_headroom_db),
                       loudness_headroom_db=float(loudness_headroom_db),
                       loudness_compressor=bool(loudness_compressor),
                       log_clipping=bool(log_clipping), stem_name=str(stem_name))
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
    return float(meter.integrated_loudness(wav.t().numpy()))


def _clip(wav: torch.Tensor, log_clipping: bool, stem_name: tp.Optional[str]) -> torch.Tensor:
    """Clamp to [-1, 1], warning (like upstream's _clip_wav) when samples actually clip."""
    peak = wav.abs().max().item()
    if peak > 1:
        if log_clipping:
            frac = (wav.abs() > 1).double().mean().item()
            logger.warning("CLIPPING %s: %.4g%% of samples clamped to [-1, 1] (a bit of clipping is "
                           "okay), maximum scale %.4g", stem_name or "", 100 * frac, peak)
        wav = wav.clamp(-1, 1)
    return wav


def normalize_audio(wav: torch.Tensor, normalize: bool = True, strategy: str = "peak",
                    peak_clip_headroom_db: float = 1, rms_headroom_db: float = 18,
                    loudness_headroom_db: float = 14, loudness_compressor: bool = False,
                    log_clipping: bool = False, sample_rate: tp.Optional[int] = None,
                    stem_name: tp.Optional[str] = None) -> torch.Tensor:
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
    dtype = wav.dtype
    x = wav.to(torch.float64)
    scale_peak = 10 ** (-peak_clip_headroom_db / 20)
    scale_rms = 10 ** (-rms_headroom_db / 20)
    if strategy == "peak":
        peak = x.abs().max().item()
        if peak > 0:  # silence stays silence instead of 0 * inf
            rescaling = scale_peak / peak
            if normalize or rescaling < 1:
                x = x * rescaling
    elif strategy == "clip":
        x = x.clamp(-scale_peak, scale_peak)
    elif strategy == "rms":
        mono = x.mean(dim=0) if x.dim() > 1 else x
        peak = mono.abs().max().item()
        # Factor out the peak so the mean square cannot overflow for huge float64 inputs.
        rms = peak * (mono / peak).pow(2).mean().sqrt().item() if peak > 0 else 0.0
        if rms > 0:
            rescaling = scale_rms / rms
            if normalize or rescaling < 1:
                x = x * rescaling
    elif strategy == "loudness":
        if sample_rate is None:
            raise ValueError("strategy='loudness' requires sample_rate")
        energy = x.pow(2).mean().sqrt().item()
        if energy >= LOUDNESS_ENERGY_FLOOR:
            x2 = x if x.dim() > 1 else x[None]
            loudness = _integrated_loudness(x2, sample_rate)
            # -inf when every block is gated out (e.g. pure DC, removed by K-weighting).
            if math.isfinite(loudness):
                gain = 10.0 ** ((-loudness_headroom_db - loudness) / 20.0)
                x = gain * x
                if loudness_compressor:
                    x = torch.tanh(x)
    else:
        peak = x.abs().max().item()
        if peak >= 1:
            raise ValueError(f"strategy='none' needs |wav| < 1, got a peak of {peak:.4g}")
    x = _clip(x, log_clipping, stem_name)
    return x.to(dtype)


def _execute(plan: _Plan) -> Path:
    """Normalize, encode to a temporary file next to the target, then rename it into place."""
    wav = normalize_audio(plan.wav, sample_rate=plan.sample_rate, **plan.norm_kwargs)
    enc = plan.encoding
    if enc.subtype == "PCM_16":
        # Quantize here: libsndfile's float -> int16 path floors (up to 1 LSB of error); this
        # rounds to nearest like ffmpeg's pcm_s16le, which upstream used.
        wav = (wav * 32768).round_().clamp_(-32768, 32767).to(torch.int16)
    else:
        # float32 is what libsndfile's other encoders consume natively.
        wav = wav.to(torch.float32)
    data = np.ascontiguousarray(wav.t().numpy())  # soundfile wants [T, C]
    if plan.make_parent_dir:
        plan.tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        # O_EXCL: a unique name even with concurrent writers; mode 0o666 so the final file gets
        # the usual umask-based permissions (mkstemp would give 0o600).
        for _ in range(100):
            candidate = plan.tmp_dir / f".{plan.path.name}.{secrets.token_hex(6)}.tmp"
            try:
                fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue
            os.close(fd)
            tmp = candidate
            break
        else:
            raise FileExistsError(f"could not create a temporary file in {str(plan.tmp_dir)!r}")
        with sf.SoundFile(tmp, "w", samplerate=plan.sample_rate, channels=data.shape[1],
                          format=enc.format, subtype=enc.subtype,
                          compression_level=enc.compression_level,
                          bitrate_mode=enc.bitrate_mode) as f:
            f.write(data)
        os.replace(tmp, plan.path)
        tmp = None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
    return plan.path


def audio_write(stem_name: PathLike, wav: AudioLike, sample_rate: int, format: str = "wav",
                mp3_rate: int = 320, ogg_rate: tp.Optional[int] = None, normalize: bool = True,
                strategy: str = "peak", peak_clip_headroom_db: float = 1,
                rms_headroom_db: float = 18, loudness_headroom_db: float = 14,
                loudness_compressor: bool = False, log_clipping: bool = True,
                make_parent_dir: bool = True, add_suffix: bool = True) -> Path:
    """Normalize ``wav`` and write it to ``stem_name`` + ``.{format}``; return the path written.

    Args:
        stem_name: output path without extension (``add_suffix=True``) or the full path.
        wav: ``[C, T]`` (channels first) or ``[T]`` float audio, a torch tensor on any device
            (float16/bfloat16/float32/float64) or a float numpy array. Integer, bool, complex,
            NaN/Inf, empty or > 2-D input raises.
        sample_rate: positive int, and one the format can encode (see the module docstring).
        format: ``'wav'`` (16-bit PCM), ``'mp3'`` (CBR ``mp3_rate`` kbps), ``'ogg'`` (Vorbis VBR,
            quality from ``ogg_rate`` kbps) or ``'flac'`` (24-bit).
        mp3_rate: MP3 bitrate in kbps, within the range of the MPEG version of the rate.
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
    final path is replaced only on success.
    """
    plan = _plan(stem_name, wav, sample_rate, format=format, mp3_rate=mp3_rate,
                 ogg_rate=ogg_rate, normalize=normalize, strategy=strategy,
                 peak_clip_headroom_db=peak_clip_headroom_db, rms_headroom_db=rms_headroom_db,
                 loudness_headroom_db=loudness_headroom_db,
                 loudness_compressor=loudness_compressor, log_clipping=log_clipping,
                 make_parent_dir=make_parent_dir, add_suffix=add_suffix)
    return _execute(plan)


_AUDIO_WRITE_KWARGS = frozenset(inspect.signature(audio_write).parameters) - {"stem_name", "wav", "sample_rate"}


def write_batch(wavs: tp.Union[AudioLike, tp.Sequence[AudioLike]], stems: tp.Sequence[PathLike],
                sample_rate: int, *, max_workers: tp.Optional[int] = None,
                **audio_write_kwargs: tp.Any) -> tp.List[Path]:
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
    seen: tp.Dict[str, int] = {}
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
