"""Before / after a change: the same decode workloads run from two checkouts of jasco_fast, in interleaved rounds.

    python benchmarks/compare_checkouts.py BEFORE AFTER [--rounds 5] [--reuse-freed-memory] [--note ...]

BEFORE and AFTER are two checkouts (e.g. ``git worktree add ../before <commit>``), each with its extension built in
place. Every measurement is a fresh process whose working directory and ``PYTHONPATH`` are one checkout, with that
checkout's own artifact cache, built first (``python -m jasco_fast compile``). The workloads, B = 1, on an EnCodec
32 kHz decoder with random weights read from a transformers folder:

* ``cold``: a fresh process to the first 10 s of audio (``import``, ``load_decoder``, ``LatentDecoder``, first call;
  default backend, artifacts cached);
* ``default_10s``: a warm 10 s call on the default backend (median of 5);
* ``eager_10s``: a warm 10 s call, eager (median of 3);
* ``default_60s``: a warm 60 s call (chunked), default backend (median of 2);
* ``op:<name>``: one call of each op on the decoder's shapes (median of a few dozen, after warm-up): the LSTM
  block (2 layers, C = 1024, 10 s, float32 and int8 recurrent, prepacked), denorm_transpose, codes_to_latents and
  the three tail ops.

``--reuse-freed-memory``: each process calls ``jasco_fast.reuse_freed_memory()`` first where the checkout has it
(what the CLI does). Prints the medians and the after / before ratio per round (median and range); writes
benchmarks/results/checkouts_cpu.json (or --out). Needs transformers (the `bench` extra).
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
from _common import ENCODEC_32KHZ, provenance, spread, write_result

CHILD = r"""
import inspect, json, statistics, sys, time
t0, kind, checkpoint, latents_dir, reuse = float(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
import torch
import jasco_fast
from jasco_fast import LatentDecoder, load_decoder
if reuse == "1" and hasattr(jasco_fast, "reuse_freed_memory"):
    jasco_fast.reuse_freed_memory()
eager = {"backend": "eager"} if "backend" in inspect.signature(LatentDecoder).parameters else {"compile": False}
short = torch.load(f"{latents_dir}/short.pt")
out = {}
def per_call(call, seconds=0.4):
    for _ in range(3):
        call()
    times, start = [], time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < seconds and len(times) < 200):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
with torch.inference_mode():
    if kind == "ops":
        g = torch.Generator().manual_seed(0)
        ops = torch.ops.jasco_fast
        lat = torch.randn(1, 500, 128, generator=g)
        big = torch.randn(16, 1500, 128, generator=g)
        m, s = torch.tensor(-0.0074), torch.tensor(4.0102)
        out["op:denorm_transpose_1x500"] = per_call(lambda: ops.denorm_transpose(lat, m, s, None, True))
        out["op:denorm_transpose_16x1500"] = per_call(lambda: ops.denorm_transpose(big, m, s, None, False))
        codes, books = torch.randint(0, 2048, (1, 4, 500), generator=g), torch.randn(4, 2048, 128, generator=g)
        out["op:codes_to_latents"] = per_call(lambda: ops.codes_to_latents(codes, books, None, True))
        C = 1024
        w = []
        for _ in range(2):
            w += [torch.randn(4 * C, C, generator=g) * 0.03, torch.randn(4 * C, C, generator=g) * 0.03]
            w += [torch.randn(4 * C, generator=g) * 0.01, torch.randn(4 * C, generator=g) * 0.01]
        seq = torch.randn(1, 500, C, generator=g)
        for name, rd in (("float32", None), ("int8", torch.int8)):
            packed = ops.lstm_pack([w[1], w[5]], rd)
            out[f"op:lstm_skip_{name}"] = per_call(lambda: ops.lstm_skip(seq, w, 2, None, None, None, rd, packed), 1.0)
        cl = torch.channels_last
        x = torch.randn(1, 64, 1, 32000, generator=g).contiguous(memory_format=cl)
        w1, b1 = torch.randn(32, 64, 1, 3, generator=g) * 0.1, torch.randn(32, generator=g)
        w2, b2 = torch.randn(64, 32, 1, 1, generator=g) * 0.1, torch.randn(64, generator=g)
        out["op:elu_resblock"] = per_call(lambda: ops.elu_resblock(x, w1, b1, w2, b2, 1, 1, 1, "reflect", 1.0))
        wc, bc = torch.randn(1, 64, 1, 7, generator=g) * 0.1, torch.randn(1, generator=g)
        out["op:elu_conv"] = per_call(lambda: ops.elu_conv(x, wc, bc, 1, 3, 3, "reflect", 1.0))
        xt = torch.randn(1, 128, 1, 8000, generator=g).contiguous(memory_format=cl)
        wt, bt = torch.randn(128, 64, 1, 8, generator=g) * 0.1, torch.randn(64, generator=g)
        out["op:elu_conv_transpose"] = per_call(lambda: ops.elu_conv_transpose(xt, wt, bt, 4, 2, 2, 1.0))
        print("RESULT " + json.dumps(out), flush=True)
        raise SystemExit
    if kind == "cold":
        fast = LatentDecoder(load_decoder(checkpoint), background_build=False)
        fast(short)
        out["cold"] = time.time() - t0
    else:
        def median(decode, x, n):
            decode(x)
            times = []
            for _ in range(n):
                t = time.perf_counter()
                decode(x)
                times.append(time.perf_counter() - t)
            return statistics.median(times)
        long = torch.load(f"{latents_dir}/long.pt")
        fast = LatentDecoder(load_decoder(checkpoint), background_build=False)
        slow = LatentDecoder(load_decoder(checkpoint), background_build=False, **eager)
        out["default_10s"] = median(fast, short, 5)
        out["eager_10s"] = median(slow, short, 3)
        out["default_60s"] = median(fast, long, 2)
    out["artifacts_loaded"] = bool(getattr(fast, "artifacts_loaded", False))
print("RESULT " + json.dumps(out), flush=True)
"""


def child_env(checkout: Path, cache: Path) -> dict[str, str]:
    return dict(
        os.environ,
        PYTHONPATH=str(checkout),
        JASCO_FAST_CACHE_DIR=str(cache),
        TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"),
        JASCO_FAST_BACKGROUND_BUILD="0",
    )


def measure(checkout: Path, cache: Path, kind: str, work: Path, reuse: bool) -> dict:
    start = time.time()
    args = [sys.executable, "-c", CHILD, str(start), kind, str(work / "encodec32"), str(work), "1" if reuse else "0"]
    run = subprocess.run(args, cwd=checkout, env=child_env(checkout, cache), capture_output=True, text=True)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    if run.returncode or not lines:
        raise SystemExit(f"{checkout}: {kind} failed\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    if kind != "ops" and not result.pop("artifacts_loaded"):
        raise SystemExit(f"{checkout}: the default backend ran without its cached artifacts")
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reuse-freed-memory", action="store_true")
    parser.add_argument("--note", default=None)
    parser.add_argument(
        "--kinds",
        default="cold,warm,ops",
        help="which measurements, comma-separated: cold, warm (the decode calls), ops",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    from transformers import EncodecConfig, EncodecModel

    checkouts = {"before": args.before.resolve(), "after": args.after.resolve()}
    with tempfile.TemporaryDirectory(prefix="jasco_fast_checkouts_") as tmp:
        work = Path(tmp)
        torch.manual_seed(0)
        EncodecModel(EncodecConfig(**ENCODEC_32KHZ)).eval().save_pretrained(work / "encodec32")
        gen = torch.Generator().manual_seed(1)
        torch.save(torch.randn(1, 500, 128, generator=gen) * 0.25, work / "short.pt")
        torch.save(torch.randn(1, 3000, 128, generator=gen) * 0.25, work / "long.pt")
        caches = {name: work / f"cache-{name}" for name in checkouts}
        for name, checkout in checkouts.items() if {"cold", "warm"} & set(args.kinds.split(",")) else ():
            build = [sys.executable, "-m", "jasco_fast", "compile", "--checkpoint", str(work / "encodec32")]
            subprocess.run(build, cwd=checkout, env=child_env(checkout, caches[name]), check=True, capture_output=True)
        samples: dict[str, dict[str, list[float]]] = {name: {} for name in checkouts}
        for r in range(args.rounds):
            order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
            for kind in args.kinds.split(","):
                for name in order:
                    result = measure(checkouts[name], caches[name], kind, work, args.reuse_freed_memory)
                    for workload, seconds in result.items():
                        samples[name].setdefault(workload, []).append(seconds)
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    rows = {}
    print(f"{'workload':28} {'before s':>9} {'after s':>9}  after / before per round")
    for workload, before in samples["before"].items():
        after = samples["after"][workload]
        ratios = [a / b for a, b in zip(after, before)]
        rows[workload] = {"before": spread(before), "after": spread(after), "ratio": spread(ratios)}
        print(
            f"{workload:28} {statistics.median(before):9.5f} {statistics.median(after):9.5f}  "
            f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
        )
    result = {
        **provenance("compare_checkouts.py", argv, "cpu", args.note),
        "checkouts": {name: _describe(path) for name, path in checkouts.items()},
        "rounds": args.rounds,
        "reuse_freed_memory": args.reuse_freed_memory,
        "workloads": rows,
    }
    write_result(result, "checkouts", "cpu", False, args.out)
    return result


def _describe(checkout: Path) -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True, text=True)
    return {"path": str(checkout), "git_commit": commit.stdout.strip() or None}


if __name__ == "__main__":
    main()
