"""The ``jasco-fast`` command line (also ``python -m jasco_fast``): decode, demo, compile, cache, bench, info.

``decode`` turns latent files into audio files; under ``torchrun`` it shards the input files across
ranks (gloo on CPU, NCCL on GPU), each file decoded by exactly one rank, and rank 0 prints a summary
gathered from all of them. This module holds the commands and their options; the files are read by
jasco_fast/io.py and decoded by jasco_fast/decode_loop.py.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from jasco_fast.audio import FORMATS, STRATEGIES, mp3_rate_range, write_batch
from jasco_fast.backends import BACKENDS
from jasco_fast.decode_loop import DecodeLoop, Shard, Summary, stem_clashes
from jasco_fast.decoder import DecoderConfig, SEANetDecoder
from jasco_fast.errors import first_line
from jasco_fast.loading import CheckpointError, load_decoder
from jasco_fast.memory import reuse_freed_memory
from jasco_fast.ops import JASCO_LATENT_MEAN, JASCO_LATENT_STD, recurrent_format_supported
from jasco_fast.pipeline import DEFAULT_CHUNK_FRAMES, DTYPES, CodeDecoder, LatentDecoder
from jasco_fast.quantizer import Quantizer, load_quantizer


class UsageError(Exception):
    """A problem with the command as a whole (exit code 2), as opposed to one bad input file."""


def _say(message: str) -> None:
    print(f"jasco-fast: {message}", file=sys.stderr, flush=True)


def build_quantizer(checkpoint: str | None, device: torch.device, dimension: int) -> Quantizer:
    """The checkpoint's RVQ codebooks; without a checkpoint, random ones shaped like EnCodec 32 kHz's."""
    if checkpoint is None:
        gen = torch.Generator().manual_seed(0)
        return Quantizer(torch.randn(4, 2048, dimension, generator=gen)).to(device)
    return load_quantizer(checkpoint, device=device)


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
            _say(
                "no --checkpoint: the EnCodec 32 kHz architecture with RANDOM weights, so the audio is noise "
                "(pass --checkpoint for real audio)"
            )
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
        raise UsageError(
            f"--recurrent-dtype {args.recurrent_dtype} needs --dtype float32 (or bfloat16), got --dtype {args.dtype}"
        )
    return recurrent


def _conv_format(args) -> str | None:
    if args.conv_format == "int12" and (args.dtype not in ("float32", "auto") or args.device != "cpu"):
        raise UsageError(
            f"--conv-format int12 needs --dtype float32 on the CPU, got --dtype {args.dtype} on {args.device}"
        )
    return args.conv_format


DTYPE_HELP = (
    "decoder compute dtype (default float32, the exact mode); auto: the fastest mode measured on this "
    "device and CPU class at 40 dB SNR or more, recurrent format included (`jasco-fast info` shows it)"
)
RECURRENT_HELP = (
    "stream the LSTM's recurrent matrices as int8 (a float32 scale per row) or bfloat16 (with --dtype "
    "float32); state and arithmetic stay float32; auto: the automatic mode's format for --dtype"
)

CONV_FORMAT_HELP = (
    "int12 (float32 on the CPU): the residual blocks and transposed convolutions multiply 12-bit weights by "
    "12-bit inputs into int32 sums; auto: the automatic mode's format for --dtype"
)


def _add_decoding_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        help="EnCodec checkpoint: audiocraft compression_state_dict.bin (or its folder), "
        "or a transformers EnCodec folder; default: random weights",
    )
    p.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda", "mps"],
        help="cuda also means AMD GPUs on a ROCm torch; `jasco-fast info` shows each device's path",
    )
    p.add_argument("--dtype", default="float32", choices=[*DTYPES, "auto"], help=DTYPE_HELP)
    p.add_argument("--recurrent-dtype", choices=["int8", "bfloat16", "auto"], help=RECURRENT_HELP)
    p.add_argument("--conv-format", choices=["int12", "auto"], help=CONV_FORMAT_HELP)
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="how the decoder runs: eager; inductor (torch.compile in this process); aot (the "
        "ahead-of-time compiled decoders in the cache: `jasco-fast compile`, or built in the "
        "background on a miss while the first calls run eagerly; codes files take inductor). "
        "Default: aot on the CPU, inductor elsewhere",
    )
    p.add_argument(
        "--mode",
        default=None,
        help="a torch.compile mode (e.g. reduce-overhead for CUDA graphs); with --backend inductor",
    )
    p.add_argument("--format", default="wav", choices=FORMATS)
    p.add_argument(
        "--strategy", default="peak", choices=[s for s in STRATEGIES if s], help="loudness normalisation (audio_write)"
    )
    p.add_argument(
        "--mp3-rate",
        type=_positive_int,
        default=None,
        help="MP3 bitrate in kbps (default: the highest the sample rate's MPEG version allows, 320 at 32 kHz)",
    )


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


def cmd_decode(args) -> int:
    shard = Shard.from_environment()
    rank, world = shard.rank, shard.world
    device = _device(args.device)  # before init: no CUDA is the same usage error on every rank, nobody waits
    shard.start(device)
    usage_error = False
    try:
        summary, wall = _decode_shard(args, device, shard)
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
    parts = shard.gather((summary, wall))  # every rank learns whether any rank failed
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
        print(
            f"decoded {total.decoded} items ({total.audio_seconds:.1f} audio s) in {wall:.2f} wall s{where}: "
            f"real-time factor {rtf:.1f}x; {total.skipped} skipped (output exists, --overwrite rewrites); "
            f"{len(total.failures)} failed",
            flush=True,
        )
    return 2 if usage_error else (1 if total.failures else 0)


def _decode_shard(args, device: torch.device, shard: Shard) -> tuple[Summary, float]:
    """This rank's share of the files, decoded; (its summary, wall seconds)."""
    out_dir = Path(args.out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {out_dir}: {exc.strerror or exc}") from None
    all_files = sorted({str(Path(p)) for p in args.latents})  # the same list on every rank
    decoder = build_decoder(args.checkpoint, device, quiet=shard.rank != 0)
    try:  # long items are decoded chunk by chunk: only their audio is held, never the activations
        fast = LatentDecoder(
            decoder,
            args.mean,
            args.std,
            **_backend(args),
            dtype=_dtype(args),
            chunk_frames=args.chunk_frames,
            recurrent_dtype=_recurrent_dtype(args),
            conv_format=_conv_format(args),
        )
    except ValueError as exc:
        raise UsageError(f"--chunk-frames: {exc}") from None

    def code_decoder() -> CodeDecoder:  # built at the first codes file
        quantizer = build_quantizer(args.checkpoint, device, decoder.dimension)
        # no artifact recipe covers codes: "aot" (the CPU's default) compiles them with inductor
        backend = {**_backend(args), "backend": None if args.backend == "aot" else args.backend}
        return CodeDecoder(
            decoder,
            quantizer,
            **backend,
            dtype=_dtype(args),
            chunk_frames=args.chunk_frames,
            recurrent_dtype=_recurrent_dtype(args),
            conv_format=_conv_format(args),
        )

    loop = DecodeLoop(
        fast,
        code_decoder,
        out_dir,
        batch_size=args.batch_size,
        format=args.format,
        strategy=args.strategy,
        mp3_rate=_mp3_rate(args.mp3_rate, fast.sample_rate),
        overwrite=args.overwrite,
        device=device,
        report=_say,
        progress=shard.rank == 0,
        rank=shard.rank,
    )
    start = time.perf_counter()
    summary = loop.run(shard.files(all_files), stem_clashes(all_files))
    return summary, time.perf_counter() - start


# --------------------------------------------------------------------------------------------------
# demo


# Warm calls the demo times: at least the first number, at most the second, stopping once they took DEMO_SECONDS.
DEMO_CALLS = (3, 5)
DEMO_SECONDS = 5.0


def cmd_demo(args) -> int:
    device = _device(args.device)
    decoder = build_decoder(args.checkpoint, device, quiet=True)
    if args.checkpoint is None:
        print(
            "weights: RANDOM (no --checkpoint given), EnCodec 32 kHz architecture: the audio is noise, "
            "the timing is real"
        )
    else:
        print(f"weights: {args.checkpoint}")
    frames = max(1, round(args.seconds * decoder.config.frame_rate))
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(args.batch_size, frames, decoder.dimension, generator=gen).to(device)
    print(
        f"latents: seeded N(0, 1) example, [{args.batch_size}, {frames}, {decoder.dimension}] "
        f"(JASCO's latents are normalised to about N(0, 1))"
    )
    # No background build while the calls are timed: on a small machine it takes the cores the calls are
    # measured on. A missing artifact is built once the timing is done.
    fast = LatentDecoder(
        decoder,
        **_backend(args),
        dtype=_dtype(args),
        chunk_frames=DEFAULT_CHUNK_FRAMES,
        recurrent_dtype=_recurrent_dtype(args),
        conv_format=_conv_format(args),
        background_build=False,
    )
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
    while len(warm) < DEMO_CALLS[1] and not (
        len(warm) >= DEMO_CALLS[0] and time.perf_counter() - started > DEMO_SECONDS
    ):
        before = artifact_status()
        seconds, audio = timed()
        if artifact_status() == before:
            warm.append(seconds)
        else:  # another process published an artifact and this call loaded it: time the new path afresh
            warm, started = [], time.perf_counter()  # (artifacts, once loaded, stay: this ends)
    steady = statistics.median(warm)
    audio_seconds = args.batch_size * frames / decoder.config.frame_rate
    out_dir = Path(args.out_dir)
    paths = write_batch(
        audio,
        [str(out_dir / f"demo_{i}") for i in range(args.batch_size)],
        fast.sample_rate,
        format=args.format,
        strategy=args.strategy,
        mp3_rate=_mp3_rate(args.mp3_rate, fast.sample_rate),
        make_parent_dir=True,
    )
    missed = fast.backend == "aot" and bool(fast.artifact_status()) and not fast.artifacts_loaded
    if fast.backend == "aot":
        mode = (
            "ahead-of-time compiled decoder from the cache"
            if fast.artifacts_loaded
            else "eager: no ahead-of-time decoder cached yet"
            if missed
            else "eager: outside the ahead-of-time decoder's bounds"
        )
        first_why = "includes loading the compiled decoder" if fast.artifacts_loaded else "includes one-time set-up"
    elif fast.backend == "inductor":
        mode, first_why = "torch.compile", "includes compiling with torch.compile"
    else:
        mode, first_why = "eager (--backend eager)", "includes one-time set-up"
    recurrent = f", {str(fast.recurrent_dtype)[6:]} recurrent" if fast.recurrent_dtype is not None else ""
    recurrent += f", {fast.conv_format} convolutions" if fast.conv_format is not None else ""
    print(
        f"decoded {args.batch_size} x {audio_seconds / args.batch_size:g} s ({frames} frames, "
        f"{str(fast.dtype)[6:]}{recurrent}{' (auto)' if args.dtype == 'auto' else ''}, {device}), {mode}:"
    )
    print(
        f"  steady state {steady:.3f} s per call, median of {len(warm)} ({min(warm):.3f}-{max(warm):.3f}): "
        f"real-time factor {audio_seconds / steady:.1f}x ({audio_seconds:g} audio s / {steady:.3f} wall s)"
    )
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
        return (
            f"not building the ahead-of-time decoder (JASCO_FAST_BACKGROUND_BUILD=0): `jasco-fast compile` "
            f"builds it into {folder}, and later runs use it"
        )
    if fast.start_artifact_build() is None:
        return (
            f"not building the ahead-of-time decoder in the background: an earlier build failed (`jasco-fast "
            f"compile` shows why; `jasco-fast cache clear` clears {folder} to retry)"
        )
    return (
        f"building the ahead-of-time decoder into {folder} in a low-priority background process (a few "
        f"minutes; JASCO_FAST_BACKGROUND_BUILD=0 turns this off, `jasco-fast compile` builds it in the "
        f"foreground): runs after it finishes use the compiled decoder"
    )


# --------------------------------------------------------------------------------------------------
# compile, cache


def cmd_compile(args) -> int:
    from jasco_fast import artifacts

    device = _device(args.device)
    decoder = build_decoder(args.checkpoint, device, quiet=True)
    try:
        fast = LatentDecoder(
            decoder,
            args.mean,
            args.std,
            backend="eager",
            dtype=_dtype(args),
            chunk_frames=args.chunk_frames,
            recurrent_dtype=_recurrent_dtype(args),
            conv_format=_conv_format(args),
        )
    except ValueError as exc:
        raise UsageError(f"--chunk-frames: {exc}") from None
    recipes = fast.aot_recipes()
    print(
        f"building the ahead-of-time decoders for {recipes[0].device}, {str(fast.dtype)[6:]} (architecture of "
        f"{args.checkpoint or 'EnCodec 32 kHz'}; every checkpoint of it shares them): one-pass"
        + (f" and the three chunk steps of {fast.chunk_frames}-frame chunks" if len(recipes) > 1 else "")
        + " ...",
        flush=True,
    )
    start = time.perf_counter()
    for recipe in recipes:
        try:
            path = artifacts.build(recipe, force=args.force)
        except artifacts.ArtifactError as exc:
            raise UsageError(first_line(exc)) from None
        print(f"  {path.name} ({time.perf_counter() - start:.1f} s)", flush=True)
    aot = LatentDecoder(
        decoder,
        args.mean,
        args.std,
        backend="aot",
        dtype=_dtype(args),
        chunk_frames=args.chunk_frames,
        background_build=False,
        recurrent_dtype=_recurrent_dtype(args),
        conv_format=_conv_format(args),
    )
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
            print(
                f"{m.get('key')}  {m.get('size', 0) / 1e6:.1f} MB  torch {material.get('torch')}  "
                f"{material.get('machine')}  built {m.get('built_at')}"
            )
        print(f"{len(found)} artifacts in {folder / 'aot'}")
    else:
        print(f"removed {artifacts.clear()} files from {folder / 'aot'}")
    return 0


# --------------------------------------------------------------------------------------------------
# bench

# `jasco-fast bench`'s benchmarks, in the order it runs them: <name> is the script benchmarks/bench_<name>.py.
BENCHMARKS = (
    "aot_weights",
    "avx2_integer",
    "codes",
    "cold_start",
    "decode",
    "decode_throughput",
    "denorm_transpose",
    "fallback",
    "fidelity",
    "long_audio",
    "lstm",
    "stages",
)


def benchmark_scripts() -> dict[str, Path]:
    """Benchmark name -> script, for each of :data:`BENCHMARKS`: ``benchmarks/bench_<name>.py`` of the source
    checkout this package runs from.

    The benchmarks are scripts of the repository (they write their results into ``benchmarks/results/``
    beside them), not part of the installed package: an install from a wheel has none, and says so.
    """
    import jasco_fast

    folder = Path(jasco_fast.__file__).resolve().parent.parent / "benchmarks"
    scripts = {name: folder / f"bench_{name}.py" for name in BENCHMARKS}
    if not (folder / "_common.py").is_file() or not all(p.is_file() for p in scripts.values()):
        raise UsageError(
            f"`jasco-fast bench` runs the benchmark scripts of a source checkout (benchmarks/ next to "
            f"the jasco_fast folder), and this jasco_fast ({Path(jasco_fast.__file__).parent}) was not "
            f"installed from one: clone the repository, `pip install --no-build-isolation -e .` there, "
            f"then run `jasco-fast bench` (or `make bench`)"
        )
    return scripts


def cmd_bench(args) -> int:
    unknown = sorted(set(args.which) - set(BENCHMARKS))
    if unknown:
        raise UsageError(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(sorted(BENCHMARKS))}")
    scripts = benchmark_scripts()
    # Each script runs as its own process, as `python benchmarks/bench_<name>.py` would, from the same
    # environment, with this jasco_fast first on its path. No background artifact build may compete with the
    # timed calls: a benchmark that needs the artifacts builds them in the foreground first
    # (benchmarks/_common.py ready_decoder).
    root = str(scripts[BENCHMARKS[0]].parent.parent)
    env = {
        **os.environ,
        "JASCO_FAST_BACKGROUND_BUILD": "0",
        "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
    }
    for name in args.which or BENCHMARKS:
        command = (
            [sys.executable, str(scripts[name]), "--device", args.device]
            + (["--quick"] if args.quick else [])
            + (["--note", args.note] if args.note else [])
        )
        status = subprocess.run(command, env=env).returncode
        if status != 0:
            _say(f"benchmark {name} failed (exit status {status}): {' '.join(command)}")
            return 1
        print(flush=True)
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

    p = sub.add_parser(
        "decode",
        help="decode latent files (.pt/.npy/.safetensors, [T, D] or [B, T, D]) to audio "
        "files; under torchrun the files are sharded across processes",
    )
    p.description = (
        "Decode latent files to one audio file per item: <stem>.<format> for a [T, D] file, "
        "<stem>_<i>.<format> for each item of a [B, T, D] file. Files that cannot be read are reported "
        "(exit code 1) and the others still finish. Several processes: torchrun --nproc-per-node N "
        "-m jasco_fast decode ... (the files are shared out across the processes)."
    )
    p.add_argument(
        "latents",
        nargs="+",
        help=".pt / .npy / .safetensors files holding [T, D] or [B, T, D] latents "
        "(a dict or safetensors file: its one tensor, or its 'latents' key), "
        "or integer EnCodec codes [K, T] or [B, K, T] (MusicGen / AudioGen "
        "tokens; 'codes' key), decoded through the checkpoint's quantizer",
    )
    p.add_argument("--out-dir", required=True, help="folder for the audio files (one per item)")
    _add_decoding_options(p)
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=8,
        help="items of EQUAL length T decoded together (default 8); items are never padded to a "
        "common length, since padding would change the end of their audio",
    )
    p.add_argument("--mean", type=float, default=JASCO_LATENT_MEAN, help=f"latent mean (default {JASCO_LATENT_MEAN})")
    p.add_argument("--std", type=float, default=JASCO_LATENT_STD, help=f"latent std (default {JASCO_LATENT_STD})")
    p.add_argument("--overwrite", action="store_true", help="rewrite outputs that already exist")
    p.add_argument(
        "--chunk-frames",
        type=_positive_int,
        default=DEFAULT_CHUNK_FRAMES,
        help=f"latent frames per chunk (default {DEFAULT_CHUNK_FRAMES}): longer items are decoded chunk by "
        f"chunk, exactly, in memory that does not grow with their length (only their audio is "
        f"kept, for normalisation)",
    )
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("demo", help="decode example latents on the built-in default and print the timing")
    p.add_argument("--out-dir", default="jasco_fast_demo")
    _add_decoding_options(p)
    p.add_argument("--seconds", type=_positive_float, default=10.0, help="audio seconds per item (default 10)")
    p.add_argument("--batch-size", type=_positive_int, default=1)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "compile",
        help="build the ahead-of-time compiled decoder for a checkpoint's architecture, "
        "device and dtype into the cache (later processes load it at once)",
    )
    p.add_argument("--checkpoint", help="EnCodec checkpoint whose architecture to compile; default EnCodec 32 kHz")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=[*DTYPES, "auto"], help=DTYPE_HELP)
    p.add_argument("--recurrent-dtype", choices=["int8", "bfloat16", "auto"], help=RECURRENT_HELP)
    p.add_argument("--conv-format", choices=["int12", "auto"], help=CONV_FORMAT_HELP)
    p.add_argument("--mean", type=float, default=JASCO_LATENT_MEAN)
    p.add_argument("--std", type=float, default=JASCO_LATENT_STD)
    p.add_argument(
        "--chunk-frames",
        type=_positive_int,
        default=DEFAULT_CHUNK_FRAMES,
        help="the chunk size the chunk-step decoders are built for (as `decode --chunk-frames`)",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if the cache holds a valid artifact")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("cache", help="the ahead-of-time artifact cache: where it is, what it holds, clear it")
    p.add_argument("action", choices=["dir", "list", "clear"])
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser(
        "bench",
        help="run the benchmarks of a source checkout (benchmarks/bench_*.py), print their "
        "tables and write their JSON results",
    )
    p.add_argument(
        "which",
        nargs="*",
        help=f"benchmark names (default: all): {', '.join(BENCHMARKS)}, each benchmarks/bench_<name>.py",
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--note", default=None, help="recorded in each results JSON (e.g. what else ran on the machine)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "info",
        help="what this install runs: torch build, compiled kernels per device, CPU fast "
        "path, devices, cache folder, audio formats, versions (start here when "
        "troubleshooting)",
    )
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
    rerun = (
        "; outputs written so far are whole, a rerun decodes only what is missing" if args.command == "decode" else ""
    )
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
