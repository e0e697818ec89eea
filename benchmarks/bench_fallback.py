"""How much slower is denorm_transpose's PyTorch fallback (what devices without a compiled kernel run) than
the compiled kernel, for the op alone and for a whole decode?

    python benchmarks/bench_fallback.py [--device cpu|cuda] [--quick]

The fallback is reached through the dispatcher as on a device without a kernel: the op is redispatched to
a backend key nothing is compiled for (PrivateUse1). For the decode, the device's compiled kernel is
overridden for the measurement by one that takes that route (restored afterwards). Interleaved rounds;
per round the ratio fallback / kernel; medians and the spread of the ratio over rounds.
Writes benchmarks/results/fallback_<device>.json.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch
import torch.utils.benchmark as tbench
from _common import device_name, spread, write_result

import jasco_fast
from jasco_fast import ops

OP = torch.ops.jasco_fast.denorm_transpose.default
KERNEL_LESS = torch._C.DispatchKeySet(torch._C.DispatchKey.PrivateUse1)
SHAPES = [(1, 500, 128), (16, 1500, 128)]


def fallback(*args):
    return OP.redispatch(KERNEL_LESS, *args)


def seconds(fn, min_run_time: float) -> float:
    timer = tbench.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def summarise(kernel: list[float], slow: list[float]) -> dict:
    ratio = spread([s / k for k, s in zip(kernel, slow)])
    return {
        "kernel_ms": spread(kernel, 1e3)["median"],
        "fallback_ms": spread(slow, 1e3)["median"],
        "fallback_over_kernel": ratio["median"],
        "ratio_min": ratio["min"],
        "ratio_max": ratio["max"],
    }


def bench_op(device: str, rounds: int, min_run_time: float) -> list[dict]:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rows = []
    for shape in SHAPES:
        for out_dtype in (None, torch.bfloat16):
            for channels_last in (False, True):
                x = torch.randn(shape, device=device)
                args = (
                    x,
                    torch.tensor(jasco_fast.JASCO_LATENT_MEAN, device=device),
                    torch.tensor(jasco_fast.JASCO_LATENT_STD, device=device),
                    out_dtype,
                    channels_last,
                )
                assert torch.equal(OP(*args), fallback(*args))
                kernel, slow = [], []
                for _ in range(rounds):
                    kernel.append(seconds(lambda: (OP(*args), sync()), min_run_time))
                    slow.append(seconds(lambda: (fallback(*args), sync()), min_run_time))
                row = {
                    "shape": list(shape),
                    "out_dtype": str(out_dtype or torch.float32).replace("torch.", ""),
                    "channels_last": channels_last,
                    **summarise(kernel, slow),
                }
                rows.append(row)
                print(
                    f"  op {tuple(shape)} -> {row['out_dtype']:8s} channels_last={channels_last!s:5s}  kernel "
                    f"{row['kernel_ms']:8.3f} ms  fallback {row['fallback_ms']:8.3f} ms  "
                    f"{row['fallback_over_kernel']:.2f}x ({row['ratio_min']:.2f}-{row['ratio_max']:.2f})"
                )
    return rows


def bench_decode(device: str, rounds: int, seconds_of_audio: float) -> dict:
    """Eager LatentDecoder (B = 1, EnCodec 32 kHz, random weights): the op's share of a decode."""
    import time

    torch.manual_seed(0)
    decoder = jasco_fast.SEANetDecoder(jasco_fast.DecoderConfig()).to(device).eval()
    fast = jasco_fast.LatentDecoder(decoder, backend="eager")
    latents = torch.randn(1, int(seconds_of_audio * 50), 128, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    key = {"cpu": "CPU", "cuda": "CUDA"}[device]

    def timed() -> float:
        sync()
        start = time.perf_counter()
        fast(latents)
        sync()
        return time.perf_counter() - start

    fast(latents)  # warm-up
    kernel, slow = [], []
    for _ in range(rounds):
        kernel.append(timed())
        library = torch.library.Library("jasco_fast", "IMPL")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            library.impl("denorm_transpose", fallback, key)
            slow.append(timed())
        library._destroy()
    row = {"batch": 1, "audio_seconds": seconds_of_audio, "compile": False, **summarise(kernel, slow)}
    print(
        f"  decode 1 x {seconds_of_audio:g} s eager: kernel {row['kernel_ms']:.0f} ms  fallback "
        f"{row['fallback_ms']:.0f} ms  {row['fallback_over_kernel']:.3f}x "
        f"({row['ratio_min']:.3f}-{row['ratio_max']:.3f})"
    )
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if not torch._C._dispatch_has_kernel_for_dispatch_key("jasco_fast::denorm_transpose", args.device.upper()):
        raise SystemExit(f"no compiled {args.device} kernel in this build: nothing to compare the fallback with")
    warnings.simplefilter("ignore", ops.FallbackWarning)
    rounds = 3 if args.quick else 7
    print(f"denorm_transpose: PyTorch fallback vs compiled kernel on {device_name(args.device)}")
    result = {
        "device": device_name(args.device),
        "torch": torch.__version__,
        "rounds": rounds,
        "op": bench_op(args.device, rounds, 0.05 if args.quick else 0.2),
        "decode": bench_decode(args.device, rounds, 2.0 if args.quick else 10.0),
    }
    write_result(result, "fallback", args.device, args.quick, args.out)
    return result


if __name__ == "__main__":
    main()
