"""Stage-by-stage profile of the decode against each stage's floor.

    python benchmarks/bench_stages.py [--frames 500] [--rounds 7] [--dtype float32|bfloat16]
                                      [--threads N] [--allocator-default] [--quick] [--note TEXT] [--out PATH]

The decoder runs as ``LatentDecoder`` runs it (weights folded, channels-last ``[B, C, 1, T]``, B = 1),
cut into its stages: conv-in, the LSTM, each upsampling stage's ELU + ConvTranspose and its residual
block(s), and the final ELU + conv. Each stage is timed on the input the previous stage produced, eager
and compiled on its own (``torch.compile`` with ``options={"freezing": True}``, as ``LatentDecoder``
compiles the whole decode; in torch 2.13 that option alone leaves the weights as graph inputs, see
docs/design/decode-cpu.md), in interleaved rounds together with the whole decode (eager and
compiled), so that the sum of the stages can be checked against the whole.

Each stage's floor is a roofline: the larger of
* its multiply-accumulates at the GEMM rate (in the decode's dtype) measured here on GEMMs of the stage's
  own shapes (rows = output samples, capped at 65536; im2col form [t, cin * taps] x [cin * taps, cout] or
  column form [t, cin] x [cin, taps * cout], whichever runs faster; also reported: the same FLOPs at
  the rate of a 2048^3 GEMM),
* its unavoidable memory traffic (read the input, write the output, read the weights once) at the
  measured copy bandwidth of a buffer too large for the private caches,
and for the LSTM (B = 1: each step reads each layer's recurrent matrix) the recurrent weight bytes x T
at the measured bandwidth of reading one layer's [4C, C] matrix (the faster of ``torch.mv`` over it and a sum
over it), plus its input projections (a [T, C] x [C, 4C] GEMM per layer) at the GEMM rate of that shape.
The process first calls ``jasco_fast.reuse_freed_memory()`` (what the ``jasco-fast`` command does), so that a
stage's time is its arithmetic and memory traffic, not the kernel's page faults on freshly mapped activations
(tens of ms for the late stages on the VMs measured, varying from one host to the next);
``--allocator-default`` leaves glibc's policy as a library user gets it. Writes benchmarks/results/stages_cpu.json
(``--out`` to change).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
import torch.utils.benchmark as tbench
from _common import provenance, spread, write_result
from torch import nn

from jasco_fast import DecoderConfig, LatentDecoder, SEANetDecoder, reuse_freed_memory
from jasco_fast.decoder import LSTM, Conv, ConvTranspose, DecoderLayers, ResBlock
from jasco_fast.memory import reusing_freed_memory
from jasco_fast.ops import denormalize_transpose
from jasco_fast.pipeline import DTYPES


def _timer(stmt: str, env: dict, min_run_time: float) -> float:
    """The fastest block's time per run: rates feed floors, which are lower bounds."""
    m = tbench.Timer(stmt, globals=env, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=min_run_time
    )
    return min(m.times)


def gemm_rate(m: int, k: int, n: int, dtype=torch.float32, min_run_time: float = 0.2) -> float:
    """FLOP/s of an [m, k] x [k, n] GEMM: the faster of torch.mm and the same GEMM as a 1x1 convolution over a
    channels-last [1, k, 1, m] input (oneDNN). Both count: torch's x86 wheels run float32 torch.mm through MKL,
    which takes its AVX2 code on AMD CPUs (half the AVX-512 rate on Zen 5), while the decoder's
    convolutions run on oneDNN."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    mm = _timer("torch.mm(a, b)", {"torch": torch, "a": a, "b": b}, min_run_time)
    x = a.t().reshape(1, k, 1, m).contiguous(memory_format=torch.channels_last)
    w = b.t().reshape(n, k, 1, 1).contiguous(memory_format=torch.channels_last)
    conv = _timer("F.conv2d(x, w)", {"F": torch.nn.functional, "x": x, "w": w}, min_run_time)
    return 2 * m * k * n / min(mm, conv)


def matvec_bandwidth(rows: int, cols: int, dtype=torch.float32) -> float:
    """Bytes/s of reading a [rows, cols] matrix once: the faster of torch.mv over it (the matrix dominates the
    traffic) and a sum over it (ATen's vectorised reduction; MKL's float32 mv reaches about half of it on
    AMD CPUs)."""
    w, v = torch.randn(rows, cols, dtype=dtype), torch.randn(cols, dtype=dtype)
    env = {"torch": torch, "w": w, "v": v}
    best = min(_timer("torch.mv(w, v)", env, 0.5), _timer("w.sum()", env, 0.5))
    return w.numel() * w.element_size() / best


def copy_bandwidth(nbytes: int = 256 << 20) -> float:
    """Bytes/s (read + write) of copying a float32 buffer far larger than the private caches."""
    src = torch.randn(nbytes // 4)
    dst = torch.empty_like(src)
    return 2 * nbytes / _timer("dst.copy_(src)", {"dst": dst, "src": src}, 0.5)


def stages_of(decoder: SEANetDecoder) -> list[tuple[str, nn.Module]]:
    """(name, module) per stage, in order; activations go with the layer they feed."""
    stages, pending, up = [], [], 0
    for layer in decoder.layers:
        if isinstance(layer, ResBlock):
            if stages and stages[-1][0] == f"up{up}.resblock":
                stages[-1][1].append(layer)
            else:
                stages.append((f"up{up}.resblock", DecoderLayers(layer)))
            continue
        if isinstance(layer, (Conv, ConvTranspose, LSTM)):
            if isinstance(layer, ConvTranspose):
                up += 1
                name = f"up{up}.convtr"
            else:
                name = "lstm" if isinstance(layer, LSTM) else ("conv_in" if not stages else "conv_out")
            stages.append((name, DecoderLayers(*pending, layer)))
            pending = []
        else:  # activation: belongs to the next weighted layer (or, at the end, to the last stage)
            pending.append(layer)
    if pending:
        stages[-1][1].extend(pending)
    return stages


def _conv_cost(conv, t_out: int) -> tuple[int, list[tuple[int, int, int]]]:
    """(MACs, GEMMs [m, k, n] that compute them) of a Conv / ConvTranspose producing t_out samples.

    Two GEMM forms compute a convolution's MACs: im2col ([t, cin * taps] x [cin * taps, cout]) and the
    column form ([t, cin] x [cin, taps * cout], then shifted sums); the floor takes the faster one.
    A transposed convolution has only the column form (every input frame times [cin, taps * cout]).
    """
    if isinstance(conv, ConvTranspose):
        cin, cout, _, k = conv.weight.shape
        t_in = t_out // conv.stride
        return t_in * cin * k * cout, [(t_in, cin, k * cout)]
    cout, cin, _, k = conv.weight.shape
    return t_out * cin * k * cout, [(t_out, cin * k, cout), (t_out, cin, k * cout)]


GEMM_ROWS = 65536  # rows of the measured GEMMs (enough to reach the shape's steady rate)


def _capped(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    return (min(shape[0], GEMM_ROWS), shape[1], shape[2])


def stage_floor(name: str, module: nn.Module, x: torch.Tensor, y: torch.Tensor, rates: dict, frames: int) -> dict:
    """The stage's floor (seconds) and what bounds it."""
    esize = x.element_size()
    if name == "lstm":
        lstm = module[-1]
        C = x.shape[1]
        w_bytes = (
            sum(getattr(lstm, f"weight_hh_l{k}").numel() for k in range(lstm.num_layers))
            * lstm.weight_hh_l0.element_size()
        )
        recurrent = w_bytes * frames / rates["matvec_bytes_per_s"]
        proj_flops = 2 * lstm.num_layers * frames * C * 4 * C
        projection = proj_flops / rates["gemm"][f"{min(frames, GEMM_ROWS)}x{C}x{4 * C}"]
        return {
            "floor_s": recurrent + projection,
            "bound": "recurrent weights bytes x T at matvec bandwidth + input projections at GEMM rate",
            "recurrent_s": recurrent,
            "projection_s": projection,
            "flops": 2 * lstm.num_layers * frames * 8 * C * C,
            "bytes": w_bytes * frames,
        }
    convs = [m for m in module.modules() if isinstance(m, (Conv, ConvTranspose))]
    t_out = y.shape[-1]
    flops_time, flops = 0.0, 0
    peak_time = 0.0
    for conv in convs:
        macs, shapes = _conv_cost(conv, t_out)
        flops += 2 * macs
        best = max(rates["gemm"]["x".join(map(str, _capped(shape)))] for shape in shapes)
        flops_time += 2 * macs / best
        peak_time += 2 * macs / rates["gemm_square_2048"]
    weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    traffic = x.numel() * esize + y.numel() * esize + weight_bytes
    bytes_time = traffic / rates["copy_bytes_per_s"]
    bound = "flops" if flops_time >= bytes_time else "bytes"
    return {
        "floor_s": max(flops_time, bytes_time),
        "bound": bound,
        "flops": flops,
        "bytes": traffic,
        "flops_s": flops_time,
        "flops_at_square_gemm_rate_s": peak_time,
        "bytes_s": bytes_time,
    }


def needed_gemms(stages, outputs, frames: int) -> set[tuple[int, int, int]]:
    shapes = set()
    for (name, module), y in zip(stages, outputs):
        if name == "lstm":
            C = y.shape[1]
            shapes.add(_capped((frames, C, 4 * C)))
            continue
        for conv in (m for m in module.modules() if isinstance(m, (Conv, ConvTranspose))):
            shapes.update(_capped(shape) for shape in _conv_cost(conv, y.shape[-1])[1])
    return shapes


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=500, help="latent frames (50 per second of audio)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="cpu (the only device this profile covers; cuda is skipped, for `jasco-fast bench`)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument(
        "--allocator-default",
        action="store_true",
        help="do not call jasco_fast.reuse_freed_memory() (freshly mapped activations page-fault on every call)",
    )
    p.add_argument("--quick", action="store_true", help="3 rounds, no whole-decode comparison")
    p.add_argument("--note", default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.device != "cpu":
        print("bench_stages: CPU only (its floors are CPU measurements); skipped for", args.device)
        return {}
    rounds = 3 if args.quick else args.rounds
    if not args.allocator_default:
        reuse_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)

    base = SEANetDecoder(DecoderConfig()).eval()
    eager_whole = LatentDecoder(base, backend="eager", dtype=dtype)
    decoder = eager_whole.decoder  # folded, channels-last, in dtype: what LatentDecoder runs
    latents = torch.randn(1, args.frames, decoder.dimension) * 0.25
    stages = stages_of(decoder)

    with torch.inference_mode():
        x = denormalize_transpose(
            latents, eager_whole.mean, eager_whole.std, dtype=dtype, channels_last=True
        ).unsqueeze(2)
        inputs, outputs = [], []
        for _, module in stages:
            inputs.append(x)
            x = module(x)
            outputs.append(x)

    gemm_shapes = sorted(needed_gemms(stages, outputs, args.frames))
    C = decoder.layers[1].weight_hh_l0.shape[1] if isinstance(decoder.layers[1], LSTM) else 1024

    def measure_rates() -> dict:
        return {
            "gemm_square_2048": gemm_rate(2048, 2048, 2048, dtype),
            "gemm": {"x".join(map(str, s)): gemm_rate(*s, dtype) for s in gemm_shapes},
            "matvec_bytes_per_s": matvec_bandwidth(4 * C, C, dtype),
            "copy_bytes_per_s": copy_bandwidth(),
        }

    print("measuring GEMM rates and bandwidths ...", flush=True)
    rates_before = measure_rates()

    print("compiling the stages ...", flush=True)
    # every stage is an nn.Sequential: one code object, one dynamo cache entry per stage
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * len(stages))
    options = {"freezing": True}
    runs = {}
    with torch.no_grad():
        for (name, module), x in zip(stages, inputs):
            compiled = torch.compile(copy.deepcopy(module), dynamic=False, options=options)
            compiled(x)
            runs[name] = {"eager": (module, x), "compiled": (compiled, x)}
        whole = {}
        if not args.quick:
            compiled_whole = LatentDecoder(base, backend="inductor", dtype=dtype, chunk_frames=None)
            compiled_whole(latents)
            whole = {"eager": eager_whole, "compiled": compiled_whole}
            eager_whole.chunk_frames = None

    samples = {name: {"eager": [], "compiled": []} for name in runs}
    whole_samples = {k: [] for k in whole}
    print(f"timing {rounds} interleaved rounds ...", flush=True)
    with torch.no_grad():
        for _ in range(rounds):
            for name, modes in runs.items():
                for mode, (fn, x) in modes.items():
                    t0 = time.perf_counter()
                    fn(x)
                    samples[name][mode].append(time.perf_counter() - t0)
            for mode, fn in whole.items():
                t0 = time.perf_counter()
                fn(latents)
                whole_samples[mode].append(time.perf_counter() - t0)

    # the machine's best (a floor is a lower bound): rates measured before and after the rounds, maximum kept
    rates_after = measure_rates()
    rates = {
        k: ({s: max(v[s], rates_after[k][s]) for s in v} if isinstance(v, dict) else max(v, rates_after[k]))
        for k, v in rates_before.items()
    }

    rows = []
    for (name, module), x, y in zip(stages, inputs, outputs):
        floor = stage_floor(name, module, x, y, rates, args.frames)
        eager, compiled = samples[name]["eager"], samples[name]["compiled"]
        rows.append(
            {
                "stage": name,
                "out_shape": list(y.shape),
                "eager_ms": spread(eager, 1e3),
                "compiled_ms": spread(compiled, 1e3),
                "floor_ms": floor["floor_s"] * 1e3,
                "ratio_compiled_to_floor": statistics.median(compiled) / floor["floor_s"],
                "ratio_eager_to_floor": statistics.median(eager) / floor["floor_s"],
                "ratio_fastest_compiled_to_floor": min(compiled) / floor["floor_s"],
                **{k: v for k, v in floor.items() if k != "floor_s"},
            }
        )
    totals = {mode: sum(statistics.median(samples[n][mode]) for n in runs) for mode in ("eager", "compiled")}
    fastest = {mode: sum(min(samples[n][mode]) for n in runs) for mode in ("eager", "compiled")}
    floor_total = sum(r["floor_ms"] for r in rows) / 1e3
    result = {
        "benchmark": "stages",
        **provenance("bench_stages.py", argv, "cpu", args.note),
        "frames": args.frames,
        "reuse_freed_memory": reusing_freed_memory(),
        "batch": 1,
        "dtype": args.dtype,
        "rounds": rounds,
        "rates_note": "best of two measurements (before and after the timed rounds)",
        "rates": {
            "gemm_square_2048_flops": rates["gemm_square_2048"],
            "gemm_flops_by_shape_mxkxn": rates["gemm"],
            "lstm_matvec_bytes_per_s": rates["matvec_bytes_per_s"],
            "copy_bytes_per_s": rates["copy_bytes_per_s"],
        },
        "stages": rows,
        "sum_of_stages_ms": {k: v * 1e3 for k, v in totals.items()},
        "sum_of_fastest_rounds_ms": {k: v * 1e3 for k, v in fastest.items()},
        "sum_of_floors_ms": floor_total * 1e3,
        "whole_decode_ms": {k: spread(v, 1e3) for k, v in whole_samples.items()},
    }
    if whole_samples:
        result["whole_compiled_to_floor"] = statistics.median(whole_samples["compiled"]) / floor_total
        result["whole_fastest_compiled_to_floor"] = min(whole_samples["compiled"]) / floor_total

    print(
        f"\nGEMM 2048^3 ({args.dtype}): {rates['gemm_square_2048'] / 1e9:.0f} GFLOP/s; LSTM matvec {rates['matvec_bytes_per_s'] / 1e9:.1f}"
        f" GB/s; copy {rates['copy_bytes_per_s'] / 1e9:.1f} GB/s (read + write)"
    )
    print(
        f"{'stage':<14}{'eager ms':>10}{'compiled ms':>13}{'min-max':>15}{'floor ms':>10}{'bound':>7}{'ratio':>7}"
        f"{'min/floor':>10}"
    )
    for r in rows:
        c = r["compiled_ms"]
        rng = f"{c['min']:.1f}-{c['max']:.1f}"
        print(
            f"{r['stage']:<14}{r['eager_ms']['median']:>10.1f}{c['median']:>13.1f}"
            f"{rng:>15}{r['floor_ms']:>10.1f}"
            f"{r['bound'][:5]:>7}{r['ratio_compiled_to_floor']:>7.2f}{r['ratio_fastest_compiled_to_floor']:>10.2f}"
        )
    print(
        f"{'sum':<14}{totals['eager'] * 1e3:>10.1f}{totals['compiled'] * 1e3:>13.1f}{'':>15}{floor_total * 1e3:>10.1f}"
    )
    for mode, v in whole_samples.items():
        print(f"whole decode, {mode}: {statistics.median(v) * 1e3:.1f} ms ({min(v) * 1e3:.1f}-{max(v) * 1e3:.1f})")
    write_result(result, f"stages_{args.dtype}" if args.dtype != "float32" else "stages", "cpu", args.quick, args.out)
    return result


if __name__ == "__main__":
    main()
