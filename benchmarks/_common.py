"""What the benchmark scripts share: the device's name, the run's provenance, summaries of repeated
timings, and writing the results file.

The scripts import it (and _fidelity, _peers) by name: run as ``python benchmarks/bench_<name>.py`` (or by
``jasco-fast bench``, which runs them so), a script's folder is first on its path; the tests get the folder
through pytest's ``pythonpath`` (pyproject.toml). Nothing edits ``sys.path``."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent


ENCODEC_32KHZ = dict(  # facebook/encodec_32khz's config.json (architecture fields): the decoder the benchmarks measure
    audio_channels=1,
    sampling_rate=32000,
    num_filters=64,
    upsampling_ratios=[8, 5, 4, 4],
    hidden_size=128,
    num_residual_layers=1,
    num_lstm_layers=2,
    compress=2,
    kernel_size=7,
    last_kernel_size=7,
    residual_kernel_size=3,
    dilation_growth_rate=2,
    norm_type="weight_norm",
    use_causal_conv=False,
    pad_mode="reflect",
    use_conv_shortcut=False,
    codebook_size=2048,
    codebook_dim=128,
    target_bandwidths=[2.2],
    normalize=False,
    chunk_length_s=None,
    overlap=None,
)


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"CPU ({torch.get_num_threads()} threads)"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return out.stdout.strip() + ("+uncommitted changes" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def load_average() -> list[float] | None:
    """1/5/15-minute load averages: how busy the machine was (other jobs make CPU timings noisy)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def provenance(script: str, argv: list[str] | None, device: str, note: str | None) -> dict:
    """Who, when, where and how: enough to rerun the measurement and to judge it."""
    args = sys.argv[1:] if argv is None else list(argv)
    # the note is recorded on its own; the command is what reproduces the numbers
    args = [
        a
        for i, a in enumerate(args)
        if a != "--note" and (i == 0 or args[i - 1] != "--note") and not a.startswith("--note=")
    ]
    import jasco_fast
    from jasco_fast import modes
    from jasco_fast.info import ISA_CAPS

    caps = {k: os.environ[k] for k in ISA_CAPS if os.environ.get(k)}
    cpuid_as = os.environ.get("CPUID_AS", "avx2") if "cpuid_as.so" in os.environ.get("LD_PRELOAD", "") else None
    emulated = bool(caps or cpuid_as) and modes.cpu_class() != _uncapped_cpu_class()
    cpu = {
        "cpu_class": modes.cpu_class(),
        "isa_caps": caps,
        "cpuid_as": cpuid_as,  # tools/cpuid-as: every library in the process saw this class's CPUID
        "cpu_class_emulated": emulated,
        # the caps reach torch, oneDNN, MKL and jasco_fast only; tools/cpuid-as reaches the peers too
        "peers_instruction_set": "emulated class" if emulated and cpuid_as else "the real CPU's",
    }
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", f"benchmarks/{script}", *map(shlex.quote, args)]),
        "device": device_name(device),
        "device_type": device,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "jasco_fast": jasco_fast.__version__,
        "git_commit": _git_commit(),
        "load_average_at_start": load_average(),
        "note": note,
        **cpu,
    }


def _uncapped_cpu_class() -> str:
    """The CPU class without instruction-set caps (a fresh process: torch reads ATEN_CPU_CAPABILITY at start)."""
    from jasco_fast.info import ISA_CAPS

    env = {k: v for k, v in os.environ.items() if k not in (*ISA_CAPS, "CPUID_AS", "LD_PRELOAD", "GLIBC_TUNABLES")}
    out = subprocess.run(
        [sys.executable, "-c", "from jasco_fast import modes; print(modes.cpu_class())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    return out.stdout.strip() or "unknown"


def spread(samples: list[float], scale: float = 1.0) -> dict:
    """median, min, max (scaled) and the number of samples: report the median, judge it by the spread."""
    return {
        "median": statistics.median(samples) * scale,
        "min": min(samples) * scale,
        "max": max(samples) * scale,
        "n": len(samples),
    }


def write_result(result: dict, name: str, device: str, quick: bool, out: Path | None) -> Path:
    """benchmarks/results/<name>_<device>[_quick].json unless `out` is given."""
    result["load_average_at_end"] = load_average()
    path = out or RESULTS / f"{name}_{device}{'_quick' if quick else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def ready_decoder(decoder, *args, **kwargs):
    """``LatentDecoder(decoder, *args, **kwargs)`` ready to be timed: with the ahead-of-time backend (the CPU
    default) its artifacts are built now if the cache lacks them, and loaded, so no call runs eagerly while
    a background process builds them."""
    from jasco_fast import LatentDecoder, artifacts

    fast = LatentDecoder(decoder, *args, **kwargs, background_build=False)
    if fast.backend != "aot":
        return fast
    for recipe in fast.aot_recipes():
        artifacts.build(recipe)
    status = fast.load_artifacts()
    if not fast.artifacts_loaded:
        raise RuntimeError(f"artifacts built but not loaded: {status}")
    return fast
