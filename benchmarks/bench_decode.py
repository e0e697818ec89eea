"""Decode benchmark: JASCO's eager path against jasco_fast's LatentDecoder, same weights.

    python benchmarks/bench_decode.py [--device cpu|cuda] [--quick] [--dtype float32|bfloat16|float16]

The eager path is what audiocraft runs: ``latents * std + mean``, ``permute``, the EnCodec decoder in
[B, C, T] layout with weight norm recomputed on every call (``jasco_fast.reference.EagerDecoder``).
The fast path is ``LatentDecoder`` (fused op, channels-last, torch.compile); its first call, which
includes compilation, is reported separately. Weights are random (timing does not depend on them).
"Floor" is the decoder's arithmetic at this machine's measured matmul rate: no implementation of
the same convolutions runs much faster. Writes benchmarks/results/decode_<device>.json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import torch
import torch.utils.benchmark as tbench

import jasco_fast

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import device_name, write_result  # noqa: E402
from jasco_fast import Decoder, DecoderConfig, LatentDecoder, reference

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def decoder_macs(cfg: DecoderConfig, frames: int) -> int:
    """Multiply-accumulates of one decode of `frames` latent frames (batch 1)."""
    mult = 2 ** len(cfg.ratios)
    ch, t = mult * cfg.n_filters, frames
    macs = t * cfg.kernel_size * cfg.dimension * ch
    macs += cfg.lstm * t * 8 * ch * ch
    for r in cfg.ratios:
        out = ch // 2
        macs += t * ch * 2 * r * out  # transposed conv: every input frame feeds 2r output samples
        t *= r
        hidden = out // cfg.compress
        macs += cfg.n_residual_layers * t * (cfg.residual_kernel_size * out * hidden + hidden * out
                                             + (0 if cfg.true_skip else out * out))
        ch = out
    return macs + t * cfg.last_kernel_size * ch * cfg.channels


def matmul_rate(device: str) -> float:
    """Measured float32 matmul FLOP/s: the arithmetic ceiling the floor column divides by."""
    n = 4096 if device == "cuda" else 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    t = tbench.Timer("a @ b", globals={"a": a, "b": b}, num_threads=torch.get_num_threads()).blocked_autorange(min_run_time=1.0).median
    return 2 * n ** 3 / t


class PeakMemory:
    """Peak memory growth during a call: CUDA allocator peak, or sampled RSS on the CPU."""

    def __init__(self, device: str):
        self.device = device

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.peak = self._rss()
            self.running = True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.base
        else:
            self.running = False
            self.thread.join()
            self.bytes = max(0, self.peak - self.base)


def timed(fn, repeats: int) -> float:
    """Median seconds per call: `repeats` single calls, or blocked_autorange when repeats is 0
    (torch.utils.benchmark synchronises CUDA)."""
    timer = tbench.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    if repeats <= 0:
        return timer.blocked_autorange(min_run_time=2.0).median
    return statistics.median(timer.timeit(1).mean for _ in range(repeats))


def run_case(batch: int, seconds: float, device: str, dtype: torch.dtype, decoder: Decoder, eager,
             fast: LatentDecoder, floor_rate: float, repeats: int) -> dict:
    cfg = decoder.config
    frames = int(seconds * cfg.frame_rate)
    latents = torch.randn(batch, frames, cfg.dimension, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    t0 = time.perf_counter()
    with PeakMemory(device) as mem_fast:
        got = fast(latents)
        sync()
    first = time.perf_counter() - t0
    with PeakMemory(device) as mem_eager:
        want = reference.decode(eager, latents)
        sync()
    err = ((got.double() - want.double()).norm() / want.double().norm()).item()

    t_eager = timed(lambda: reference.decode(eager, latents), repeats)
    t_fast = timed(lambda: fast(latents), repeats)
    audio_s = batch * frames / cfg.frame_rate
    floor = 2 * batch * decoder_macs(cfg, frames) / floor_rate
    return {
        "batch": batch, "seconds": seconds, "frames": frames, "dtype": str(dtype).replace("torch.", ""),
        "eager_ms": t_eager * 1e3, "fast_ms": t_fast * 1e3, "fast_first_call_ms": first * 1e3,
        "speedup": t_eager / t_fast, "fast_over_eager": t_fast / t_eager,
        "eager_rtf": audio_s / t_eager, "fast_rtf": audio_s / t_fast,
        "floor_ms": floor * 1e3, "fast_over_floor": t_fast / floor,
        "eager_peak_mem_mb": mem_eager.bytes / 2**20, "fast_peak_mem_mb": mem_fast.bytes / 2**20,
        "rel_error": err,
    }


def print_table(rows: list[dict], header: str) -> None:
    print(header)
    cols = ["B", "audio", "dtype", "eager ms", "fast ms", "first call ms", "speedup", "fast RTF", "floor ms",
            "eager MB", "fast MB", "rel err"]
    print(" | ".join(f"{c:>13}" for c in cols))
    for r in rows:
        vals = [r["batch"], f"{r['seconds']:g} s", r["dtype"], f"{r['eager_ms']:.1f}", f"{r['fast_ms']:.1f}",
                f"{r['fast_first_call_ms']:.0f}", f"{r['speedup']:.2f}x", f"{r['fast_rtf']:.1f}x",
                f"{r['floor_ms']:.1f}", f"{r['eager_peak_mem_mb']:.0f}", f"{r['fast_peak_mem_mb']:.0f}",
                f"{r['rel_error']:.1e}"]
        print(" | ".join(f"{str(v):>13}" for v in vals))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--quick", action="store_true", help="B=1, 10 s only, fewer repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (median)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/decode_<device>.json)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_decode: --device cuda but CUDA is not available")
    dtype = DTYPES[args.dtype]
    cases = [(1, 10.0)] if args.quick else [(1, 10.0), (1, 30.0), (8, 10.0), (8, 30.0)]
    if args.device == "cuda" and not args.quick:
        cases.append((32, 10.0))
    repeats = args.repeats or (1 if args.quick else (0 if args.device == "cuda" else 3))

    torch.manual_seed(0)
    decoder = Decoder(DecoderConfig()).to(args.device).eval()
    eager = reference.EagerDecoder(decoder)  # float32, as JASCO runs it
    fast = LatentDecoder(decoder, dtype=dtype, compile="torch.compile")  # the table: torch.compile (first call compiles)
    rate = matmul_rate(args.device)
    rows = []
    for batch, seconds in cases:
        rows.append(run_case(batch, seconds, args.device, dtype, decoder, eager, fast, rate, repeats))
        if len(cases) > 1:
            print_table(rows[-1:], f"-- B={batch}, {seconds:g} s")
    result = {
        "benchmark": "decode", "device": device_name(args.device), "device_type": args.device,
        "torch": torch.__version__, "cuda": torch.version.cuda, "threads": torch.get_num_threads(),
        "jasco_fast": getattr(jasco_fast, "__version__", None), "decoder": "EnCodec 32 kHz (random weights)",
        "matmul_gflops": rate / 1e9, "repeats": repeats, "rows": rows,
        "command": "python benchmarks/bench_decode.py " + " ".join(argv if argv is not None else []),
    }
    print()
    print_table(rows, f"decode: JASCO eager path vs jasco_fast.LatentDecoder on {result['device']}, torch "
                      f"{torch.__version__}; matmul {rate / 1e9:.0f} GFLOP/s")
    write_result(result, "decode", args.device, args.quick, args.out)
    return result


if __name__ == "__main__":
    main()
