"""The SEANet LSTM at B = 1 on CPU: ATen's LSTM (oneDNN) against jasco_fast's recurrence kernel, per format.

    python benchmarks/bench_lstm.py [--threads N] [--rounds N] [--T 500] [--quick] [--note TEXT]

Times `lstm(x) + x` for 2 layers of 1024 over T = 500 frames (10 s of audio), B = 1: ATen's LSTM
(`torch.lstm`, what `lstm_skip` ran before the kernel) in float32 and bfloat16, and `jasco_fast.ops.lstm_skip`
with float32, bfloat16, float32 weights with bfloat16-stored recurrent matrices, and int8 recurrent matrices
(float32 and bfloat16 inputs). All cases run in interleaved rounds (one call each per round); the JSON keeps
median / min / max per case and the ratio to ATen float32 taken within each round.

Floor: at B = 1 each step reads each layer's recurrent matrix once, so the floor is
layers x T x (bytes of W_hh) / bandwidth, with the bandwidth of reading the float32 [4C, C] matrix (the
faster of `torch.mv` over it and a sum over it: MKL's float32 mv runs its AVX2 code on AMD CPUs, at about
half the rate of ATen's vectorised sum) measured in the same run (its best round; the input GEMM, a few ms, is left out of the floor). `per_call_overhead`: the
time of a T = 1 call (packing of W_hh, the input GEMM and one step), what a call costs beyond its steps.

Fidelity (unless `--no-fidelity`): the output of each case against float64 arithmetic, on the float32
originals and on the case's own (bfloat16-rounded) inputs, as max |error| / peak and SNR (dB) of the LSTM
part (y - x) and of the block's output y, for nn.LSTM's default init (uniform +-1/sqrt(C)) and N(0, 0.05)
weights, x ~ N(0, 1). bfloat16 outputs carry a rounding of y = lstm(x) + x, which alone limits the block SNR
to about 52 dB.
Writes benchmarks/results/lstm_cpu.json.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch
from _common import provenance, spread, write_result

from jasco_fast.ops import lstm_pack, lstm_skip


def make_weights(C: int, layers: int, seed: int, std: float | None) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(layers):
        for shape in ((4 * C, C), (4 * C, C), (4 * C,), (4 * C,)):
            if std is None:
                out.append((torch.rand(shape, generator=gen) * 2 - 1) / math.sqrt(C))
            else:
                out.append(torch.randn(shape, generator=gen) * std)
    return out


def aten_lstm(seq, weights, layers):
    zeros = seq.new_zeros(layers, seq.shape[0], seq.shape[2])
    return torch.lstm(seq, (zeros, zeros), weights, True, layers, 0.0, False, False, True)[0] + seq


def cases(seq, weights, layers):
    """name -> (callable, recurrent matrix bytes per element)."""
    seq_bf, w_bf = seq.bfloat16(), [w.bfloat16() for w in weights]

    def ours(s, ws, recurrent=None):  # packed once, as the decoder's LSTM holds its pack (LSTM.prepack)
        packed = lstm_pack([ws[4 * k + 1] for k in range(layers)], recurrent)
        return lambda: lstm_skip(s, ws, layers, recurrent_dtype=recurrent, packed=packed)[0]

    return {
        "aten_float32": (lambda: aten_lstm(seq, weights, layers), 4),
        "ours_float32": (ours(seq, weights), 4),
        "ours_float32_bf16_recurrent": (ours(seq, weights, torch.bfloat16), 2),
        "aten_bfloat16": (lambda: aten_lstm(seq_bf, w_bf, layers), 2),
        "ours_bfloat16": (ours(seq_bf, w_bf), 2),
        "ours_bfloat16_int8_recurrent": (ours(seq_bf, w_bf, torch.int8), 1),
        "ours_float32_int8_recurrent": (ours(seq, weights, torch.int8), 1),
    }


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def mv_bandwidth(C: int, repeats: int = 200) -> float:
    """Bytes/s of reading the float32 [4C, C] matrix: the faster of torch.mv over it and a sum over it (median
    of `repeats` calls each)."""
    w, x = torch.randn(4 * C, C), torch.randn(C)
    best = float("inf")
    for read in (lambda: torch.mv(w, x), lambda: w.sum()):
        for _ in range(10):
            read()
        best = min(best, statistics.median(timed(read) for _ in range(repeats)))
    return w.numel() * 4 / best


def measure_speed(T: int, C: int, layers: int, rounds: int) -> dict:
    weights = make_weights(C, layers, seed=0, std=None)
    seq = torch.randn(1, T, C)
    short = torch.randn(1, 1, C)
    run, run_short = cases(seq, weights, layers), cases(short, weights, layers)
    with torch.inference_mode():
        for fn, _ in run.values():  # warm-up: oneDNN primitives, allocator
            fn()
        times = {name: [] for name in run}
        short_times = {name: [] for name in run}
        bandwidth = []
        for _ in range(rounds):  # interleaved: each ratio within one round
            bandwidth.append(mv_bandwidth(C, repeats=50))
            for name, (fn, _) in run.items():
                times[name].append(timed(fn))
                short_times[name].append(timed(run_short[name][0]))
    bw = max(bandwidth)  # the best round: contention slows torch.mv too, and a floor must not be inflated
    rows = {}
    for name, (_, nbytes) in run.items():
        floor = layers * T * 4 * C * C * nbytes / bw
        rows[name] = {
            "ms": spread(times[name], 1e3),
            "over_aten_float32": spread([t / a for t, a in zip(times[name], times["aten_float32"])]),
            "recurrent_bytes_per_weight": nbytes,
            "floor_ms": floor * 1e3,
            "over_floor": spread([t / floor for t in times[name]]),
            "per_call_overhead_ms": spread(short_times[name], 1e3),
        }
    return {
        "shape": {"B": 1, "T": T, "C": C, "layers": layers},
        "mv_float32_GBps": spread(bandwidth, 1e-9),
        "cases": rows,
    }


def errors(y: torch.Tensor, want: torch.Tensor, seq: torch.Tensor) -> dict:
    """y against want, relative to the LSTM part (want - seq) and to the whole block output."""
    err = y.double() - want
    lstm_part = want - seq.double()
    return {
        "lstm_max_err_over_peak": (err.abs().max() / lstm_part.abs().max()).item(),
        "lstm_snr_db": (10 * torch.log10(lstm_part.pow(2).sum() / err.pow(2).sum())).item(),
        "block_snr_db": (10 * torch.log10(want.pow(2).sum() / err.pow(2).sum())).item(),
    }


def fidelity(T: int, C: int, layers: int) -> dict:
    """Per weight init and case: `vs_float32` against float64 arithmetic on the float32 originals (what a user
    of that mode gets); `vs_own_inputs` against float64 arithmetic on the case's own (bfloat16-rounded) inputs
    and unquantised weights (the kernel's arithmetic and the recurrent format alone)."""
    out = {}
    for label, std in (("default_init", None), ("normal_0.05", 0.05)):
        weights = make_weights(C, layers, seed=1, std=std)
        seq = torch.randn(1, T, C)
        with torch.inference_mode():
            want32 = aten_lstm(seq.double(), [w.double() for w in weights], layers)
            seq_bf = seq.bfloat16()
            want_bf = aten_lstm(seq_bf.double(), [w.bfloat16().double() for w in weights], layers)
            rows = {}
            for name, (fn, _) in cases(seq, weights, layers).items():
                y = fn()
                own = (want_bf, seq_bf) if y.dtype == torch.bfloat16 else (want32, seq)
                rows[name] = {"vs_float32": errors(y, want32, seq), "vs_own_inputs": errors(y, *own)}
        out[label] = rows
    return out


def print_tables(result: dict) -> None:
    s = result["speed"]
    print(
        f"LSTM B=1 T={s['shape']['T']} C={s['shape']['C']} x{s['shape']['layers']} layers on {result['device']}, "
        f"torch {result['torch']}, {result['rounds']} interleaved rounds; reading the float32 matrix (mv or sum) "
        f"{s['mv_float32_GBps']['median']:.0f} GB/s median, {s['mv_float32_GBps']['max']:.0f} best"
    )
    print(
        f"{'case':32} {'median ms':>10} {'[min-max]':>17} {'x ATen f32':>11} {'floor ms':>9} {'best x floor':>8} "
        f"{'T=1 call ms':>12}"
    )
    for name, r in s["cases"].items():
        print(
            f"{name:32} {r['ms']['median']:10.1f} {r['ms']['min']:8.1f}-{r['ms']['max']:<8.1f} "
            f"{r['over_aten_float32']['median']:11.2f} {r['floor_ms']:9.1f} {r['over_floor']['min']:8.2f} "
            f"{r['per_call_overhead_ms']['median']:12.2f}"
        )
    for label, rows in result.get("fidelity", {}).items():
        print(
            f"fidelity, weights {label}: LSTM part max |err| / peak, LSTM part SNR dB, block output SNR dB; "
            f"against float64 on the float32 originals | on the case's own inputs"
        )
        for name, r in rows.items():
            a, b = r["vs_float32"], r["vs_own_inputs"]
            print(
                f"  {name:32} {a['lstm_max_err_over_peak']:.2e} {a['lstm_snr_db']:6.1f} {a['block_snr_db']:6.1f} | "
                f"{b['lstm_max_err_over_peak']:.2e} {b['lstm_snr_db']:6.1f} {b['block_snr_db']:6.1f}"
            )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 9; --quick 2)")
    parser.add_argument("--T", type=int, default=500)
    parser.add_argument("--C", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--no-fidelity", action="store_true")
    parser.add_argument("--quick", action="store_true", help="T = 100, 2 rounds")
    parser.add_argument("--note", default=None, help="recorded in the JSON, e.g. what else ran on the machine")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    T = 100 if args.quick else args.T
    rounds = args.rounds or (2 if args.quick else 9)
    result = {
        "benchmark": "lstm",
        **provenance("bench_lstm.py", argv, "cpu", args.note),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "rounds": rounds,
    }
    result["speed"] = measure_speed(T, args.C, args.layers, rounds)
    if not args.no_fidelity:
        result["fidelity"] = fidelity(T, args.C, args.layers)
    print_tables(result)
    write_result(result, "lstm", "cpu", args.quick, args.out)
    return result


if __name__ == "__main__":
    main()
