"""The ``jasco-fast`` command line (also ``python -m jasco_fast``): decode, demo, bench, info.

``decode`` turns latent files into audio files; under ``torchrun`` it shards the input files across
ranks (gloo on CPU, NCCL on GPU), each file decoded by exactly one rank, and rank 0 prints a summary
gathered from all of them.
"""
from __future__ import annotations

import argparse
import errno
import importlib.util
import os
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from jasco_fast.backends import BACKENDS
from jasco_fast.audio import FORMATS, STRATEGIES, mp3_rate_range, write_batch
from jasco_fast.decoder import DecoderConfig, SEANetDecoder
from jasco_fast.errors import is_out_of_memory
from jasco_fast.memory import reuse_freed_memory
from jasco_fast.loading import CheckpointError, check_torch_zip, load_decoder, read_safetensors_header
from jasco_fast.ops import JASCO_LATENT_MEAN, JASCO_LATENT_STD, recurrent_format_supported
from jasco_fast.overlap import HostCopy, Outcome, WriteQueue
from jasco_fast.pipeline import DEFAULT_CHUNK_FRAMES, DTYPES, LatentDecoder
from jasco_fast.pipeline import CodeDecoder
from jasco_fast.quantizer import Quantizer, load_quantizer

LATENT_SUFFIXES = (".pt", ".pth", ".npy", ".safetensors")


class UsageError(Exception):
    """A problem with the command as a whole (exit code 2), as opposed to one bad input file."""


def _say(message: str) -> None:
    print(f"jasco-fast: {message}", file=sys.stderr, flush=True)


def _first_line(text: str, default: str = "") -> str:
    """Error messages are reported on one line each."""
    return (str(text).strip().splitlines() or [default])[0]


# --------------------------------------------------------------------------------------------------
# Inputs


def _load_tensor(path: Path) -> torch.Tensor:
    """The one tensor of a .pt / .npy / .safetensors file (read safely: no pickled code)."""
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth"):
        try:
            check_torch_zip(path)  # no zip bomb
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except CheckpointError as exc:
            raise ValueError(exc.problem) from None
        except OSError as exc:
            raise ValueError(f"cannot read it: {exc.strerror or exc}") from None
        except Exception:
            raise ValueError("not a readable torch file (truncated, corrupt, or holding Python objects, which "
                             "are refused)") from None
        tensor = _pick_tensor(obj)
    elif suffix == ".npy":
        import numpy as np

        try:
            array = np.load(path, allow_pickle=False)
        except OSError as exc:
            raise ValueError(f"cannot read it: {exc.strerror or exc}") from None
        except Exception:
            raise ValueError("not a readable .npy file (truncated, corrupt, or holding Python objects, which "
                             "are refused)") from None
        if array.dtype.kind not in "fiub":
            raise ValueError(f"latents must be floating point, got numpy dtype {array.dtype}")
        tensor = torch.from_numpy(array.astype(array.dtype.newbyteorder("="), copy=False))
    elif suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            read_safetensors_header(path)  # sizes checked against the file before the library allocates
            state = load_file(str(path))
        except CheckpointError as exc:
            raise ValueError(exc.problem) from None
        except OSError as exc:
            raise ValueError(f"cannot read it: {exc.strerror or exc}") from None
        except Exception:
            raise ValueError("not a readable safetensors file (truncated or corrupt)") from None
        tensor = _pick_tensor(state)
    else:
        raise ValueError(f"unsupported file type {suffix!r} (expected {', '.join(LATENT_SUFFIXES)})")
    return tensor


def read_latents(path: Path, dimension: int, tensor: torch.Tensor | None = None) -> tuple[torch.Tensor, bool]:
    """Latents [B, T, D] (float32) from a .pt / .npy / .safetensors file holding [T, D] or [B, T, D], and
    whether the file held a single [T, D] item."""
    tensor = _load_tensor(path) if tensor is None else tensor
    if not tensor.is_floating_point():
        raise ValueError(f"latents must be floating point, got {tensor.dtype}")
    single = tensor.dim() == 2
    if single:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 3:
        raise ValueError(f"latents must be [T, D] or [B, T, D], got shape {list(tensor.shape)}")
    if tensor.shape[2] != dimension:
        raise ValueError(f"latents have D = {tensor.shape[2]}, the decoder expects D = {dimension}")
    if tensor.shape[1] < 1 or tensor.shape[0] < 1:
        raise ValueError(f"no frames in latents of shape {list(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise ValueError("latents contain NaN or Inf")
    return tensor.float(), single


def is_codes(tensor: torch.Tensor) -> bool:
    """Integer tensors are EnCodec codes, floating-point ones latents."""
    return not (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool)


def read_codes(path: Path, tensor: torch.Tensor, num_codebooks: int, codebook_size: int) -> tuple[torch.Tensor, bool]:
    """EnCodec codes from a file's integer tensor [K, T] or [B, K, T]: (codes [B, K, T] int64, whether the
    file held a single [K, T] item). K <= num_codebooks (the first K codebooks are used)."""
    single = tensor.dim() == 2
    if single:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 3:
        raise ValueError(f"codes must be [K, T] or [B, K, T], got shape {list(tensor.shape)}")
    if not 1 <= tensor.shape[1] <= num_codebooks:
        raise ValueError(f"codes have K = {tensor.shape[1]} codebooks, the quantizer has {num_codebooks} "
                         f"(codes are [K, T] or [B, K, T])")
    if tensor.shape[2] < 1 or tensor.shape[0] < 1:
        raise ValueError(f"no frames in codes of shape {list(tensor.shape)}")
    tensor = tensor.long()
    if tensor.min() < 0 or tensor.max() >= codebook_size:
        raise ValueError(f"codes must lie in [0, {codebook_size}), got values in [{int(tensor.min())}, "
                         f"{int(tensor.max())}]")
    return tensor, single


def build_quantizer(checkpoint: str | None, device: torch.device, dimension: int) -> Quantizer:
    """The checkpoint's RVQ codebooks; without a checkpoint, random ones shaped like EnCodec 32 kHz's."""
    if checkpoint is None:
        gen = torch.Generator().manual_seed(0)
        return Quantizer(torch.randn(4, 2048, dimension, generator=gen)).to(device)
    return load_quantizer(checkpoint, device=device)


def _pick_tensor(obj) -> torch.Tensor:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        for key in ("latents", "codes"):
            if isinstance(obj.get(key), torch.Tensor):
                return obj[key]
            if key in obj:
                raise ValueError(f"its {key!r} entry is a {type(obj[key]).__name__}, not a tensor")
        tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            return tensors[0]
        raise ValueError(f"expected one tensor or a 'latents' / 'codes' key, found keys {sorted(map(str, obj))[:6]}")
    raise ValueError(f"expected a tensor, found {type(obj).__name__}")


@dataclass
class Item:
    name: str
    latents: torch.Tensor  # [T, D]; codes frames-major, [T, K]
    codes: bool = False


@dataclass
class Summary:
    rank: int = 0
    decoded: int = 0
    audio_seconds: float = 0.0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"rank {self.rank}: {self.decoded} items, {self.audio_seconds:.1f} audio s, {self.skipped} skipped, "
                f"{len(self.failures)} failed")

    def merge(self, other: "Summary") -> None:
        self.decoded += other.decoded
        self.audio_seconds += other.audio_seconds
        self.skipped += other.skipped
        self.failures += other.failures


# --------------------------------------------------------------------------------------------------
# Shared set-up


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda, but CUDA is not available here")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps, but Apple's MPS is not available here")
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


def build_decoder(checkpoint: str | None, device: torch.device, quiet: bool = False) -> SEANetDecoder:
    if checkpoint is None:
        if not quiet:
            _say("no --checkpoint: the EnCodec 32 kHz architecture with RANDOM weights, so the audio is noise "
                 "(pass --checkpoint for real audio)")
        torch.manual_seed(0)
        return SEANetDecoder(DecoderConfig()).to(device).eval()
    try:
        return load_decoder(checkpoint, device=device)
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None


def _dtype(args) -> torch.dtype | str:
    return "auto" if args.dtype == "auto" else DTYPES[args.dtype]


def _recurrent_dtype(args) -> torch.dtype | str | None:
    if args.recurrent_dtype in (None, "auto"):
        return args.recurrent_dtype
    recurrent = DTYPES.get(args.recurrent_dtype, torch.int8)
    if args.dtype != "auto" and not recurrent_format_supported(recurrent, DTYPES[args.dtype]):
        raise UsageError(f"--recurrent-dtype {args.recurrent_dtype} needs --dtype float32 (or bfloat16), got --dtype "
                         f"{args.dtype}")
    return recurrent


DTYPE_HELP = ("decoder compute dtype (default float32, the exact mode); auto: the fastest mode measured on this "
              "device and CPU class at 40 dB SNR or more, recurrent format included (`jasco-fast info` shows it)")
RECURRENT_HELP = ("stream the LSTM's recurrent matrices as int8 (a float32 scale per row) or bfloat16 (with --dtype "
                  "float32); state and arithmetic stay float32; auto: the automatic mode's format for --dtype")


def _add_decoding_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="EnCodec checkpoint: audiocraft compression_state_dict.bin (or its folder), "
                                        "or a transformers EnCodec folder; default: random weights")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"],
                   help="cuda also means AMD GPUs on a ROCm torch; `jasco-fast info` shows each device's path")
    p.add_argument("--dtype", default="float32", choices=[*DTYPES, "auto"], help=DTYPE_HELP)
    p.add_argument("--recurrent-dtype", choices=["int8", "bfloat16", "auto"], help=RECURRENT_HELP)
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="how the decoder runs: eager; inductor (torch.compile in this process); aot (the "
                        "ahead-of-time compiled decoders in the cache: `jasco-fast compile`, or built in the "
                        "background on a miss while the first calls run eagerly; codes files take inductor). "
                        "Default: aot on the CPU, inductor elsewhere")
    p.add_argument("--mode", default=None,
                   help="a torch.compile mode (e.g. reduce-overhead for CUDA graphs); with --backend inductor")
    p.add_argument("--format", default="wav", choices=FORMATS)
    p.add_argument("--strategy", default="peak", choices=[s for s in STRATEGIES if s],
                   help="loudness normalisation (audio_write)")
    p.add_argument("--mp3-rate", type=_positive_int, default=None,
                   help="MP3 bitrate in kbps (default: the highest the sample rate's MPEG version allows, "
                        "320 at 32 kHz)")


def _backend(args) -> dict:
    """LatentDecoder's ``backend`` and ``mode`` from --backend / --mode (default: the device's default)."""
    if args.mode is not None and args.backend not in (None, "inductor"):
        raise UsageError(f"--mode is a torch.compile mode: it needs --backend inductor, got --backend {args.backend}")
    return {"backend": args.backend, "mode": args.mode}


def _mp3_rate(requested: int | None, sample_rate: int) -> int:
    """--mp3-rate, else the highest rate the sample rate allows."""
    return requested if requested is not None else mp3_rate_range(sample_rate)[1]


# --------------------------------------------------------------------------------------------------
# decode


def _distributed() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) outside torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")), world) if world > 1 else (0, 1)


def cmd_decode(args) -> int:
    rank, world = _distributed()
    device = _device(args.device)  # before init: no CUDA is the same usage error on every rank, nobody waits
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    usage_error = False
    try:
        summary, wall = _decode_shard(args, device, rank, world)
    except UsageError as exc:  # still joins the gather below, so the other ranks do not hang
        _say(str(exc))
        usage_error = True
        summary, wall = Summary(rank=rank, failures=[f"rank {rank}: {exc}"]), 0.0
    except Exception as exc:
        if world == 1:
            raise
        import traceback

        traceback.print_exc()  # an unexpected error on one rank: report it, and still join the gather
        summary, wall = Summary(rank=rank, failures=[f"rank {rank}: {type(exc).__name__}: {exc}"]), 0.0
    parts = [(summary, wall)]
    if world > 1:
        import torch.distributed as dist

        parts = [None] * world
        dist.all_gather_object(parts, (summary, wall))  # every rank learns whether any rank failed
        dist.destroy_process_group()
    total = Summary(rank=-1)
    for part, _ in parts:
        total.merge(part)
    wall = max(w for _, w in parts)  # the ranks run side by side: the job took as long as the slowest
    if rank == 0:
        if world > 1:
            for part, part_wall in parts:
                print(f"  {part.line()}, {part_wall:.2f} wall s", flush=True)
        rtf = total.audio_seconds / wall if wall > 0 else 0.0
        where = f" on {world} processes" if world > 1 else ""
        print(f"decoded {total.decoded} items ({total.audio_seconds:.1f} audio s) in {wall:.2f} wall s{where}: "
              f"real-time factor {rtf:.1f}x; {total.skipped} skipped (output exists, --overwrite rewrites); "
              f"{len(total.failures)} failed", flush=True)
    return 2 if usage_error else (1 if total.failures else 0)


# Errors of the output folder rather than of one item: full, read-only, no permission.
_FOLDER_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _folder_problem(out_dir: Path, exc: BaseException, needed: int) -> str | None:
    """Why ``out_dir`` cannot take more output after a failed write (full, read-only, no permission), or
    None when the failure looks like the item's own. libsndfile reports a full disk as "System error."
    without the errno, so the folder itself is asked too (``needed``: bytes the batch would take as WAV)."""
    if isinstance(exc, OSError) and exc.errno in _FOLDER_ERRORS:
        return exc.strerror or str(exc)
    try:
        stat = os.statvfs(out_dir)
    except (OSError, AttributeError):  # AttributeError: no statvfs on Windows
        return None
    if stat.f_flag & os.ST_RDONLY:
        return "read-only file system"
    if stat.f_bavail * stat.f_frsize < needed:
        return f"no space left: {stat.f_bavail * stat.f_frsize} bytes free"
    return None


def _stem_clashes(files: list[str]) -> dict[str, str]:
    """File -> why it cannot be decoded, for files whose name (stem) an earlier file in the sorted list already
    has: their outputs would overwrite each other. Decided on the full list, so every rank agrees."""
    first: dict[str, str] = {}
    clashes = {}
    for f in files:
        stem = Path(f).stem
        if stem in first:
            clashes[f] = f"its output names clash with those of {first[stem]} (same file name); rename one of them"
        else:
            first[stem] = f
    return clashes


def _decode_shard(args, device: torch.device, rank: int, world: int) -> tuple[Summary, float]:
    from tqdm import tqdm

    out_dir = Path(args.out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {out_dir}: {exc.strerror or exc}") from None
    all_files = sorted({str(Path(p)) for p in args.latents})  # the same list on every rank
    clashes = _stem_clashes(all_files)
    files = all_files[rank::world]  # each file decoded by exactly one rank
    decoder = build_decoder(args.checkpoint, device, quiet=rank != 0)
    try:  # long items are decoded chunk by chunk: only their audio is held, never the activations
        fast = LatentDecoder(decoder, args.mean, args.std, **_backend(args), dtype=_dtype(args),
                             chunk_frames=args.chunk_frames, recurrent_dtype=_recurrent_dtype(args))
    except ValueError as exc:
        raise UsageError(f"--chunk-frames: {exc}") from None
    code_decoders: list[CodeDecoder] = []  # built at the first codes file

    def code_decoder() -> CodeDecoder:
        if not code_decoders:
            quantizer = build_quantizer(args.checkpoint, device, decoder.dimension)
            # no artifact recipe covers codes: "aot" (the CPU's default) compiles them with inductor
            backend = {**_backend(args), "backend": None if args.backend == "aot" else args.backend}
            code_decoders.append(CodeDecoder(decoder, quantizer, **backend,
                                             dtype=_dtype(args), chunk_frames=args.chunk_frames,
                                             recurrent_dtype=_recurrent_dtype(args)))
        return code_decoders[0]

    summary = Summary(rank=rank)
    start = time.perf_counter()
    items: list[Item] = []
    names: set[str] = set()

    def fail(path, problem: str) -> None:  # one line per bad input; the others still run
        _say(f"{path}: {_first_line(problem, 'error')}")
        summary.failures.append(str(path))

    for f in files:
        path = Path(f)
        if f in clashes:
            fail(path, clashes[f])
            continue
        try:
            tensor = _load_tensor(path)
            codes = is_codes(tensor)  # told apart by dtype
            if codes:
                cd = code_decoder()
                latents, single = read_codes(path, tensor, cd.num_codebooks, cd.codebook_size)
                latents = latents.transpose(1, 2)  # frames-major [B, T, K], as items are
            else:
                latents, single = read_latents(path, decoder.dimension, tensor)
        except Exception as exc:
            fail(path, str(exc) or type(exc).__name__)
            continue
        stems = [path.stem] if single else [f"{path.stem}_{i}" for i in range(latents.shape[0])]
        if names & set(stems):  # e.g. "x_0.pt" holding [T, D] next to "x.pt" holding [B, T, D]
            fail(path, f"output name {sorted(names & set(stems))[0]!r} is taken by another input; rename the file")
            continue
        names |= set(stems)
        for stem, lat in zip(stems, latents):
            if not args.overwrite and (out_dir / f"{stem}.{args.format}").exists():
                summary.skipped += 1
            else:
                items.append(Item(stem, lat, codes))

    # Only items of EQUAL length T share a batch (sorted by T): padding a shorter item to a longer one would
    # change the last frames of its audio (the decoder's convolutions and LSTM see the padding).
    by_length: dict[tuple, list[Item]] = {}
    for item in items:  # (T, codes or latents, D or K)
        by_length.setdefault((item.latents.shape[0], item.codes, item.latents.shape[1]), []).append(item)
    batches = [group[i:i + args.batch_size] for _, group in sorted(by_length.items())
               for i in range(0, len(group), args.batch_size)]
    frame_rate = decoder.config.frame_rate
    total = sum(it.latents.shape[0] for it in items) / frame_rate
    mp3_rate = _mp3_rate(args.mp3_rate, fast.sample_rate)

    def decode(batch: list[Item]) -> torch.Tensor:
        stacked = torch.stack([it.latents for it in batch])  # frames-major: [B, T, D] latents or [B, T, K] codes
        return code_decoder()(stacked.transpose(1, 2)) if batch[0].codes else fast(stacked)

    def write(job: tuple[list[Item], HostCopy]) -> None:  # on the writer thread
        batch, audio = job
        write_batch(audio.result(), [str(out_dir / it.name) for it in batch], fast.sample_rate, format=args.format,
                    strategy=args.strategy, mp3_rate=mp3_rate)

    # The bar counts audio seconds, so its rate reads "audio seconds decoded per wall second".
    with tqdm(total=round(total, 3), unit="s", desc="decoding audio seconds", disable=rank != 0 or not items,
              dynamic_ncols=True, file=sys.stderr) as bar:
        _decode_overlapped(fast, batches, decode, write, summary, bar, frame_rate, out_dir=out_dir,
                           batch_size=args.batch_size, device=device)
    return summary, time.perf_counter() - start


def _decode_overlapped(fast: LatentDecoder, batches: list[list[Item]], decode, write, summary: Summary, bar,
                       frame_rate: float, *, out_dir: Path, batch_size: int, device: torch.device) -> None:
    """Decodes batch k + 1 while batch k is copied to the host (pinned, non-blocking) and written on a
    background thread. A batch that fails to decode or to write fails alone and the others still run,
    except when the output folder can take no more (full, read-only): then the run stops."""
    stop: str | None = None

    def account(outcome: Outcome) -> None:
        nonlocal stop
        batch, _ = outcome.job
        if outcome.error is not None:  # e.g. disk full
            _say(f"writing {', '.join(it.name for it in batch)}: {type(outcome.error).__name__}: "
                 f"{_first_line(outcome.error)}")
            summary.failures += [it.name for it in batch]
            if stop is None:
                stop = _folder_problem(out_dir, outcome.error, needed=sum(it.latents.shape[0] for it in batch) * 2
                                       * fast.hop_length * fast.decoder.channels)
            return
        seconds = len(batch) * batch[0].latents.shape[0] / frame_rate
        summary.decoded += len(batch)
        summary.audio_seconds += seconds
        bar.update(min(seconds, bar.total - bar.n))  # no overshoot from float rounding

    rest: list[str] = []
    with WriteQueue(write, depth=2) as writer:
        for number, batch in enumerate(batches):
            if stop is not None:  # every later write would fail too
                rest = [it.name for b in batches[number:] for it in b]
                summary.failures += rest
                break
            names = ", ".join(it.name for it in batch)
            try:
                audio = decode(batch)
                writer.put((batch, HostCopy(audio)))
            except Exception as exc:  # e.g. out of memory: those items fail, the others still run
                if is_out_of_memory(exc):
                    items = f"{len(batch)} item{'s' if len(batch) > 1 else ''}"
                    _say(f"decoding {names}: out of memory with {items} of {batch[0].latents.shape[0]} "
                         f"frames (--batch-size {batch_size}) on {device}: rerun with a smaller --batch-size, "
                         f"or --chunk-frames to decode in chunks")
                    if device.type == "cuda":
                        torch.cuda.empty_cache()  # give the next batches the memory back
                else:
                    _say(f"decoding {names}: {type(exc).__name__}: {_first_line(exc)}")
                summary.failures += [it.name for it in batch]
            for outcome in writer.done():
                account(outcome)
        for outcome in writer.close():
            account(outcome)
    if stop is not None:
        _say(f"stopping: {out_dir} cannot take more output ({stop}); {len(rest)} items not decoded; the files "
             f"written so far are whole, and a rerun decodes only what is missing")


# --------------------------------------------------------------------------------------------------
# demo


# Warm calls the demo times: at least the first number, at most the second, stopping once they took DEMO_SECONDS.
DEMO_CALLS = (3, 5)
DEMO_SECONDS = 5.0


def cmd_demo(args) -> int:
    device = _device(args.device)
    decoder = build_decoder(args.checkpoint, device, quiet=True)
    if args.checkpoint is None:
        print("weights: RANDOM (no --checkpoint given), EnCodec 32 kHz architecture: the audio is noise, "
              "the timing is real")
    else:
        print(f"weights: {args.checkpoint}")
    frames = max(1, round(args.seconds * decoder.config.frame_rate))
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(args.batch_size, frames, decoder.dimension, generator=gen).to(device)
    print(f"latents: seeded N(0, 1) example, [{args.batch_size}, {frames}, {decoder.dimension}] "
          f"(JASCO's latents are normalised to about N(0, 1))")
    # No background build while the calls are timed: on a small machine it takes the cores the calls are
    # measured on. A missing artifact is built once the timing is done.
    fast = LatentDecoder(decoder, **_backend(args), dtype=_dtype(args),
                         chunk_frames=DEFAULT_CHUNK_FRAMES, recurrent_dtype=_recurrent_dtype(args),
                         background_build=False)
    if fast.backend == "inductor":
        print("first call: compiling with torch.compile (seconds to tens of seconds) ...", flush=True)
    sync = {"cuda": torch.cuda.synchronize, "mps": lambda: torch.mps.synchronize()}.get(device.type, lambda: None)

    def timed() -> tuple[float, torch.Tensor]:
        t0 = time.perf_counter()
        audio = fast(latents)
        sync()
        return time.perf_counter() - t0, audio

    def artifact_status() -> dict:
        return fast.artifact_status() if fast.backend == "aot" else {}

    first, audio = timed()
    warm: list[float] = []
    started = time.perf_counter()
    while len(warm) < DEMO_CALLS[1] and not (len(warm) >= DEMO_CALLS[0]
                                             and time.perf_counter() - started > DEMO_SECONDS):
        before = artifact_status()
        seconds, audio = timed()
        if artifact_status() == before:
            warm.append(seconds)
        else:  # another process published an artifact and this call loaded it: time the new path afresh
            warm, started = [], time.perf_counter()  # (artifacts, once loaded, stay: this ends)
    steady = statistics.median(warm)
    audio_seconds = args.batch_size * frames / decoder.config.frame_rate
    out_dir = Path(args.out_dir)
    paths = write_batch(audio, [str(out_dir / f"demo_{i}") for i in range(args.batch_size)], fast.sample_rate,
                        format=args.format, strategy=args.strategy, mp3_rate=_mp3_rate(args.mp3_rate, fast.sample_rate),
                        make_parent_dir=True)
    missed = fast.backend == "aot" and bool(fast.artifact_status()) and not fast.artifacts_loaded
    if fast.backend == "aot":
        mode = ("ahead-of-time compiled decoder from the cache" if fast.artifacts_loaded
                else "eager: no ahead-of-time decoder cached yet" if missed
                else "eager: outside the ahead-of-time decoder's bounds")
        first_why = "includes loading the compiled decoder" if fast.artifacts_loaded else "includes one-time set-up"
    elif fast.backend == "inductor":
        mode, first_why = "torch.compile", "includes compiling with torch.compile"
    else:
        mode, first_why = "eager (--backend eager)", "includes one-time set-up"
    recurrent = f", {str(fast.recurrent_dtype)[6:]} recurrent" if fast.recurrent_dtype is not None else ""
    print(f"decoded {args.batch_size} x {audio_seconds / args.batch_size:g} s ({frames} frames, "
          f"{str(fast.dtype)[6:]}{recurrent}{' (auto)' if args.dtype == 'auto' else ''}, {device}), {mode}:")
    print(f"  steady state {steady:.3f} s per call, median of {len(warm)} ({min(warm):.3f}-{max(warm):.3f}): "
          f"real-time factor {audio_seconds / steady:.1f}x ({audio_seconds:g} audio s / {steady:.3f} wall s)")
    print(f"  first call {first:.2f} s, {first / steady:.1f}x the steady state ({first_why})")
    for p in paths:
        print(f"  wrote {p}")
    if missed:
        print(_demo_build(fast), flush=True)
    return 0


def _demo_build(fast: LatentDecoder) -> str:
    """Starts the build of the artifacts the demo missed, now that its timing is done; what to tell the user."""
    from jasco_fast import artifacts

    folder = artifacts.cache_dir() / "aot"
    if not artifacts.background_builds_enabled():
        return (f"not building the ahead-of-time decoder (JASCO_FAST_BACKGROUND_BUILD=0): `jasco-fast compile` "
                f"builds it into {folder}, and later runs use it")
    if fast.start_artifact_build() is None:
        return (f"not building the ahead-of-time decoder in the background: an earlier build failed (`jasco-fast "
                f"compile` shows why; `jasco-fast cache clear` clears {folder} to retry)")
    return (f"building the ahead-of-time decoder into {folder} in a low-priority background process (a few "
            f"minutes; JASCO_FAST_BACKGROUND_BUILD=0 turns this off, `jasco-fast compile` builds it in the "
            f"foreground): runs after it finishes use the compiled decoder")


# --------------------------------------------------------------------------------------------------
# compile, cache


def cmd_compile(args) -> int:
    from jasco_fast import artifacts

    device = _device(args.device)
    decoder = build_decoder(args.checkpoint, device, quiet=True)
    try:
        fast = LatentDecoder(decoder, args.mean, args.std, backend="eager", dtype=_dtype(args),
                             chunk_frames=args.chunk_frames, recurrent_dtype=_recurrent_dtype(args))
    except ValueError as exc:
        raise UsageError(f"--chunk-frames: {exc}") from None
    recipes = fast.aot_recipes()
    print(f"building the ahead-of-time decoders for {recipes[0].device}, {str(fast.dtype)[6:]} (architecture of "
          f"{args.checkpoint or 'EnCodec 32 kHz'}; every checkpoint of it shares them): one-pass"
          + (f" and the three chunk steps of {fast.chunk_frames}-frame chunks" if len(recipes) > 1 else "")
          + " ...", flush=True)
    start = time.perf_counter()
    for recipe in recipes:
        try:
            path = artifacts.build(recipe, force=args.force)
        except artifacts.ArtifactError as exc:
            raise UsageError(_first_line(exc)) from None
        print(f"  {path.name} ({time.perf_counter() - start:.1f} s)", flush=True)
    aot = LatentDecoder(decoder, args.mean, args.std, backend="aot", dtype=_dtype(args),
                        chunk_frames=args.chunk_frames, background_build=False, recurrent_dtype=_recurrent_dtype(args))
    status = aot.load_artifacts()  # loads (and validates) them as a later process will
    bad = {k: v for k, v in status.items() if not v.startswith("loaded")}
    if bad:
        raise UsageError(f"built but not loadable: {bad}")
    print(f"ready in {time.perf_counter() - start:.1f} s: {len(status)} artifacts in {artifacts.cache_dir() / 'aot'}")
    return 0


def cmd_cache(args) -> int:
    from jasco_fast import artifacts

    folder = artifacts.cache_dir()
    if args.action == "dir":
        print(folder)
    elif args.action == "list":
        found = artifacts.entries()
        for m in found:
            material = m.get("material", {})
            print(f"{m.get('key')}  {m.get('size', 0) / 1e6:.1f} MB  torch {material.get('torch')}  "
                  f"{material.get('machine')}  built {m.get('built_at')}")
        print(f"{len(found)} artifacts in {folder / 'aot'}")
    else:
        print(f"removed {artifacts.clear()} files from {folder / 'aot'}")
    return 0


# --------------------------------------------------------------------------------------------------
# bench

def benchmark_scripts() -> dict[str, Path]:
    """Benchmark name -> script: ``benchmarks/bench_<name>.py`` of the source checkout this package runs from.

    The benchmarks are scripts of the repository (they write their results into ``benchmarks/results/``
    beside them), not part of the installed package: an install from a wheel has none, and says so.
    """
    import jasco_fast

    root = Path(jasco_fast.__file__).resolve().parent.parent
    folder = root / "benchmarks"
    try:
        is_checkout = 'name = "jasco_fast"' in (root / "pyproject.toml").read_text()
    except OSError:
        is_checkout = False
    scripts = {p.stem[len("bench_"):]: p for p in sorted(folder.glob("bench_*.py"))} if is_checkout else {}
    if not scripts:
        raise UsageError(f"`jasco-fast bench` runs the benchmark scripts of a source checkout (benchmarks/ next to "
                         f"the jasco_fast folder), and this jasco_fast ({Path(jasco_fast.__file__).parent}) was not "
                         f"installed from one: clone the repository, `pip install --no-build-isolation -e .` there, "
                         f"then run `jasco-fast bench` (or `make bench`)")
    return scripts


def cmd_bench(args) -> int:
    scripts = benchmark_scripts()
    unknown = sorted(set(args.which) - set(scripts))
    if unknown:
        raise UsageError(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(scripts)}")
    environment = dict(os.environ)
    try:
        for name in args.which or list(scripts):
            # No background artifact build may compete with the timed calls: a benchmark that needs the
            # artifacts builds them in the foreground first (benchmarks/_common.py ready_decoder). Each starts
            # from the same environment (bench_cold_start points the cache at a folder it then deletes).
            os.environ.clear()
            os.environ.update(environment, JASCO_FAST_BACKGROUND_BUILD="0")
            spec = importlib.util.spec_from_file_location(f"jasco_fast_bench_{name}", scripts[name])
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            module.main(["--device", args.device] + (["--quick"] if args.quick else [])
                        + (["--note", args.note] if args.note else []))
            print()
    finally:
        os.environ.clear()
        os.environ.update(environment)
    return 0


# --------------------------------------------------------------------------------------------------
# info


def cmd_info(args) -> int:
    import json

    from jasco_fast import info

    report = info.collect()
    print(json.dumps(report, indent=2) if args.json else info.render(report))
    return 0


# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jasco-fast", description="Decode JASCO latents to audio, fast.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("decode", help="decode latent files (.pt/.npy/.safetensors, [T, D] or [B, T, D]) to audio "
                                      "files; under torchrun the files are sharded across processes")
    p.description = ("Decode latent files to one audio file per item: <stem>.<format> for a [T, D] file, "
                     "<stem>_<i>.<format> for each item of a [B, T, D] file. Files that cannot be read are reported "
                     "(exit code 1) and the others still finish. Several processes: torchrun --nproc-per-node N "
                     "-m jasco_fast decode ... (the files are shared out across the processes).")
    p.add_argument("latents", nargs="+", help=".pt / .npy / .safetensors files holding [T, D] or [B, T, D] latents "
                                              "(a dict or safetensors file: its one tensor, or its 'latents' key), "
                                              "or integer EnCodec codes [K, T] or [B, K, T] (MusicGen / AudioGen "
                                              "tokens; 'codes' key), decoded through the checkpoint's quantizer")
    p.add_argument("--out-dir", required=True, help="folder for the audio files (one per item)")
    _add_decoding_options(p)
    p.add_argument("--batch-size", type=_positive_int, default=8,
                   help="items of EQUAL length T decoded together (default 8); items are never padded to a "
                        "common length, since padding would change the end of their audio")
    p.add_argument("--mean", type=float, default=JASCO_LATENT_MEAN, help=f"latent mean (default {JASCO_LATENT_MEAN})")
    p.add_argument("--std", type=float, default=JASCO_LATENT_STD, help=f"latent std (default {JASCO_LATENT_STD})")
    p.add_argument("--overwrite", action="store_true", help="rewrite outputs that already exist")
    p.add_argument("--chunk-frames", type=_positive_int, default=DEFAULT_CHUNK_FRAMES,
                   help=f"latent frames per chunk (default {DEFAULT_CHUNK_FRAMES}): longer items are decoded chunk by "
                        f"chunk, exactly, in memory that does not grow with their length (only their audio is "
                        f"kept, for normalisation)")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("demo", help="decode example latents on the built-in default and print the timing")
    p.add_argument("--out-dir", default="jasco_fast_demo")
    _add_decoding_options(p)
    p.add_argument("--seconds", type=_positive_float, default=10.0, help="audio seconds per item (default 10)")
    p.add_argument("--batch-size", type=_positive_int, default=1)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("compile", help="build the ahead-of-time compiled decoder for a checkpoint's architecture, "
                                       "device and dtype into the cache (later processes load it at once)")
    p.add_argument("--checkpoint", help="EnCodec checkpoint whose architecture to compile; default EnCodec 32 kHz")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=[*DTYPES, "auto"], help=DTYPE_HELP)
    p.add_argument("--recurrent-dtype", choices=["int8", "bfloat16", "auto"], help=RECURRENT_HELP)
    p.add_argument("--mean", type=float, default=JASCO_LATENT_MEAN)
    p.add_argument("--std", type=float, default=JASCO_LATENT_STD)
    p.add_argument("--chunk-frames", type=_positive_int, default=DEFAULT_CHUNK_FRAMES,
                   help="the chunk size the chunk-step decoders are built for (as `decode --chunk-frames`)")
    p.add_argument("--force", action="store_true", help="rebuild even if the cache holds a valid artifact")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("cache", help="the ahead-of-time artifact cache: where it is, what it holds, clear it")
    p.add_argument("action", choices=["dir", "list", "clear"])
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("bench", help="run the benchmarks of a source checkout (benchmarks/bench_*.py), print their "
                                     "tables and write their JSON results")
    p.add_argument("which", nargs="*", help="benchmark names, <name> of benchmarks/bench_<name>.py (default: all)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--note", default=None, help="recorded in each results JSON (e.g. what else ran on the machine)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("info", help="what this install runs: torch build, compiled kernels per device, CPU fast "
                                    "path, devices, cache folder, audio formats, versions (start here when "
                                    "troubleshooting)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_info)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


class Terminated(BaseException):
    """SIGTERM, turned into an exception so that ``finally`` blocks clean up (a BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` swallows it)."""


def _terminate(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
    raise Terminated()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # the CLI owns its process: freed activations stay mapped for the next decode (jasco_fast.memory)
    reuse_freed_memory()
    # SIGTERM's default action kills without running any cleanup; as an exception, temporaries are removed
    # and writes in flight finish (exit status 128 + 15, as if killed by the signal; Ctrl-C: 128 + 2).
    in_main_thread = threading.current_thread() is threading.main_thread()  # signal.signal works only there
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    rerun = "; outputs written so far are whole, a rerun decodes only what is missing" \
        if args.command == "decode" else ""
    try:
        return args.func(args)
    except UsageError as exc:
        _say(str(exc))
        return 2
    except Terminated:
        _say(f"terminated (SIGTERM){rerun}")
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        _say(f"interrupted{rerun}")
        return 128 + signal.SIGINT
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
