"""Long audio: peak memory against length, the throughput cost of chunking, and the CLI on a 600 s file.

    python benchmarks/bench_long_audio.py [--quick] [--parts memory,throughput,chunks,cli] [--threads N]
        [--lengths 10,60,300,3600] [--batches 1,8] [--throughput-cases 1x10,1x300,8x10] [--out PATH]

* memory: whole-process peak RSS (``ru_maxrss`` of a fresh subprocess per measurement, from ``os.wait4``)
  of one decode of B x seconds of audio, one pass (``LatentDecoder(..., chunk_frames=None)``) against
  the default chunked path, eager (compiling in every subprocess would dominate the run on 2 cores; the
  activations, which are what grows, are the same). "base" is the same subprocess without the decode
  (torch, the model, the latents).
* throughput: compiled, one process, interleaved rounds of one pass and chunked decoding of the same
  latents; medians, spread, and the chunked / one-pass time ratio per round.
* chunks: chunked throughput per chunk size (compiled), to pick ``DEFAULT_CHUNK_FRAMES``.
* cli: ``jasco-fast decode`` of a 600 s latent file to FLAC (default options, compiled): whole-process peak RSS.

EnCodec 32 kHz with random weights (cost and memory do not depend on them), float32, CPU.
Writes benchmarks/results/long_audio_cpu.json. Cases that cannot fit or would take too long are listed
with the reason (MEMORY_SKIPS). On a machine shared with other jobs, ``--threads 1`` avoids OpenMP
threads waiting on each other (which made calls 10-100x slower on a 2-core VM at load 12+).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import device_name, write_result

import jasco_fast
from jasco_fast import DecoderConfig, LatentDecoder, SEANetDecoder
from jasco_fast.pipeline import DEFAULT_CHUNK_FRAMES

FRAME_RATE = 50  # EnCodec 32 kHz: 640 samples per latent frame

# (B, seconds) -> why the case is not measured
MEMORY_SKIPS = {
    ("full", 1, 3600): "one pass over 1 h needs ~110 GB (9.1 GB per 300 s measured): cannot fit in 24 GB",
    (
        "full",
        8,
        60,
    ): "one pass needs ~17 GB (8 x 2.1 GB): does not fit beside the other jobs of the shared 24 GB machine",
    ("full", 8, 300): "one pass needs ~73 GB: cannot fit in 24 GB",
    ("full", 8, 3600): "one pass needs ~870 GB: cannot fit",
    ("chunked", 8, 3600): "8 h of audio takes ~25 min on 2 cores (too long for this run); B = 1 shows the memory "
    "does not grow with length, and B = 8 at 300 s shows the per-item cost",
}


# --------------------------------------------------------------------------------------------------
# memory: one subprocess per measurement


def child_memory(path: str, batch: int, seconds: float, decode: bool) -> None:
    """Runs in the subprocess: build the decoder and latents, optionally decode once, print what it did."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    torch.manual_seed(0)
    decoder = SEANetDecoder(DecoderConfig()).eval()
    fast = LatentDecoder(decoder, backend="eager", chunk_frames=None if path == "full" else DEFAULT_CHUNK_FRAMES)
    latents = torch.randn(batch, int(seconds * FRAME_RATE), decoder.dimension)
    t0 = time.perf_counter()
    if decode:
        audio = fast(latents)
        assert audio.shape[-1] == latents.shape[1] * decoder.hop_length
    print(json.dumps({"decode_s": time.perf_counter() - t0}))


def run_child(cmd: list[str], env=None) -> tuple[int, float, str]:
    """(peak RSS bytes, wall seconds, stdout) of a subprocess, via os.wait4 (the child's own rusage)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return usage.ru_maxrss * 1024, wall, stdout  # Linux reports kilobytes


def measure_memory(cases: list[tuple[str, int, float]], env) -> list[dict]:
    rows = []
    base_cache: dict[tuple[int, float], int] = {}
    for path, batch, seconds in cases:
        key = (path, batch, round(seconds))
        if key in MEMORY_SKIPS:
            rows.append({"path": path, "batch": batch, "seconds": seconds, "skipped": MEMORY_SKIPS[key]})
            print(f"memory {path:8} B={batch} {seconds:>6g} s: skipped ({MEMORY_SKIPS[key]})", flush=True)
            continue
        script = [sys.executable, __file__, "--child-memory", path, str(batch), str(seconds)]
        if (batch, seconds) not in base_cache:
            base_cache[(batch, seconds)] = run_child(script + ["--no-decode"], env)[0]
        peak, wall, out = run_child(script, env)
        decode_s = json.loads(out.strip().splitlines()[-1])["decode_s"]
        base = base_cache[(batch, seconds)]
        rows.append(
            {
                "path": path,
                "batch": batch,
                "seconds": seconds,
                "peak_rss_mb": peak / 2**20,
                "base_rss_mb": base / 2**20,
                "decode_rss_mb": (peak - base) / 2**20,
                "audio_mb": batch * seconds * 32000 * 4 / 2**20,
                "decode_s": decode_s,
            }
        )
        print(
            f"memory {path:8} B={batch} {seconds:>6g} s: peak {peak / 2**20:7.0f} MB (base {base / 2**20:.0f} MB, "
            f"output audio {rows[-1]['audio_mb']:.0f} MB), decode {decode_s:.1f} s",
            flush=True,
        )
    return rows


# --------------------------------------------------------------------------------------------------
# throughput: one process, compiled, interleaved rounds


def measure_throughput(cases: list[tuple[int, float]], rounds: int, chunk_frames: int) -> list[dict]:
    torch.manual_seed(0)
    decoder = SEANetDecoder(DecoderConfig()).eval()
    full = LatentDecoder(decoder, backend="inductor", chunk_frames=None)
    chunked = LatentDecoder(decoder, backend="inductor", chunk_frames=chunk_frames)
    rows = []
    for batch, seconds in cases:
        latents = torch.randn(batch, int(seconds * FRAME_RATE), decoder.dimension)
        a, b = full(latents), chunked(latents)  # compile both (not timed)
        err = ((a - b).abs().max() / a.abs().max()).item()
        times = {"full": [], "chunked": []}
        for r in range(rounds):
            order = ("full", "chunked") if r % 2 == 0 else ("chunked", "full")
            for name in order:
                fn = full if name == "full" else chunked
                t0 = time.perf_counter()
                fn(latents)
                times[name].append(time.perf_counter() - t0)
        ratios = [c / f for c, f in zip(times["chunked"], times["full"])]
        row = {
            "batch": batch,
            "seconds": seconds,
            "chunk_frames": chunk_frames,
            "rounds": rounds,
            "full_s": times["full"],
            "chunked_s": times["chunked"],
            "full_median_s": statistics.median(times["full"]),
            "chunked_median_s": statistics.median(times["chunked"]),
            "time_ratio_chunked_over_full": ratios,
            "time_ratio_median": statistics.median(ratios),
            "throughput_ratio_median": statistics.median(1 / x for x in ratios),
            "max_abs_diff_over_peak": err,
        }
        rows.append(row)
        print(
            f"throughput B={batch} {seconds:g} s: full {row['full_median_s']:.2f} s, chunked "
            f"{row['chunked_median_s']:.2f} s, chunked throughput {row['throughput_ratio_median']:.2f}x full "
            f"(per-round time ratios {', '.join(f'{x:.2f}' for x in ratios)}), max diff {err:.1e} of peak",
            flush=True,
        )
    return rows


def measure_chunk_sizes(sizes: list[int], seconds: float, rounds: int) -> list[dict]:
    torch.manual_seed(0)
    decoder = SEANetDecoder(DecoderConfig()).eval()
    fast = {c: LatentDecoder(decoder, backend="inductor", chunk_frames=c) for c in sizes}
    latents = torch.randn(1, int(seconds * FRAME_RATE), decoder.dimension)
    for c in sizes:
        fast[c](latents)  # compile
    times = {c: [] for c in sizes}
    for r in range(rounds):
        for c in sizes if r % 2 == 0 else sizes[::-1]:
            t0 = time.perf_counter()
            fast[c](latents)
            times[c].append(time.perf_counter() - t0)
    rows = []
    for c in sizes:
        med = statistics.median(times[c])
        rows.append(
            {
                "chunk_frames": c,
                "seconds": seconds,
                "batch": 1,
                "times_s": times[c],
                "median_s": med,
                "real_time_factor": seconds / med,
            }
        )
        print(
            f"chunk size {c:5d} frames: median {med:.2f} s for {seconds:g} s (x{seconds / med:.1f} real time), "
            f"spread {min(times[c]):.2f}-{max(times[c]):.2f} s",
            flush=True,
        )
    return rows


# --------------------------------------------------------------------------------------------------
# cli: jasco-fast decode of a 600 s latent file to FLAC


def measure_cli(seconds: float, env) -> dict:
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "long.npy"
        np.save(path, np.random.default_rng(0).standard_normal((int(seconds * FRAME_RATE), 128), dtype=np.float32))
        cmd = [
            sys.executable,
            "-m",
            "jasco_fast",
            "decode",
            str(path),
            "--out-dir",
            str(Path(tmp) / "out"),
            "--format",
            "flac",
        ]
        peak, wall, out = run_child(cmd, env={**env, "TQDM_DISABLE": "1"})
        written = Path(tmp) / "out" / "long.flac"
        import soundfile

        info = soundfile.info(str(written))
    row = {
        "seconds": seconds,
        "format": "flac",
        "peak_rss_mb": peak / 2**20,
        "wall_s": wall,
        "written_seconds": info.frames / info.samplerate,
        "command": "jasco-fast decode long.npy --out-dir out --format flac",
    }
    print(
        f"cli: jasco-fast decode of {seconds:g} s to FLAC: peak RSS {peak / 2**20:.0f} MB, {wall:.0f} s wall, "
        f"wrote {row['written_seconds']:.1f} s",
        flush=True,
    )
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short lengths only")
    parser.add_argument("--parts", default="memory,throughput,chunks,cli")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunk-sizes", default="128,256,512,1024")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--device", default="cpu", choices=["cpu"], help="CPU only for now")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads here and in the subprocesses (default: torch's default)",
    )
    parser.add_argument("--lengths", default=None, help="memory: comma-separated seconds (default 10,60,300,3600)")
    parser.add_argument("--batches", default="1,8", help="memory: comma-separated batch sizes")
    parser.add_argument(
        "--throughput-cases", default=None, help="throughput: comma-separated BxSECONDS (default 1x10,1x300,8x10)"
    )
    parser.add_argument("--child-memory", nargs=3, metavar=("PATH", "B", "SECONDS"), help=argparse.SUPPRESS)
    parser.add_argument("--no-decode", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_memory:
        path, batch, seconds = args.child_memory
        child_memory(path, int(batch), float(seconds), not args.no_decode)
        return {}
    parts = set(args.parts.split(","))
    if args.threads:
        torch.set_num_threads(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    result = {
        "benchmark": "long_audio",
        "device": device_name("cpu"),
        "torch": torch.__version__,
        "jasco_fast": jasco_fast.__version__,
        "decoder": "EnCodec 32 kHz (random weights), float32",
        "default_chunk_frames": DEFAULT_CHUNK_FRAMES,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "note": "2-core VM shared with other jobs while measured: compare ratios within one run",
        "command": "python benchmarks/bench_long_audio.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if "memory" in parts:
        lengths = (
            [float(x) for x in args.lengths.split(",")]
            if args.lengths
            else ([10, 60] if args.quick else [10, 60, 300, 3600])
        )
        batches = [int(b) for b in args.batches.split(",")]
        cases = [(p, b, s) for b in batches for s in lengths for p in ("full", "chunked")]
        result["memory"] = measure_memory(cases, env)
    if "throughput" in parts:
        cases = (
            [(int(b), float(sec)) for b, sec in (c.split("x") for c in args.throughput_cases.split(","))]
            if args.throughput_cases
            else [(1, 10.0)]
            if args.quick
            else [(1, 10.0), (1, 300.0), (8, 10.0)]
        )
        result["throughput"] = measure_throughput(
            cases, max(1, args.rounds if not args.quick else 2), DEFAULT_CHUNK_FRAMES
        )
    if "chunks" in parts:
        sizes = [int(s) for s in args.chunk_sizes.split(",")]
        result["chunk_sizes"] = measure_chunk_sizes(sizes, 30.0 if args.quick else 60.0, 3)
    if "cli" in parts:
        result["cli"] = measure_cli(60.0 if args.quick else 600.0, env)
    write_result(result, "long_audio", "cpu", args.quick, args.out)
    return result


if __name__ == "__main__":
    main()
