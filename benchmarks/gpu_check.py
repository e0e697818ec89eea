"""`make gpu-check`'s steps on a machine with a GPU: refuse loudly without one, check the built kernel,
run the op and decode benchmarks, and summarise them against the targets as a Markdown table (docs/performance.md).

    python benchmarks/gpu_check.py preflight          # a CUDA GPU, nvcc and the Python packages, or exit 1
    python benchmarks/gpu_check.py kernels            # jasco_fast (this tree) has its CUDA kernel, or exit 1
    python benchmarks/gpu_check.py bench [--dtype D]  # benchmarks -> results/*_cuda_<gpu>.json, then summary
    python benchmarks/gpu_check.py summary [--tag cuda_h100]   # results/*_<tag>.json -> gpu_check_<tag>.json + tables
    python benchmarks/gpu_check.py bench --device cpu --quick --results-dir /tmp/r    # the same code on a CPU

Targets (issue 11): the fused op moves >= 85% of a device-to-device copy's bandwidth; the decode is >= 3x
faster than JASCO's eager float32 path at B = 8.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
from _common import RESULTS, device_name, write_result  # noqa: E402

DTYPES = ("float32", "bfloat16", "float16")
NEEDED_MODULES = ("numpy", "yaml", "safetensors", "soundfile", "pyloudnorm", "tqdm", "pytest", "hypothesis")
OP_TARGET = 0.85  # of the copy's bandwidth
DECODE_TARGET = 3.0  # x eager float32 at B = 8
TARGET_BATCH = 8


class CheckFailed(SystemExit):
    def __init__(self, message: str):
        super().__init__(f"gpu-check: FAILED: {message}")


def gpu_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100', 'NVIDIA H200' -> 'h200', 'NVIDIA A100-SXM4-80GB' -> 'a100'."""
    words = re.split(r"[\s_-]+", name.lower().replace("nvidia", "").replace("geforce", "").strip())
    return re.sub(r"[^a-z0-9]", "", words[0]) if words and words[0] else "gpu"


def device_tag(device: str) -> str:
    return f"cuda_{gpu_slug(torch.cuda.get_device_name())}" if device == "cuda" else "cpu"


# ---- preflight / kernels -------------------------------------------------------------------------------


def preflight() -> None:
    if not torch.version.cuda:
        raise CheckFailed(
            f"torch {torch.__version__} is not a CUDA build (torch.version.cuda is None); run this "
            f"on a GPU machine with a CUDA torch"
        )
    if not torch.cuda.is_available():
        raise CheckFailed(
            f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: "
            f"torch.cuda.is_available() is False. gpu-check only runs where a GPU is"
        )
    spec = importlib.util.spec_from_file_location("jasco_fast_setup", ROOT / "setup.py")
    setup_py = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup_py)
    home = setup_py.find_cuda_home()
    if home is None:
        raise CheckFailed("no nvcc (CUDA toolkit) found: the CUDA kernel cannot be built; install it or set CUDA_HOME")
    missing = [m for m in NEEDED_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise CheckFailed(
            f"Python packages missing for {sys.executable}: {', '.join(missing)} (pip install them, "
            f"or carry their wheels to a machine without network)"
        )
    print(
        f"gpu-check: {torch.cuda.get_device_name()} ({torch.cuda.device_count()} visible), torch {torch.__version__} "
        f"(CUDA {torch.version.cuda}), CUDA_HOME {home}, Python {sys.version.split()[0]}"
    )


def kernels() -> None:
    try:
        import jasco_fast
    except ImportError as exc:
        raise CheckFailed(
            f"cannot import jasco_fast ({exc}): run this through `make gpu-build`, or with "
            f"PYTHONPATH={ROOT} after building in place"
        ) from None

    where = Path(jasco_fast.__file__).resolve().parent
    if where != ROOT / "jasco_fast":
        raise CheckFailed(f"imported jasco_fast from {where}, not from this tree ({ROOT})")
    if not torch._C._dispatch_has_kernel_for_dispatch_key("jasco_fast::denorm_transpose", "CUDA"):
        raise CheckFailed(
            f"jasco_fast in {where} has no CUDA kernel for denorm_transpose: the build skipped it "
            f"(see the build's WARNING line)"
        )
    print(f"gpu-check: jasco_fast from {where} has its CUDA kernel")


# ---- bench -----------------------------------------------------------------------------------------------


def _load(script: str):
    spec = importlib.util.spec_from_file_location(f"jasco_fast_{script}", HERE / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BANDWIDTH_SHAPE = (256, 1500, 128)  # 197 MB read + written in float32: long enough to hide launch costs


def measure_bandwidth(device: str, quick: bool, rounds: int = 5, calls: int = 20) -> dict:
    """GB/s (bytes read + written per second) of a device-to-device copy and of the fused op, float32 in,
    timed on the device (CUDA events around `calls` back-to-back calls; wall clock on a CPU), in
    interleaved rounds; medians, with the spread."""
    import jasco_fast

    shape = (16, 1500, 128) if quick else BANDWIDTH_SHAPE
    x = torch.randn(shape, device=device)
    copy_out = torch.empty_like(x)
    mean, std = torch.tensor(-0.0074, device=device), torch.tensor(4.0102, device=device)
    op = jasco_fast.denormalize_transpose
    cases = {
        "copy": (lambda: copy_out.copy_(x), 4),
        "fused": (lambda: op(x, mean, std), 4),
        "fused_channels_last": (lambda: op(x, mean, std, channels_last=True), 4),
        "fused_to_bfloat16": (lambda: op(x, mean, std, dtype=torch.bfloat16), 2),
    }

    def seconds_per_call(fn) -> float:
        for _ in range(3):
            fn()
        if device != "cuda":
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            return (time.perf_counter() - t0) / calls
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / calls

    times = {name: [] for name in cases}
    for _ in range(1 if quick else rounds):
        for name, (fn, _) in cases.items():
            times[name].append(seconds_per_call(fn))
    rows = []
    for name, (_, out_bytes) in cases.items():
        nbytes = x.numel() * (4 + out_bytes)
        gbps = sorted(nbytes / t / 1e9 for t in times[name])
        rows.append(
            {
                "name": name,
                "GBps": statistics.median(gbps),
                "GBps_min": gbps[0],
                "GBps_max": gbps[-1],
                "ms": statistics.median(times[name]) * 1e3,
            }
        )
    copy = rows[0]["GBps"]
    for r in rows:
        r["fraction_of_copy"] = r["GBps"] / copy
    return {
        "benchmark": "bandwidth",
        "device": device_name(device),
        "torch": torch.__version__,
        "shape": list(shape),
        "rounds": len(times["copy"]),
        "calls_per_round": calls,
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
        "command": "python benchmarks/gpu_check.py bench" + (" --device cpu --quick" if quick else ""),
    }


def bench(device: str, quick: bool, dtypes: list[str], results: Path, skip_op: bool) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        raise CheckFailed(
            f"torch {torch.__version__} sees no GPU (torch.cuda.is_available() is False); use "
            f"--device cpu to exercise this code without one"
        )
    tag = device_tag(device)
    results.mkdir(parents=True, exist_ok=True)
    quick_args = ["--quick"] if quick else []
    if not skip_op:
        bandwidth = measure_bandwidth(device, quick)
        write_result(bandwidth, "bandwidth", device, quick, results / f"bandwidth_{tag}.json")
        _load("bench_denorm_transpose").main(
            ["--device", device, *quick_args, "--out", str(results / f"denorm_transpose_{tag}.json")]
        )
    for dtype in dtypes:
        t0 = time.perf_counter()
        _load("bench_decode_throughput").main(
            [
                "--device",
                device,
                "--dtype",
                dtype,
                *quick_args,
                "--out",
                str(results / f"decode_throughput_{dtype}_{tag}.json"),
            ]
        )
        print(f"gpu-check: decode benchmark, {dtype}: {time.perf_counter() - t0:.0f} s", flush=True)


# ---- summary ---------------------------------------------------------------------------------------------


def op_summary(op: dict) -> dict:
    """The op's bandwidth against the copy's, at the largest float32 -> float32 shape (smaller ones are
    launch-bound on a GPU)."""
    same = [r for r in op["rows"] if r.get("out_dtype") == "float32"] or op["rows"]
    row = max(same, key=lambda r: r["shape"][0] * r["shape"][1] * r["shape"][2])
    out = {"shape": row["shape"], "copy_GBps": row["clone_GBps"], "target_fraction": OP_TARGET}
    for key in ("fused", "fused_channels_last"):
        out[f"{key}_GBps"] = row[f"{key}_GBps"]
        out[f"{key}_fraction_of_copy"] = row[f"{key}_GBps"] / row["clone_GBps"]
    out["meets_target"] = min(out["fused_fraction_of_copy"], out["fused_channels_last_fraction_of_copy"]) >= OP_TARGET
    return out


def bandwidth_summary(bandwidth: dict) -> dict:
    """The target is judged here: the op's float32 -> float32 layouts against the copy, both timed on the device."""
    rows = {r["name"]: r for r in bandwidth["rows"]}
    out = {"shape": bandwidth["shape"], "copy_GBps": rows["copy"]["GBps"], "target_fraction": OP_TARGET}
    for key in ("fused", "fused_channels_last", "fused_to_bfloat16"):
        out[f"{key}_GBps"] = rows[key]["GBps"]
        out[f"{key}_fraction_of_copy"] = rows[key]["fraction_of_copy"]
    out["meets_target"] = min(out["fused_fraction_of_copy"], out["fused_channels_last_fraction_of_copy"]) >= OP_TARGET
    return out


def decode_summary(decodes: list[dict], batch: int) -> dict:
    """Per dtype and path, the speedup over eager float32 at `batch` (each length), and the best of all."""
    rows = [
        r
        for d in decodes
        for r in d["rows"]
        if r["path"] != "eager_float32"
        and r["status"] == "ok"
        and r["batch"] == batch
        and r.get("speedup_vs_eager_float32")
    ]
    if not rows:
        return {"batch": batch, "target": DECODE_TARGET, "best": None, "meets_target": False}
    best = max(rows, key=lambda r: r["speedup_vs_eager_float32"])
    return {
        "batch": batch,
        "target": DECODE_TARGET,
        "meets_target": best["speedup_vs_eager_float32"] >= DECODE_TARGET,
        "best": {k: best[k] for k in ("path", "dtype", "seconds", "speedup_vs_eager_float32", "audio_s_per_s")},
        "all": [{k: r[k] for k in ("path", "dtype", "seconds", "speedup_vs_eager_float32")} for r in rows],
    }


def readme_table(decodes: list[dict]) -> str:
    """One line per (B, length, dtype): eager float32 and each fast path of the same run, with the fast
    paths' speedup over that run's eager float32, throughput and peak memory."""
    fast_paths = [p for p in ("compiled", "cudagraphs") if any(r["path"] == p for d in decodes for r in d["rows"])]
    head = ["B", "audio", "dtype", "eager fp32 ms"]
    for p in fast_paths:
        head += [f"{p} ms (min-max)", f"{p} vs eager", f"{p} audio s/s", f"{p} peak MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * 2 + "---|" + "---:|" * (len(head) - 3)]
    for d in sorted(decodes, key=lambda d: DTYPES.index(d["dtype"]) if d["dtype"] in DTYPES else 9):
        by_case: dict[tuple, dict] = {}
        for r in d["rows"]:
            by_case.setdefault((r["seconds"], r["batch"]), {})[r["path"]] = r
        for (seconds, batch), paths in sorted(by_case.items()):
            eager = paths.get("eager_float32", {})
            cells = [
                str(batch),
                f"{seconds:g} s",
                d["dtype"],
                f"{eager['median_s'] * 1e3:.2f}" if eager.get("status") == "ok" else eager.get("status", ""),
            ]
            for p in fast_paths:
                r = paths.get(p)
                if r is None or r["status"] != "ok":
                    cells += [r["status"] if r else "", "", "", ""]
                    continue
                speed, peak = r.get("speedup_vs_eager_float32"), r.get("peak_mem_mb")
                cells += [
                    f"{r['median_s'] * 1e3:.2f} ({r['min_s'] * 1e3:.2f}-{r['max_s'] * 1e3:.2f})",
                    "" if speed is None else f"{speed:.2f}x",
                    f"{r['audio_s_per_s']:.3g}",
                    "" if peak is None else f"{peak:.0f}",
                ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _gbps(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.3g}"


def op_table(op: dict) -> str:
    lines = [
        "| shape | out | copy GB/s | fused GB/s (of copy) | channels-last GB/s (of copy) | eager GB/s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in op["rows"]:
        lines.append(
            f"| {tuple(r['shape'])} | {r['out_dtype']} | {_gbps(r['clone_GBps'])} | {_gbps(r['fused_GBps'])} "
            f"({r['fused_GBps'] / r['clone_GBps']:.0%}) | {_gbps(r['fused_channels_last_GBps'])} "
            f"({r['fused_channels_last_GBps'] / r['clone_GBps']:.0%}) | {_gbps(r['eager_GBps'])} |"
        )
    return "\n".join(lines)


def profile_lines(decodes: list[dict], top: int = 5) -> list[str]:
    """Where the time goes: each run's profiled call, its top kernels (operators on a CPU) by share."""
    lines = []
    for d in decodes:
        case = d.get("profile_case")
        for path, events in d.get("profiles", {}).items():
            shown = "; ".join(
                f"{e['name'][:60]} {e['share']:.0%}" if "share" in e else e.get("error", "?") for e in events[:top]
            )
            lines.append(f"- {d['dtype']} run, {path}, B = {case[0]}, {case[1]:g} s: {shown}")
    return lines


def summary(device: str, results: Path, tag: str | None = None) -> dict:
    tag = tag or device_tag(device)
    op_file = results / f"denorm_transpose_{tag}.json"
    bandwidth_file = results / f"bandwidth_{tag}.json"
    decode_files = sorted(results.glob(f"decode_throughput_*_{tag}.json"))
    if not op_file.is_file() and not decode_files:
        raise CheckFailed(f"no results for {tag} in {results}: run `gpu_check.py bench` first")
    op = json.loads(op_file.read_text()) if op_file.is_file() else None
    bandwidth = json.loads(bandwidth_file.read_text()) if bandwidth_file.is_file() else None
    decodes = [json.loads(p.read_text()) for p in decode_files]
    first = op or decodes[0]
    files = [p for p in (bandwidth_file, op_file) if p.is_file()] + decode_files
    result = {
        "benchmark": "gpu_check",
        "device": first["device"],
        "torch": first.get("torch"),
        "date": max((d.get("date", "") for d in decodes), default="") or time.strftime("%Y-%m-%d"),
        "files": [p.name for p in files],
        "op": bandwidth_summary(bandwidth) if bandwidth else (op_summary(op) if op else None),
        "decode": decode_summary(decodes, TARGET_BATCH),
    }
    out = results / f"gpu_check_{tag}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    text = [f"## {result['device']}, torch {result['torch']}, {result['date']}", ""]
    if op:
        text += [op_table(op), ""]
    if result["op"]:
        s = result["op"]
        extra = f", to bfloat16 {s['fused_to_bfloat16_fraction_of_copy']:.0%}" if "fused_to_bfloat16_GBps" in s else ""
        text += [
            f"fused op at {tuple(s['shape'])}, float32 in: {_gbps(s['fused_GBps'])} GB/s contiguous "
            f"({s['fused_fraction_of_copy']:.0%} of the device-to-device copy's {_gbps(s['copy_GBps'])} GB/s), "
            f"{_gbps(s['fused_channels_last_GBps'])} GB/s channels-last ({s['fused_channels_last_fraction_of_copy']:.0%})"
            f"{extra}; target >= {OP_TARGET:.0%}: {'met' if s['meets_target'] else 'NOT met'}",
            "",
        ]
    if decodes:
        text += [readme_table(decodes), ""]
        d = result["decode"]
        if d["best"]:
            b = d["best"]
            text.append(
                f"decode at B = {TARGET_BATCH}: best {b['speedup_vs_eager_float32']:.2f}x eager float32 "
                f"({b['path']}, {b['dtype']}, {b['seconds']:g} s); target >= {DECODE_TARGET:g}x: "
                f"{'met' if d['meets_target'] else 'NOT met'}"
            )
        else:
            text.append(f"decode at B = {TARGET_BATCH}: not measured")
        profiles = profile_lines(decodes)
        if profiles:
            text += ["", "Where the time goes (share of one profiled call):"] + profiles
    table = out.with_suffix(".md")
    table.write_text("\n".join(text) + "\n")
    print("\n" + "\n".join(text))
    print(f"wrote {out} and {table.name} (the tables for docs/performance.md)")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["preflight", "kernels", "bench", "summary"])
    parser.add_argument(
        "--device", default="cuda", choices=["cuda", "cpu"], help="cpu: exercise the code without a GPU"
    )
    parser.add_argument("--quick", action="store_true", help="small grids (with --device cpu)")
    parser.add_argument("--dtype", action="append", choices=DTYPES, help="decode dtypes (default: all three)")
    parser.add_argument("--skip-op", action="store_true", help="no op benchmark (e.g. a second call for more dtypes)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--tag", help="summary of results made elsewhere, e.g. cuda_h100 (no GPU needed)")
    args = parser.parse_args(argv)
    if args.step == "preflight":
        preflight()
    elif args.step == "kernels":
        kernels()
    elif args.step == "bench":
        bench(args.device, args.quick, args.dtype or list(DTYPES), args.results_dir, args.skip_op)
        summary(args.device, args.results_dir)
    else:
        summary(args.device, args.results_dir, args.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
