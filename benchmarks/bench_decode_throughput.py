"""Decode throughput: audio seconds decoded per second and peak memory, over batch size, length, dtype and
compile mode, against JASCO's eager float32 path measured in the same run.

    python benchmarks/bench_decode_throughput.py --device cuda --dtype bfloat16     # one dtype, full grid
    python benchmarks/bench_decode_throughput.py --device cpu --quick              # a small grid, any machine

Grid: B = 1, 8, 32, 128 at 10 s and 30 s of audio (--quick: B = 1, 2 at 1 s). Paths per case, measured in
interleaved order: ``eager_float32`` (``reference.ReferenceDecoder``: what JASCO runs), ``compiled``
(``LatentDecoder``, torch.compile with frozen weights) and, on CUDA, ``cudagraphs`` (``LatentDecoder`` with
``mode="reduce-overhead"``: CUDA graphs). B > 1 is marked dynamic, so each path compiles twice
(B = 1, B > 1), not once per case. Per path and case: median seconds per call over repeated calls (with
min and max), audio seconds per second, the speedup over eager float32, peak memory of the first call
(compilation / graph recording included), relative L2 error against eager float32, and the first call's
time. A case that runs out of memory is recorded as such. One call of each path at B = 8, 10 s (--quick:
the last case) is profiled: the top CUDA kernels (CPU operators on a CPU) say where the time goes. Weights are random (timing does not depend on them).
Writes benchmarks/results/decode_throughput_<dtype>_<device>[_quick].json (or --out).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from _common import device_name, spread, write_result

import jasco_fast
from jasco_fast import DecoderConfig, LatentDecoder, SEANetDecoder, reference

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FULL_CASES = [(b, s) for s in (10.0, 30.0) for b in (1, 8, 32, 128)]
QUICK_CASES = [(1, 1.0), (2, 1.0)]
PROFILE_CASE = (8, 10.0)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


class Runner(NamedTuple):
    """One way of decoding, measured case by case."""

    name: str
    run: Callable[[torch.Tensor], torch.Tensor]


def make_runners(decoder: SEANetDecoder, device: str, dtype: torch.dtype) -> list[Runner]:
    eager = reference.ReferenceDecoder(decoder)  # float32, as JASCO runs it
    runners = [
        Runner("eager_float32", lambda x: reference.decode(eager, x)),
        Runner("compiled", LatentDecoder(decoder, backend="inductor", dtype=dtype)),
    ]
    if device == "cuda":
        runners.append(Runner("cudagraphs", LatentDecoder(decoder, dtype=dtype, mode="reduce-overhead")))
    return runners


def call(runner: Runner, latents: torch.Tensor) -> torch.Tensor:
    if runner.name != "eager_float32" and latents.shape[0] > 1:
        torch._dynamo.mark_dynamic(latents, 0)  # one graph for every B > 1
    return runner.run(latents)


def measure(
    runner: Runner, latents: torch.Tensor, want: torch.Tensor | None, device: str, min_time: float, max_calls: int
) -> dict:
    """First call (compile / record) with its peak memory, then calls until min_time has passed."""
    if device == "cuda":
        torch.cuda.empty_cache()
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    out = call(runner, latents)
    sync(device)
    first = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device == "cuda" else None
    err = None
    if want is not None:
        err = ((out.double() - want.double()).norm() / want.double().norm().clamp_min(1e-300)).item()
    del out
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_time and len(times) < max_calls):
        t0 = time.perf_counter()
        call(runner, latents)
        sync(device)
        times.append(time.perf_counter() - t0)
    t = spread(times)
    return {
        "median_s": t["median"],
        "min_s": t["min"],
        "max_s": t["max"],
        "calls": t["n"],
        "first_call_s": first,
        "peak_mem_mb": peak,
        "rel_error_vs_eager_float32": err,
    }


def profile(runner: Runner, latents: torch.Tensor, device: str, top: int = 12) -> list[dict]:
    """The kernels (CUDA) or operators (CPU) that take the most time in one steady-state call."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    call(runner, latents)
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        call(runner, latents)
        sync(device)
    events = prof.key_averages()

    def self_time(e) -> float:  # microseconds; attribute names differ across torch versions
        if device == "cuda":
            return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0)
        return e.self_cpu_time_total

    rows = [(self_time(e), e.key, e.count) for e in events if self_time(e) > 0]
    total = sum(t for t, _, _ in rows) or 1.0
    rows.sort(reverse=True)
    return [{"name": name[:120], "calls": count, "ms": t / 1e3, "share": t / total} for t, name, count in rows[:top]]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES), help="dtype of the fast paths")
    parser.add_argument("--quick", action="store_true", help="B = 1, 2 at 1 s; short timing")
    parser.add_argument("--min-time", type=float, default=None, help="seconds of timed calls per path and case")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_decode_throughput: --device cuda but torch sees no CUDA GPU")
    cases = QUICK_CASES if args.quick else FULL_CASES
    min_time = args.min_time if args.min_time is not None else (0.2 if args.quick else 1.0)
    dtype = DTYPES[args.dtype]

    # Every LatentDecoder compiles the same method: earlier runs' graphs (another dtype, another mode) would
    # count towards dynamo's recompile limit, past which it silently runs eagerly.
    torch._dynamo.reset()
    torch.manual_seed(0)
    decoder = SEANetDecoder(DecoderConfig()).to(args.device).eval()
    cfg = decoder.config
    runners = make_runners(decoder, args.device, dtype)
    rows = []
    for batch, seconds in cases:
        frames = int(seconds * cfg.frame_rate)
        latents = torch.randn(batch, frames, cfg.dimension, device=args.device)
        audio_s = batch * frames / cfg.frame_rate
        want = None
        for runner in runners:  # eager float32 first: the others' error and speedup are against it
            row = {
                "path": runner.name,
                "dtype": "float32" if runner.name == "eager_float32" else args.dtype,
                "batch": batch,
                "seconds": seconds,
                "frames": frames,
                "audio_seconds": audio_s,
            }
            try:
                if runner.name == "eager_float32":
                    want = runner.run(latents)
                    row.update(measure(runner, latents, None, args.device, min_time, 50))
                else:
                    row.update(measure(runner, latents, want, args.device, min_time, 50))
                row["audio_s_per_s"] = audio_s / row["median_s"]
                row["status"] = "ok"
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                row["status"] = "out of memory"
                if args.device == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
            print(format_row(row), flush=True)
        del want
    add_speedups(rows)

    profiles = {}
    profile_case = cases[-1] if args.quick else PROFILE_CASE
    if not args.no_profile:
        batch, seconds = profile_case
        latents = torch.randn(batch, int(seconds * cfg.frame_rate), cfg.dimension, device=args.device)
        for runner in runners:
            try:
                profiles[runner.name] = profile(runner, latents, args.device)
            except Exception as exc:  # a profile is extra information; the measurements above stand
                profiles[runner.name] = [{"error": f"{type(exc).__name__}: {exc}"}]
    result = {
        "benchmark": "decode_throughput",
        "device": device_name(args.device),
        "device_type": args.device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "jasco_fast": getattr(jasco_fast, "__version__", None),
        "decoder": "EnCodec 32 kHz (random weights)",
        "dtype": args.dtype,
        "min_time_s": min_time,
        "date": time.strftime("%Y-%m-%d"),
        "tf32": {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32},
        "rows": rows,
        "profile_case": list(profile_case),
        "profiles": profiles,
        "command": "python benchmarks/bench_decode_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    name = f"decode_throughput_{args.dtype}"
    write_result(result, name, args.device, args.quick, args.out)
    return result


def add_speedups(rows: list[dict]) -> None:
    """speedup = eager float32 time / this path's time, within the same case."""
    eager = {(r["batch"], r["seconds"]): r for r in rows if r["path"] == "eager_float32" and r["status"] == "ok"}
    for r in rows:
        base = eager.get((r["batch"], r["seconds"]))
        r["speedup_vs_eager_float32"] = base["median_s"] / r["median_s"] if base and r["status"] == "ok" else None


def format_row(r: dict) -> str:
    head = f"B={r['batch']:>3} {r['seconds']:>4g} s {r['path']:>13} {r['dtype']:>8}: "
    if r["status"] != "ok":
        return head + r["status"]
    mem = f", peak {r['peak_mem_mb']:.0f} MB" if r["peak_mem_mb"] is not None else ""
    err = f", rel err {r['rel_error_vs_eager_float32']:.1e}" if r["rel_error_vs_eager_float32"] is not None else ""
    return (
        head + f"{r['median_s'] * 1e3:9.2f} ms (min {r['min_s'] * 1e3:.2f}, max {r['max_s'] * 1e3:.2f}, "
        f"{r['calls']} calls), {r['audio_s_per_s']:8.3g} audio s/s, first call {r['first_call_s']:.1f} s{mem}{err}"
    )


if __name__ == "__main__":
    main()
