"""``jasco-fast info``: what this install runs, for bug reports and troubleshooting.

``collect()`` returns a JSON-ready dict: torch and its build, jasco_fast's ops with their compiled kernels
per device, the path each visible device takes, the CPU fast path the extension chose at run time, the
cache folder, the CPU class with the recommended mode (``dtype="auto"``), and the versions of the audio/loading dependencies (libsndfile's formats included).
``render(report)`` is the text form. Each section is collected on its own: one that fails reports its error
instead of hiding the others.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import sys
from pathlib import Path

import torch

__all__ = ["collect", "render", "op_path"]

# Backend dispatch keys a compiled kernel may be registered for (a ROCm torch's GPUs use "CUDA" too).
KERNEL_KEYS = ("CPU", "CUDA", "MPS", "XPU")
DEVICE_KEYS = {"cpu": "CPU", "cuda": "CUDA", "mps": "MPS", "xpu": "XPU"}
# jasco_fast's output formats -> the libsndfile (major format, subtype) each needs.
ENCODERS = {
    "wav": ("WAV", "PCM_16"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "ogg": ("OGG", "VORBIS"),
    "flac": ("FLAC", "PCM_16"),
}
PACKAGES = ("soundfile", "pyloudnorm", "transformers", "omegaconf", "safetensors", "numpy", "tqdm", "triton")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _torch() -> dict:
    hip, cuda = getattr(torch.version, "hip", None), torch.version.cuda
    return {
        "version": torch.__version__,
        "build": f"ROCm {hip}" if hip else f"CUDA {cuda}" if cuda else "CPU",
        "cuda": cuda,
        "hip": hip,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "path": str(Path(torch.__file__).parent),
    }


def _has_kernel(op: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(op, key)


def _tensor_ops() -> list[str]:
    """jasco_fast's ops that take tensors (query ops such as cpu_fast_path have no device to run on)."""
    names = []
    for name in sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("jasco_fast::")):
        packet = getattr(torch.ops.jasco_fast, name.split("::", 1)[1])
        schema = packet.default._schema
        if any("Tensor" in str(a.type) for a in schema.arguments):
            names.append(name)
    return names


def op_path(op: str, device_type: str) -> str:
    """How ``op`` runs on ``device_type``: "compiled kernel", "device-generic kernel", "PyTorch fallback" or
    "none"."""
    from jasco_fast.ops import FALLBACKS

    key = DEVICE_KEYS.get(device_type)
    if key and _has_kernel(op, key):
        return "compiled kernel"
    if op in FALLBACKS:
        return "PyTorch fallback"
    if _has_kernel(op, "CompositeExplicitAutograd") or _has_kernel(op, "CompositeImplicitAutograd"):
        return "device-generic kernel"
    return "none"


def _ops() -> dict:
    from jasco_fast.ops import FALLBACKS

    report = {}
    for op in _tensor_ops():
        report[op] = {
            "compiled_kernels": [k for k in KERNEL_KEYS if _has_kernel(op, k)],
            "pytorch_fallback": op in FALLBACKS,
            "device_generic": op not in FALLBACKS
            and (_has_kernel(op, "CompositeExplicitAutograd") or _has_kernel(op, "CompositeImplicitAutograd")),
        }
    return report


def _extension() -> dict:
    import jasco_fast
    from jasco_fast import extension

    return {
        "version": jasco_fast.__version__,
        "package": str(Path(jasco_fast.__file__).parent),
        "extension": extension.STATUS.path,
        "loaded": extension.STATUS.loaded,
        "not_loaded_because": extension.STATUS.reason,
        "torch_target": ".".join(map(str, extension.TORCH_TARGET)),
    }


def _cpu_fast_path() -> dict:
    path = torch.ops.jasco_fast.cpu_fast_path()
    meaning = (
        "no compiled kernels (see the extension section): every op runs its PyTorch implementation"
        if path == "none"
        else "AVX2+F16C vector tiles for float32/float16/bfloat16 latents with contiguous channels; float64 "
        "and non-contiguous channels use the portable loops"
        if path == "avx2+f16c"
        else "portable (auto-vectorised) loops for every dtype: this CPU lacks AVX2/F16C or is not x86-64"
    )
    return {"denorm_transpose": path, "description": meaning}


ISA_CAPS = (
    "JASCO_FAST_ISA",
    "JASCO_FAST_LSTM_ISA",
    "JASCO_FAST_TAIL_ISA",
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
)


def _modes() -> dict:
    """The CPU class, its native reduced-precision arithmetic, and the automatic mode per visible device."""
    from jasco_fast import modes

    devices = (
        ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else ["cpu"]
    )
    recommended = {}
    for device in devices:
        row = modes.auto_mode(device)
        recommended[device] = {
            "mode": row.name,
            "dtype": str(row.dtype).replace("torch.", ""),
            "recurrent_dtype": None if row.recurrent_dtype is None else str(row.recurrent_dtype).replace("torch.", ""),
            "conv_format": row.conv_format,
            "evidence": row.evidence,
        }
    caps = {k: os.environ[k] for k in ISA_CAPS if os.environ.get(k)}
    if "cpuid_as.so" in os.environ.get("LD_PRELOAD", ""):  # tools/cpuid-as: CPUID itself reports a smaller class
        caps["CPUID_AS"] = os.environ.get("CPUID_AS", "avx2")
    return {
        "cpu_class": modes.cpu_class(),
        "native_cpu_arithmetic": modes.native_cpu_arithmetic(),
        "isa_caps": caps,
        "recommended": recommended,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _devices(ops: list[str]) -> list[dict]:
    def paths(device_type):
        return {op: op_path(op, device_type) for op in ops}

    devices = [{"device": "cpu", "name": _cpu_name(), "cores": os.cpu_count(), "ops": paths("cpu")}]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append(
                {
                    "device": f"cuda:{i}",
                    "name": props.name,
                    "capability": f"{props.major}.{props.minor}",
                    "memory_gib": round(props.total_memory / 2**30, 1),
                    "ops": paths("cuda"),
                }
            )
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append({"device": "mps", "name": "Apple MPS", "ops": paths("mps")})
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        for i in range(xpu.device_count()):
            devices.append({"device": f"xpu:{i}", "name": xpu.get_device_name(i), "ops": paths("xpu")})
    return devices


def _compile() -> dict:
    cxx = os.environ.get("CXX") or next((c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)
    return {"cxx": shutil.which(cxx) if cxx else None, "triton": _version("triton")}


def _cache() -> dict:
    from jasco_fast.artifacts import cache_location

    path, source = cache_location()
    report = {"path": str(path), "source": source, "exists": path.is_dir(), "entries": [], "bytes": 0}
    if path.is_dir():
        for entry in sorted(path.iterdir()):
            size = (
                entry.stat().st_size
                if entry.is_file()
                else sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
            )
            report["entries"].append({"name": entry.name, "bytes": size})
            report["bytes"] += size
    return report


def _packages() -> dict:
    report = {name: {"version": _version(name)} for name in PACKAGES}
    try:
        import soundfile

        from jasco_fast.audio import FORMATS

        available = soundfile.available_formats()
        report["soundfile"]["libsndfile"] = soundfile.__libsndfile_version__
        report["soundfile"]["formats"] = sorted(available)
        # what jasco_fast writes: the container and its encoder (MP3 needs libsndfile >= 1.1)
        report["soundfile"]["jasco_fast_formats"] = {
            f: major in available and subtype in soundfile.available_subtypes(major)
            for f, (major, subtype) in ENCODERS.items()
            if f in FORMATS
        }
    except Exception as exc:  # e.g. libsndfile missing: say so
        report["soundfile"]["error"] = f"{type(exc).__name__}: {exc}"
    return report


def _notes(report: dict) -> list[str]:
    """What in the report needs action, one sentence each (docs/troubleshooting.md has more)."""
    notes = []
    t, ops = report.get("torch", {}), report.get("ops", {})
    op = ops.get("jasco_fast::denorm_transpose", {}) if "error" not in ops else {}
    if t.get("cuda") and not t.get("hip") and op and "CUDA" not in op["compiled_kernels"]:
        notes.append(
            f"torch is a CUDA {t['cuda']} build but the extension has no CUDA kernel, so CUDA tensors run "
            f"the PyTorch fallback: install jasco_fast's CUDA wheel (`make wheel-cuda`), or install the CUDA "
            f"{t['cuda']} toolkit (nvcc) or set CUDA_HOME, then rebuild with `pip install --no-build-isolation -e .`"
        )
    if t.get("hip"):
        notes.append("ROCm build: AMD GPUs run the PyTorch fallback of denorm_transpose (no HIP kernels are built)")
    x86 = platform.machine() in ("x86_64", "AMD64")
    if report.get("cpu_fast_path", {}).get("denorm_transpose") == "portable" and x86:
        notes.append("this CPU lacks AVX2/F16C: the CPU kernel runs its portable loops")
    if "cxx" in report.get("torch_compile", {}) and not report["torch_compile"]["cxx"]:
        notes.append(
            "no C++ compiler found: torch.compile cannot build CPU code; install g++ or run with "
            '--backend eager / LatentDecoder(..., backend="eager")'
        )
    sf = report.get("packages", {}).get("soundfile", {})
    missing = [f for f, ok in sf.get("jasco_fast_formats", {}).items() if not ok]
    if missing:
        notes.append(
            f"libsndfile {sf.get('libsndfile')} cannot write {', '.join(missing)}: upgrade soundfile "
            f"(its wheels bundle libsndfile 1.2)"
        )
    if "error" in sf:
        notes.append("soundfile/libsndfile failed to load: audio files cannot be written")
    errors = [name for name, section in report.items() if isinstance(section, dict) and "error" in section]
    if errors:
        notes.append(f"sections that failed: {', '.join(errors)} (their errors are shown above)")
    return notes


def collect() -> dict:
    """Everything ``jasco-fast info`` reports, as a JSON-ready dict."""
    report: dict = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name, section in (
        ("jasco_fast", _extension),
        ("torch", _torch),
        ("ops", _ops),
        ("cpu_fast_path", _cpu_fast_path),
        ("modes", _modes),
        ("torch_compile", _compile),
        ("cache", _cache),
        ("packages", _packages),
    ):
        try:
            report[name] = section()
        except Exception as exc:
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        report["devices"] = _devices(list(report["ops"]) if "error" not in report["ops"] else [])
    except Exception as exc:
        report["devices"] = [{"error": f"{type(exc).__name__}: {exc}"}]
    report["notes"] = _notes(report)
    return report


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def render(report: dict) -> str:
    """The text form of ``collect()``'s report."""
    lines = []

    def section(title, body):
        if isinstance(body, dict) and "error" in body:
            lines.append(f"{title}: ERROR {body['error']}")
            return False
        return True

    jf = report["jasco_fast"]
    if section("jasco_fast", jf):
        lines.append(f"jasco_fast {jf['version']} ({jf['package']})")
        if jf["loaded"]:
            lines.append(f"  extension: {jf['extension']} (stable ABI of torch {jf['torch_target']} and later)")
        else:
            lines.append(
                f"  extension: NOT LOADED, every op runs its PyTorch implementation: {jf['not_loaded_because']}"
            )
    t = report["torch"]
    if section("torch", t):
        lines.append(
            f"torch {t['version']}, build: {t['build']}, CPU capability {t['cpu_capability']}, {t['threads']} threads"
        )
    lines.append(f"python {report['python']} on {report['platform']}")

    ops = report["ops"]
    if section("ops", ops):
        lines.append("ops:")
        for op, o in ops.items():
            if o["device_generic"]:
                how = "device-generic kernel (every device)"
            else:
                how = f"compiled kernels: {', '.join(o['compiled_kernels']) or 'none'}"
                if o["pytorch_fallback"]:
                    how += "; every other device: PyTorch fallback"
            lines.append(f"  {op}: {how}")
    cpu = report["cpu_fast_path"]
    if section("CPU fast path", cpu):
        lines.append(f"CPU fast path: {cpu['denorm_transpose']} ({cpu['description']})")
    m = report["modes"]
    if section("modes", m):
        native = ", ".join(
            f"{k} {'native' if v else 'EMULATED (slow: use float32 or dtype auto)'}"
            for k, v in m["native_cpu_arithmetic"].items()
        )
        caps = f"; capped by {', '.join(f'{k}={v}' for k, v in m['isa_caps'].items())}" if m["isa_caps"] else ""
        lines.append(f"CPU class: {m['cpu_class']} ({native}{caps})")
        lines.append("recommended mode on this machine (dtype='auto', --dtype auto; the default is float32, exact):")
        for device, r in m["recommended"].items():
            lines.append(f"  {device}: {r['mode']} ({r['evidence']})")

    lines.append("devices:")
    for d in report["devices"]:
        if "error" in d:
            lines.append(f"  ERROR {d['error']}")
            continue
        extra = f", {d['cores']} cores" if d["device"] == "cpu" else ""
        if "capability" in d:
            extra = f", compute capability {d['capability']}, {d['memory_gib']} GiB"
        lines.append(f"  {d['device']}: {d['name']}{extra}")
        for op, path in d["ops"].items():
            lines.append(f"      {op.split('::', 1)[1]}: {path}")
    if len(report["devices"]) == 1:
        lines.append("  (no CUDA, ROCm, MPS or XPU device visible to torch)")

    c = report["torch_compile"]
    if section("torch.compile", c):
        lines.append(
            f"torch.compile: C++ compiler {c['cxx'] or 'NOT FOUND (needed on CPU)'}, "
            f"triton {c['triton'] or 'not installed (needed on GPUs)'}"
        )

    cache = report["cache"]
    if section("cache", cache):
        where = {
            "JASCO_FAST_CACHE_DIR": "from JASCO_FAST_CACHE_DIR",
            "XDG_CACHE_HOME": "from XDG_CACHE_HOME",
            "default": "default; JASCO_FAST_CACHE_DIR overrides",
        }[cache["source"]]
        state = f"{len(cache['entries'])} entries, {_size(cache['bytes'])}" if cache["exists"] else "does not exist yet"
        lines.append(f"cache: {cache['path']} ({where}): {state}")
        for e in cache["entries"][:20]:
            lines.append(f"  {e['name']}  {_size(e['bytes'])}")
        if len(cache["entries"]) > 20:
            lines.append(f"  ... {len(cache['entries']) - 20} more")

    p = report["packages"]
    lines.append("packages:")
    sf = p["soundfile"]
    if "error" in sf:
        lines.append(f"  soundfile {sf['version']}: ERROR {sf['error']}")
    else:
        writes = ", ".join(f"{f}{'' if ok else ' (MISSING)'}" for f, ok in sf["jasco_fast_formats"].items())
        lines.append(f"  soundfile {sf['version']} (libsndfile {sf['libsndfile']}): writes {writes}")
        lines.append(f"    libsndfile formats: {', '.join(sf['formats'])}")
    for name in PACKAGES[1:]:
        lines.append(f"  {name} {p[name]['version'] or 'not installed'}")
    lines.append("notes: " + ("none" if not report["notes"] else ""))
    lines += [f"  - {note}" for note in report["notes"]]
    return "\n".join(lines)
