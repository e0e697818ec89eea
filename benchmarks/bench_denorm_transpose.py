"""denorm_transpose benchmark: the fused op against JASCO's eager expression and the copy limit.

    python benchmarks/bench_denorm_transpose.py [--device cpu|cuda] [--quick] [--rounds N] [--note TEXT]

Per shape: time of the fused op (contiguous and channels-last output), of the eager
`(x * std + mean).permute(0, 2, 1).contiguous()`, and of `x.clone()` (one read and one write of the
tensor: the copy limit), with ratios to the clone and achieved GB/s (bytes read + written / time).
The four are timed in interleaved rounds (each a `blocked_autorange` median); each ratio is taken within
a round; the JSON keeps the median, min and max over rounds, with the date, command, machine, torch
version and load average. Writes benchmarks/results/denorm_transpose_<device>.json.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
import torch.utils.benchmark as tbench
from _common import provenance, spread, write_result

import jasco_fast
from jasco_fast import JASCO_LATENT_MEAN, JASCO_LATENT_STD

SHAPES = [(1, 500, 128), (8, 1500, 128), (16, 1500, 128), (64, 1500, 128)]


def median_seconds(stmt: str, env: dict, min_run_time: float) -> float:
    timer = tbench.Timer(stmt, globals=env, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def measure(shape, out_dtype, device: str, rounds: int, min_run_time: float) -> dict:
    x = torch.randn(shape, device=device)
    env = {
        "x": x,
        "op": jasco_fast.denormalize_transpose,
        "dtype": out_dtype,
        "mean": torch.tensor(JASCO_LATENT_MEAN, device=device),
        "std": torch.tensor(JASCO_LATENT_STD, device=device),
    }
    stmts = {
        "clone": "x.clone()",
        "fused": "op(x, mean, std, dtype=dtype)",
        "fused_channels_last": "op(x, mean, std, dtype=dtype, channels_last=True)",
        "eager": "(x * std + mean).permute(0, 2, 1).contiguous()"
        if out_dtype is None
        else "(x * std + mean).permute(0, 2, 1).to(dtype).contiguous()",
    }
    # Interleaved rounds: the machine's speed drifts, so each ratio is taken within one round and the
    # median over rounds is reported.
    times = {k: [] for k in stmts}
    for _ in range(rounds):
        for name, stmt in stmts.items():
            times[name].append(median_seconds(stmt, env, min_run_time))
    row = {
        "shape": list(shape),
        "in_dtype": "float32",
        "out_dtype": str(out_dtype or torch.float32).replace("torch.", ""),
        "ms": {},
        "over_clone": {},
        "GBps": {},
    }
    out_bytes = x.numel() * (out_dtype or x.dtype).itemsize
    for name, ts in times.items():
        row["ms"][name] = spread(ts, 1e3)
        nbytes = x.numel() * x.element_size() + (x.numel() * x.element_size() if name == "clone" else out_bytes)
        row["GBps"][name] = nbytes / statistics.median(ts) / 1e9
        if name != "clone":
            row["over_clone"][name] = spread([t / c for t, c in zip(ts, times["clone"])])
    return row


def print_table(result: dict) -> None:
    print(
        f"denorm_transpose on {result['device']}, torch {result['torch']}, {result['rounds']} rounds: median ms "
        f"(median ratio to clone [min-max over rounds]; GB/s moved)"
    )
    cols = ["shape", "out", "clone", "fused", "fused channels-last", "eager"]
    print(" | ".join(f"{c:>30}" for c in cols))
    for r in result["rows"]:
        cells = [
            str(tuple(r["shape"])),
            r["out_dtype"],
            f"{r['ms']['clone']['median']:.3f} ({r['GBps']['clone']:.0f} GB/s)",
        ]
        for k in ("fused", "fused_channels_last", "eager"):
            ratio = r["over_clone"][k]
            cells.append(
                f"{r['ms'][k]['median']:.3f} ({ratio['median']:.2f}x [{ratio['min']:.2f}-{ratio['max']:.2f}]; "
                f"{r['GBps'][k]:.0f})"
            )
        print(" | ".join(f"{c:>30}" for c in cells))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="one shape, one round")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; --quick 1)")
    parser.add_argument("--note", default=None, help="recorded in the JSON, e.g. what else ran on the machine")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_denorm_transpose: --device cuda but CUDA is not available")
    cases = (
        [((16, 1500, 128), None)]
        if args.quick
        else [(s, None) for s in SHAPES] + [((16, 1500, 128), torch.bfloat16), ((64, 1500, 128), torch.bfloat16)]
    )
    rounds = args.rounds or (1 if args.quick else 5)
    min_run_time = 0.2 if args.quick else 0.3
    result = {
        "benchmark": "denorm_transpose",
        **provenance("bench_denorm_transpose.py", argv, args.device, args.note),
        "rounds": rounds,
        "min_run_time_s": min_run_time,
    }
    result["rows"] = [measure(shape, dtype, args.device, rounds, min_run_time) for shape, dtype in cases]
    print_table(result)
    write_result(result, "denorm_transpose", args.device, args.quick, args.out)
    return result


if __name__ == "__main__":
    main()
