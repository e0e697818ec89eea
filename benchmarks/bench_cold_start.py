"""Cold start: time from a fresh process to the first 10 s of audio, and steady-state decode speed.

    python benchmarks/bench_cold_start.py [--rounds 3] [--quick]

Every measurement is a NEW Python process (``python bench_cold_start.py --child KIND ...``); the parent
starts the clock just before spawning it and stops it when the child reports that its first audio exists.
So the times include the interpreter, ``import torch`` and everything else a user waits for. Kinds:

* ``transformers``: what released JASCO runs: ``EncodecModel.from_pretrained`` of a transformers EnCodec
  folder, then ``model.decoder(latents * std + mean permuted)``, eager.
* ``jasco_fast_empty``: ``load_decoder`` + ``LatentDecoder(decoder)``, the defaults (ahead-of-time backend;
  10 s is decoded in two chunks, "first" and "last"), with an EMPTY artifact cache: the first call runs
  eagerly and starts the background build. The child then waits for that build and reports how long
  after its start the artifacts were ready.
* ``jasco_fast_warm``: the same with the artifact cache warm (built by the previous empty-cache child).
* ``torch_compile``: ``LatentDecoder(backend="inductor")``, the default before this, with
  torch.compile's own on-disk caches warm (its first round warms them and is not counted).

The kinds run in interleaved rounds (one of each per round, each round with a fresh artifact cache); the
table gives medians and min-max. Same random weights for all: a transformers EncodecModel at the
``facebook/encodec_32khz`` architecture is written to a temporary folder, and jasco_fast loads that folder.
Then, in this process: steady-state time per call of the artifact, torch.compile and the eager
channels-last path, interleaved. Writes benchmarks/results/cold_start_cpu.json.
"""

from __future__ import annotations

import time

_T_START = time.perf_counter()  # noqa: E402  (the child measures its own imports from here)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MEAN, STD = -0.0074, 4.0102  # JASCO's latent statistics
KINDS = ("transformers", "jasco_fast_empty", "jasco_fast_warm", "torch_compile")


# --------------------------------------------------------------------------------------------------
# Children: each prints one JSON line; "ready" (flushed) the moment its first audio exists


def _report(**fields) -> None:
    print(json.dumps(fields), flush=True)


def child(kind: str, checkpoint: str, latents_path: str) -> None:
    t = time.perf_counter()
    import torch

    import_torch = time.perf_counter() - t
    latents = torch.load(latents_path, weights_only=True)
    info: dict = {"import_torch_s": import_torch}
    if kind == "transformers":
        t = time.perf_counter()
        from transformers import EncodecModel

        info["import_library_s"] = time.perf_counter() - t
        model = EncodecModel.from_pretrained(checkpoint).eval()
        with torch.inference_mode():
            audio = model.decoder((latents * STD + MEAN).permute(0, 2, 1))
    else:
        t = time.perf_counter()
        import jasco_fast

        info["import_library_s"] = time.perf_counter() - t
        decoder = jasco_fast.load_decoder(checkpoint)
        # the defaults, as a user writes it
        fast = jasco_fast.LatentDecoder(decoder, **({"backend": "inductor"} if kind == "torch_compile" else {}))
        audio = fast(latents)
    _report(event="ready", since_start_s=time.perf_counter() - _T_START, samples=audio.shape[-1], **info)
    if kind.startswith("jasco_fast"):
        info = {
            "backend": fast.backend,
            "artifact_status": fast.artifact_status(),
            "used_artifacts": fast.artifacts_loaded,
        }
        if kind == "jasco_fast_empty" and fast.wait_for_artifacts():  # the build this first call started
            info["artifact_ready_since_start_s"] = time.perf_counter() - _T_START
            fast(latents)
            info["switched_to_artifacts"] = fast.artifacts_loaded
        _report(event="done", **info)


def spawn(kind: str, checkpoint: Path, latents: Path, cache: Path) -> dict:
    env = {
        **os.environ,
        "JASCO_FAST_CACHE_DIR": str(cache),
        "JASCO_FAST_BACKGROUND_BUILD": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(checkpoint), str(latents)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    result: dict = {"kind": kind}
    for line in proc.stdout:
        if line.startswith("{"):
            fields = json.loads(line)
            if fields.pop("event") == "ready":
                result["first_audio_s"] = time.perf_counter() - start
            result.update(fields)
    err = proc.stderr.read()
    if proc.wait() != 0 or "first_audio_s" not in result:
        raise RuntimeError(f"child {kind} failed:\n{err[-3000:]}")
    return result


# --------------------------------------------------------------------------------------------------
# Setup and steady state (in this process)


def write_checkpoint(folder: Path) -> Path:
    import torch
    from _common import ENCODEC_32KHZ
    from transformers import EncodecConfig, EncodecModel

    torch.manual_seed(0)
    EncodecModel(EncodecConfig(**ENCODEC_32KHZ)).eval().save_pretrained(folder)
    return folder


def steady_state(checkpoint: Path, latents, cache: Path, rounds: int) -> dict:
    """Seconds per call of the default decode (10 s: two chunks), interleaved: the artifacts, torch.compile
    (frozen weights), eager channels-last."""
    from _common import spread

    import jasco_fast

    os.environ["JASCO_FAST_CACHE_DIR"] = str(cache)
    decoder = jasco_fast.load_decoder(checkpoint)
    runs = {
        "aot": jasco_fast.LatentDecoder(decoder, backend="aot", background_build=False),
        "torch_compile": jasco_fast.LatentDecoder(decoder, backend="inductor"),
        "eager": jasco_fast.LatentDecoder(decoder, backend="eager"),
    }
    rows = {}
    for batch in (1, 2):
        x = latents.expand(batch, -1, -1).contiguous()
        want = runs["eager"](x)
        for name, fast in runs.items():  # warm-up (torch.compile compiles here for this batch size)
            err = ((fast(x) - want).norm() / want.norm()).item()
            rows.setdefault(f"B={batch}", {})[f"{name}_rel_error_vs_eager"] = err
        if not runs["aot"].artifacts_loaded:
            raise RuntimeError(f"steady state: artifacts not loaded ({runs['aot'].artifact_status()})")
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(rounds):
            for name, fast in runs.items():
                t = time.perf_counter()
                fast(x)
                times[name].append(time.perf_counter() - t)
        row = rows[f"B={batch}"]
        for name, ts in times.items():
            row[f"{name}_s"] = spread(ts)
        row["aot_over_torch_compile"] = spread([a / b for a, b in zip(times["aot"], times["torch_compile"])])
        row["eager_over_torch_compile"] = spread([a / b for a, b in zip(times["eager"], times["torch_compile"])])
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of fresh processes")
    parser.add_argument("--steady-rounds", type=int, default=7, help="interleaved timed calls per path")
    parser.add_argument("--quick", action="store_true", help="1 round, 3 steady-state calls")
    parser.add_argument("--no-torch-compile", action="store_true", help="skip the torch_compile child")
    parser.add_argument(
        "--threads", type=int, default=None, help="intra-op threads in every process (OMP_NUM_THREADS); default torch's"
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--note", default=None, help="how busy the machine was, etc. (recorded in the JSON)")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "CHECKPOINT", "LATENTS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return {}
    rounds, steady_rounds = (1, 3) if args.quick else (args.rounds, args.steady_rounds)
    kinds = [k for k in KINDS if not (args.no_torch_compile and k == "torch_compile")]

    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the children inherit it
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from _common import device_name, spread, write_result

    work = Path(tempfile.mkdtemp(prefix="jasco_fast_cold_start_"))
    checkpoint = write_checkpoint(work / "encodec_32khz_random")
    latents = torch.randn(1, 500, 128, generator=torch.Generator().manual_seed(0))  # 10 s at 50 frames/s
    latents_path = work / "latents.pt"
    torch.save(latents, latents_path)
    inductor_cache = work / "inductor"  # torch.compile's caches: warmed once below, then reused
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(inductor_cache)
    if "torch_compile" in kinds:
        spawn("torch_compile", checkpoint, latents_path, work / "cache_warmup")
    runs: list[dict] = []
    for r in range(rounds):
        cache = work / f"cache_{r}"
        for kind in kinds:  # empty before warm: the empty-cache child's build warms the cache
            result = spawn(kind, checkpoint, latents_path, cache)
            result["round"] = r
            runs.append(result)
            print(
                f"round {r}: {kind:17s} first audio {result['first_audio_s']:6.2f} s "
                f"(import torch {result['import_torch_s']:.2f} s)"
                + (
                    f", artifact ready {result['artifact_ready_since_start_s']:.1f} s after start"
                    if "artifact_ready_since_start_s" in result
                    else ""
                ),
                flush=True,
            )
    summary = {}
    for kind in kinds:
        mine = [x for x in runs if x["kind"] == kind]
        ratio = [
            x["first_audio_s"] / t["first_audio_s"]
            for x in mine
            for t in runs
            if t["kind"] == "transformers" and t["round"] == x["round"]
        ]
        summary[kind] = {
            "first_audio_s": spread([x["first_audio_s"] for x in mine]),
            "over_transformers": spread(ratio),
            "import_torch_s": spread([x["import_torch_s"] for x in mine]),
        }
    builds = [x["artifact_ready_since_start_s"] for x in runs if "artifact_ready_since_start_s" in x]
    if builds:
        summary["jasco_fast_empty"]["artifact_ready_since_start_s"] = spread(builds)
    steady = steady_state(checkpoint, latents, work / f"cache_{rounds - 1}", steady_rounds)
    result = {
        "benchmark": "cold_start",
        "device": device_name("cpu"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "audio_seconds": 10.0,
        "rounds": rounds,
        "summary": summary,
        "runs": runs,
        "steady_state": steady,
        "note": args.note or "compare ratios within this run (other jobs may have shared the machine)",
        "command": "python benchmarks/bench_cold_start.py "
        + " ".join(
            a
            for i, a in enumerate(argv if argv is not None else sys.argv[1:])
            if a != "--note" and (argv or sys.argv[1:])[i - 1] != "--note"
        ),
    }
    print()
    print(f"{'kind':17s} | first audio median (min-max) | / transformers")
    for kind, s in summary.items():
        fa, ov = s["first_audio_s"], s["over_transformers"]
        print(
            f"{kind:17s} | {fa['median']:6.2f} s ({fa['min']:.2f}-{fa['max']:.2f}) | {ov['median']:.2f}x "
            f"({ov['min']:.2f}-{ov['max']:.2f})"
        )
    for batch, row in steady.items():
        print(
            f"steady state {batch}, 10 s: aot {row['aot_s']['median']:.3f} s, torch.compile "
            f"{row['torch_compile_s']['median']:.3f} s, eager {row['eager_s']['median']:.3f} s; aot / torch.compile "
            f"{row['aot_over_torch_compile']['median']:.3f} ({row['aot_over_torch_compile']['min']:.3f}-"
            f"{row['aot_over_torch_compile']['max']:.3f})"
        )
    write_result(result, "cold_start", "cpu", args.quick, args.out)
    shutil.rmtree(work, ignore_errors=True)  # checkpoint, caches: ~0.25 GB
    return result


if __name__ == "__main__":
    main()
