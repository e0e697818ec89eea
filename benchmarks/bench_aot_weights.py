"""Ahead-of-time artifact: weights passed in at load time vs weights baked into the package.

    python benchmarks/bench_aot_weights.py [--rounds 7]

Builds the EnCodec 32 kHz decode (``LatentDecoder._decode``, dynamic B and T) three ways with AOTInductor:
``inputs`` (what jasco_fast.artifacts does: every tensor a named constant, none in the package, the
module's own tensors handed over at load), ``baked`` (the default: weights compiled into the package) and
``frozen`` (baked with Inductor's ``freezing``, i.e. constant folding and prepacked oneDNN weights). Reports
build time, package size, load time, and steady-state seconds per call (B = 1 and 2, 10 s of audio),
interleaved with the torch.compile path. Writes benchmarks/results/aot_weights_cpu.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import device_name, spread, write_result

from jasco_fast import DecoderConfig, LatentDecoder, SEANetDecoder, artifacts
from jasco_fast.pipeline import latent_decoder_program

VARIANTS = {
    "inputs": dict(artifacts.INDUCTOR_OPTIONS),
    "baked": {},
    "frozen": {"freezing": True},
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--variants", default="inputs,baked", help="any of inputs,baked,frozen")
    parser.add_argument("--batches", default="1,2", help="batch sizes to time (10 s of audio each)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads; default torch's")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    decoder = SEANetDecoder(DecoderConfig()).eval()
    owner = LatentDecoder(decoder, backend="eager", chunk_frames=None)
    recipe = owner.aot_recipe()
    program = latent_decoder_program(**recipe.params)
    bound = artifacts._Bound(owner, "_decode")
    with torch.no_grad():
        exported = torch.export.export(
            bound, program.example_inputs, dynamic_shapes=(tuple(program.dynamic_shapes),), strict=False
        )
    work = Path(tempfile.mkdtemp(prefix="jasco_fast_aot_weights_"))
    runs, builds = {}, {}
    for name in args.variants.split(","):
        path = work / f"{name}.pt2"
        t = time.perf_counter()
        torch._inductor.aoti_compile_and_package(exported, package_path=str(path), inductor_configs=VARIANTS[name])
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        runner = torch._inductor.aoti_load_package(str(path))
        if name == "inputs":
            weights = artifacts._weights(owner)
            runner.load_constants(
                {k: weights[k] for k in runner.get_constant_fqns()}, check_full_update=True, user_managed=True
            )
        load_s = time.perf_counter() - t
        builds[name] = {"build_s": build_s, "load_s": load_s, "package_mb": path.stat().st_size / 1e6}
        runs[name] = runner
        print(
            f"{name}: build {build_s:.1f} s, load {load_s * 1e3:.1f} ms, {path.stat().st_size / 1e6:.1f} MB", flush=True
        )
    runs["torch_compile"] = LatentDecoder(decoder, backend="inductor", chunk_frames=None)
    rows = {}
    for batch in map(int, args.batches.split(",")):
        x = torch.randn(batch, 500, 128)
        with torch.inference_mode():
            want = owner._decode(x)
            errors = {n: ((f(x) - want).norm() / want.norm()).item() for n, f in runs.items()}  # also warms up
            times = {n: [] for n in runs}
            for _ in range(args.rounds):
                for n, f in runs.items():
                    t = time.perf_counter()
                    f(x)
                    times[n].append(time.perf_counter() - t)
        rows[f"B={batch}"] = {}
        for n, ts in times.items():
            t = spread(ts)
            rows[f"B={batch}"][n] = {
                "median_s": t["median"],
                "min_s": t["min"],
                "max_s": t["max"],
                "over_torch_compile_median": spread([a / b for a, b in zip(ts, times["torch_compile"])])["median"],
                "rel_error": errors[n],
            }
        print(
            f"B={batch}: "
            + ", ".join(
                f"{n} {r['median_s']:.3f} s ({r['over_torch_compile_median']:.2f}x)"
                for n, r in rows[f"B={batch}"].items()
            ),
            flush=True,
        )
    result = {
        "benchmark": "aot_weights",
        "device": device_name("cpu"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "builds": builds,
        "steady_state": rows,
        "note": "shared 2-core machine: other jobs ran at the same time; compare ratios within this run",
        "command": "python benchmarks/bench_aot_weights.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    write_result(result, "aot_weights", "cpu", False, args.out)
    shutil.rmtree(work, ignore_errors=True)  # the packages: up to 0.25 GB
    return result


if __name__ == "__main__":
    main()
