"""Decode benchmark: JASCO's eager path against jasco_fast's LatentDecoder, same weights.

    python benchmarks/bench_decode.py [--device cpu|cuda] [--quick] [--dtype float32|bfloat16|float16]
                                      [--rounds N] [--note TEXT]
    python benchmarks/bench_decode.py --peers [--batch 1] [--seconds 10] [--rounds 5] [--note TEXT]

The eager path is what audiocraft runs: ``latents * std + mean``, ``permute``, the EnCodec decoder in
[B, C, T] layout with weight norm recomputed on every call (``jasco_fast.reference.ReferenceDecoder``).
The fast path is ``LatentDecoder`` with its defaults (fused op, channels-last, compiled: on the CPU the
ahead-of-time artifacts, built before timing; elsewhere torch.compile); its first call (loading the
artifacts, or compiling) is reported separately. Weights are random (timing does not depend on them).
"Floor" is the decoder's arithmetic at this machine's measured matmul rate: no implementation of
the same convolutions runs much faster. Eager and fast calls alternate in rounds (the machine's speed
drifts; each ratio is taken within a round); the JSON keeps the median, min and max over rounds, with the
date, command, machine, torch version and load average. Writes benchmarks/results/decode_<device>.json.

``--peers`` (CPU) instead times the same decoder, same weights, in one process, as every implementation
of ``benchmarks/_peers.py``: transformers eager (what released JASCO runs), transformers + torch.compile,
ONNX Runtime and OpenVINO (float32 and its bf16 hint) on an ONNX export, and every jasco_fast mode
(``_peers.MODES``). Each round calls every implementation once, in an order rotated by one each round;
ratios are taken within a round against ``LatentDecoder`` float32 with its default ``compile``. Each
output is compared with the float32 reference (``jasco_fast.reference``): max error / peak and SNR.
A peer whose package is missing is reported as not installed (``pip install -e ".[bench]"``). The
result goes under the key ``peers`` of the same JSON (the eager-vs-fast rows stay).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.utils.benchmark as tbench
from _common import RESULTS, load_average, provenance, ready_decoder, spread, write_result

import jasco_fast
from jasco_fast import DecoderConfig, LatentDecoder, SEANetDecoder, reference
from jasco_fast.pipeline import DTYPES


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
        macs += (
            cfg.n_residual_layers
            * t
            * (cfg.residual_kernel_size * out * hidden + hidden * out + (0 if cfg.true_skip else out * out))
        )
        ch = out
    return macs + t * cfg.last_kernel_size * ch * cfg.channels


def matmul_rate(device: str) -> float:
    """Measured float32 matmul FLOP/s: the arithmetic ceiling the floor column divides by."""
    n = 4096 if device == "cuda" else 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    t = (
        tbench.Timer("a @ b", globals={"a": a, "b": b}, num_threads=torch.get_num_threads())
        .blocked_autorange(min_run_time=1.0)
        .median
    )
    return 2 * n**3 / t


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


def timed(fn, device: str) -> float:
    """Seconds of one call: a single call on the CPU (a decode takes long enough), a blocked_autorange
    median on CUDA (torch.utils.benchmark synchronises)."""
    timer = tbench.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=2.0).median if device == "cuda" else timer.timeit(1).mean


def run_case(
    batch: int,
    seconds: float,
    device: str,
    dtype: torch.dtype,
    decoder: SEANetDecoder,
    oracle,
    fast: LatentDecoder,
    floor_rate: float,
    rounds: int,
) -> dict:
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
        want = reference.decode(oracle, latents)
        sync()
    err = ((got.double() - want.double()).norm() / want.double().norm()).item()

    t_eager, t_fast = [], []
    for _ in range(rounds):  # interleaved: a slow spell of the machine hits both sides of a ratio
        t_eager.append(timed(lambda: reference.decode(oracle, latents), device))
        t_fast.append(timed(lambda: fast(latents), device))
    audio_s = batch * frames / cfg.frame_rate
    floor = 2 * batch * decoder_macs(cfg, frames) / floor_rate
    return {
        "batch": batch,
        "seconds": seconds,
        "frames": frames,
        "dtype": str(dtype).replace("torch.", ""),
        "eager_ms": spread(t_eager, 1e3),
        "fast_ms": spread(t_fast, 1e3),
        "fast_over_eager": spread([f / e for f, e in zip(t_fast, t_eager)]),
        "fast_first_call_ms": first * 1e3,
        "eager_rtf": audio_s / statistics.median(t_eager),
        "fast_rtf": audio_s / statistics.median(t_fast),
        "floor_ms": floor * 1e3,
        "fast_over_floor": spread([f / floor for f in t_fast]),
        "eager_peak_mem_mb": mem_eager.bytes / 2**20,
        "fast_peak_mem_mb": mem_fast.bytes / 2**20,
        "rel_error": err,
    }


def print_table(rows: list[dict], header: str) -> None:
    print(header)
    cols = [
        "B",
        "audio",
        "dtype",
        "eager ms",
        "fast ms",
        "fast/eager",
        "[min-max]",
        "first call ms",
        "fast RTF",
        "floor ms",
        "eager MB",
        "fast MB",
        "rel err",
    ]
    print(" | ".join(f"{c:>13}" for c in cols))
    for r in rows:
        ratio = r["fast_over_eager"]
        vals = [
            r["batch"],
            f"{r['seconds']:g} s",
            r["dtype"],
            f"{r['eager_ms']['median']:.1f}",
            f"{r['fast_ms']['median']:.1f}",
            f"{ratio['median']:.2f}x",
            f"{ratio['min']:.2f}-{ratio['max']:.2f}",
            f"{r['fast_first_call_ms']:.0f}",
            f"{r['fast_rtf']:.1f}x",
            f"{r['floor_ms']:.1f}",
            f"{r['eager_peak_mem_mb']:.0f}",
            f"{r['fast_peak_mem_mb']:.0f}",
            f"{r['rel_error']:.1e}",
        ]
        print(" | ".join(f"{str(v):>13}" for v in vals))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--quick", action="store_true", help="B=1, 10 s only, one round")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved eager/fast rounds (default 3; --quick 1)")
    parser.add_argument("--note", default=None, help="recorded in the JSON, e.g. what else ran on the machine")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON path (default benchmarks/results/decode_<device>.json)"
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="time the peers (transformers, ONNX Runtime, OpenVINO, every jasco_fast mode) instead",
    )
    parser.add_argument("--batch", type=int, default=1, help="--peers: batch size (default 1)")
    parser.add_argument("--seconds", type=float, default=10.0, help="--peers: seconds of audio (default 10)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="--peers: threads for every implementation (default: torch's default). On a machine "
        "shared with other jobs, 1 keeps OpenMP's barriers from waiting on descheduled threads",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="TEXT",
        help="--peers: only the implementations whose name contains TEXT (repeatable; the baseline always runs)",
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_decode: --device cuda but CUDA is not available")
    if args.peers:
        return run_peers(args, argv)
    dtype = DTYPES[args.dtype]
    cases = [(1, 10.0)] if args.quick else [(1, 10.0), (1, 30.0), (8, 10.0), (8, 30.0)]
    if args.device == "cuda" and not args.quick:
        cases.append((32, 10.0))
    rounds = args.rounds or (1 if args.quick else 3)
    result = {
        "benchmark": "decode",
        **provenance("bench_decode.py", argv, args.device, args.note),
        "decoder": "EnCodec 32 kHz (random weights)",
        "rounds": rounds,
    }

    torch.manual_seed(0)
    decoder = SEANetDecoder(DecoderConfig()).to(args.device).eval()
    oracle = reference.ReferenceDecoder(decoder)  # float32, as JASCO runs it
    fast = ready_decoder(decoder, dtype=dtype)  # the default path; with "aot", its artifacts built first
    rate = matmul_rate(args.device)
    result["matmul_gflops"] = rate / 1e9
    rows = result["rows"] = []
    for batch, seconds in cases:
        rows.append(run_case(batch, seconds, args.device, dtype, decoder, oracle, fast, rate, rounds))
        if len(cases) > 1:
            print_table(rows[-1:], f"-- B={batch}, {seconds:g} s")
        # written after every case (a long run that is stopped keeps what it measured), marked complete at the end
        result["complete"] = len(rows) == len(cases)
        _keep_peers(result, _result_path(args))
        write_result(result, "decode", args.device, args.quick, args.out)
    print()
    print_table(
        rows,
        f"decode: JASCO eager path vs jasco_fast.LatentDecoder on {result['device']}, torch "
        f"{torch.__version__}; matmul {rate / 1e9:.0f} GFLOP/s; median of {rounds} rounds",
    )
    return result


# --------------------------------------------------------------------------------------------------
# Peers (--peers)


def _result_path(args) -> Path:
    return args.out or RESULTS / f"decode_{args.device}{'_quick' if args.quick else ''}.json"


def _keep_peers(result: dict, path: Path) -> None:
    """The rows and the peers table share one JSON; a run of one keeps the other's last result."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if "peers" in old and "peers" not in result:
        result["peers"] = old["peers"]


def _merge_into(path: Path, peers: dict) -> dict:
    """The JSON at `path` with its "peers" replaced; a file without rows gets the peers run's provenance."""
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        result = {
            "benchmark": "decode",
            "decoder": peers["decoder"],
            "rows": [],
            "rounds": peers["rounds"],
            **{
                k: peers[k]
                for k in (
                    "date_utc",
                    "command",
                    "device",
                    "device_type",
                    "threads",
                    "torch",
                    "jasco_fast",
                    "git_commit",
                    "cpu_count",
                    "note",
                    "cpu_class",
                    "isa_caps",
                    "cpuid_as",
                    "cpu_class_emulated",
                    "peers_instruction_set",
                )
                if k in peers
            },
        }
    result["peers"] = peers
    return result


def run_peers(args, argv) -> dict:
    import _fidelity
    import _peers

    if args.device != "cpu":
        raise SystemExit("bench_decode --peers: CPU only (the peers here are CPU runtimes)")
    if args.batch < 1 or args.seconds <= 0:
        raise SystemExit("bench_decode --peers: --batch must be >= 1 and --seconds > 0")
    rounds = args.rounds or (1 if args.quick else 5)
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit("bench_decode --peers: --threads must be >= 1")
        torch.set_num_threads(args.threads)  # ONNX Runtime and OpenVINO take the same count (_peers.py)
    peers = {
        **provenance("bench_decode.py", argv, args.device, args.note),
        "rounds": rounds,
        "baseline": _peers.BASELINE,
        "batch": args.batch,
        "seconds": args.seconds,
        "decoder": "EnCodec 32 kHz, random weights (transformers' initialisation, seed 0), shared by all",
    }
    with tempfile.TemporaryDirectory(prefix="jasco_bench_peers_") as work:
        work = Path(work)
        try:
            checkpoint = _peers.write_transformers_checkpoint(work / "encodec_32khz")
            decoder = jasco_fast.load_decoder(checkpoint)
        except _peers.NotInstalled:  # no transformers: the jasco_fast modes and the ONNX peers still run
            checkpoint, decoder = None, SEANetDecoder(DecoderConfig()).eval()
        frames = int(args.seconds * decoder.config.frame_rate)
        latents = torch.randn(args.batch, frames, decoder.config.dimension, generator=torch.Generator().manual_seed(1))
        oracle = reference.ReferenceDecoder(decoder)
        want = reference.decode(oracle, latents)
        short = latents[
            :, : max(64, frames // 3)
        ].contiguous()  # a second length: a dynamic-shape export must follow it
        want_short = reference.decode(oracle, short)
        setup = {"checkpoint": checkpoint, "decoder": decoder, "latents": latents, "workdir": work}
        peers["frames"] = frames

        runs, table = {}, {}
        chosen = {
            n: b
            for n, b in _peers.PEERS.items()
            if n == _peers.BASELINE or not args.only or any(t.lower() in n.lower() for t in args.only)
        }
        for name, build in chosen.items():
            entry = table[name] = {}
            print(f"setting up {name} ...", flush=True)
            t0 = time.perf_counter()
            try:
                fn, entry["notes"] = build(setup)
                got = fn(latents)  # the first call compiles where the implementation compiles
                entry["first_call_s"] = time.perf_counter() - t0
                fn(latents)
                entry["max_error_over_peak"] = error = _fidelity.max_error_over_peak(want, got)
                entry["snr_db"] = _fidelity.snr_db(want, got)
                if not getattr(fn, "static_shape", False):  # a dynamic-length export must be right at any length
                    entry["max_error_over_peak_other_length"] = other = _fidelity.max_error_over_peak(
                        want_short, fn(short)
                    )
                    if other > max(10 * error, 1e-4):
                        raise RuntimeError(f"wrong at {short.shape[1]} frames: max error / peak {other:.1e}")
                entry["status"] = "ok"
                runs[name] = fn
            except _peers.NotInstalled as exc:
                entry["status"] = str(exc)
            except Exception as exc:  # a peer that breaks is reported; the others still run
                entry["status"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            print(f"  {entry['status']}", flush=True)
        if _peers.BASELINE not in runs:
            raise SystemExit(
                f"bench_decode --peers: the baseline {_peers.BASELINE!r} did not run: "
                f"{table[_peers.BASELINE]['status']}"
            )

        names = list(runs)
        times: dict[str, list[float]] = {n: [] for n in names}
        for r in range(rounds):  # every implementation once per round, the order rotated each round
            for name in names[r % len(names) :] + names[: r % len(names)]:
                t0 = time.perf_counter()
                runs[name](latents)
                times[name].append(time.perf_counter() - t0)
            print(
                f"round {r + 1}/{rounds}: " + ", ".join(f"{n.split(' (')[0]} {times[n][-1] * 1e3:.0f}" for n in names),
                flush=True,
            )
    base = times[_peers.BASELINE]
    for name in names:
        table[name]["ms"] = spread(times[name], 1e3)
        table[name]["over_baseline"] = spread([t / b for t, b in zip(times[name], base)])
    peers["implementations"] = table
    peers["load_average_at_end"] = load_average()
    path = _result_path(args)
    write_result(_merge_into(path, peers), "decode", args.device, args.quick, args.out)
    print_peers(peers)
    return peers


def print_peers(peers: dict) -> None:
    print(
        f"\ndecode peers: B={peers['batch']}, {peers['seconds']:g} s, {peers['device']}, torch {peers['torch']}; "
        f"median [min-max] of {peers['rounds']} interleaved rounds; ratio = time / {peers['baseline']} in the same round"
    )
    print(f"{'implementation':48s} | {'ms':>7s} | {'ratio [min-max]':>18s} | {'max err/peak':>12s} | {'SNR dB':>6s}")
    for name, e in peers["implementations"].items():
        if e["status"] != "ok":
            print(f"{name:48s} | {e['status']}")
            continue
        r = e["over_baseline"]
        print(
            f"{name:48s} | {e['ms']['median']:7.0f} | {r['median']:5.2f} [{r['min']:.2f}-{r['max']:.2f}] | "
            f"{e['max_error_over_peak']:12.1e} | {e['snr_db']:6.1f}"
        )


if __name__ == "__main__":
    main()
