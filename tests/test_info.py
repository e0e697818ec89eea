"""`jasco-fast info` (jasco_fast/info.py): the report's JSON schema, its text form, the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile
import torch

import jasco_fast
from jasco_fast import info
from jasco_fast.cli import main

OP = "jasco_fast::denorm_transpose"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    (folder / "decoder-abc").mkdir(parents=True)
    (folder / "decoder-abc" / "model.pt2").write_bytes(b"x" * 1500)
    (folder / "index.json").write_bytes(b"{}")
    monkeypatch.setenv("JASCO_FAST_CACHE_DIR", str(folder))
    return folder


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_json_schema(cache):
    report = json.loads(json.dumps(info.collect()))  # JSON-ready all the way down
    assert set(report) == {
        "python",
        "platform",
        "jasco_fast",
        "torch",
        "ops",
        "cpu_fast_path",
        "modes",
        "torch_compile",
        "cache",
        "packages",
        "devices",
        "notes",
    }
    assert set(report["modes"]) == {"cpu_class", "native_cpu_arithmetic", "isa_caps", "recommended"}
    assert set(report["modes"]["native_cpu_arithmetic"]) == {"bfloat16", "float16"}
    assert report["modes"]["recommended"]["cpu"]["dtype"] in ("float32", "bfloat16")
    assert report["torch"]["version"] == torch.__version__
    assert report["torch"]["build"] == (
        f"ROCm {torch.version.hip}"
        if torch.version.hip
        else f"CUDA {torch.version.cuda}"
        if torch.version.cuda
        else "CPU"
    )
    assert report["jasco_fast"]["extension"].endswith(".so") or report["jasco_fast"]["extension"].endswith(".pyd")

    op = report["ops"][OP]
    assert set(op) == {"compiled_kernels", "pytorch_fallback", "device_generic"}
    assert "CPU" in op["compiled_kernels"] and op["pytorch_fallback"] is True and op["device_generic"] is False
    assert ("CUDA" in op["compiled_kernels"]) == torch._C._dispatch_has_kernel_for_dispatch_key(OP, "CUDA")
    assert "jasco_fast::cpu_fast_path" not in report["ops"]  # a query, not a tensor op

    devices = report["devices"]
    assert devices[0]["device"] == "cpu" and devices[0]["ops"][OP] == "compiled kernel"
    assert len(devices) == 1 + (torch.cuda.device_count() if torch.cuda.is_available() else 0) + sum(
        d["device"] in ("mps",) or d["device"].startswith("xpu") for d in devices
    )

    assert report["cache"] == {
        "path": str(cache),
        "source": "JASCO_FAST_CACHE_DIR",
        "exists": True,
        "entries": [{"name": "decoder-abc", "bytes": 1500}, {"name": "index.json", "bytes": 2}],
        "bytes": 1502,
    }

    sf = report["packages"]["soundfile"]
    assert sf["version"] == soundfile.__version__ and sf["libsndfile"] == soundfile.__libsndfile_version__
    assert sf["formats"] == sorted(soundfile.available_formats())
    assert sf["jasco_fast_formats"]["wav"] is True and set(sf["jasco_fast_formats"]) == {"wav", "mp3", "ogg", "flac"}
    for name in ("pyloudnorm", "transformers", "omegaconf"):
        assert set(report["packages"][name]) == {"version"}
    assert report["packages"]["pyloudnorm"]["version"]  # a dependency: always installed


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="needs /proc/cpuinfo (Linux) to know the CPU")
def test_cpu_fast_path_is_what_this_cpu_supports():
    flags = cpu_flags()
    x86 = os.uname().machine in ("x86_64", "AMD64")
    want = "avx2+f16c" if x86 and {"avx2", "f16c"} <= flags and ({"prfchw", "3dnowprefetch"} & flags) else "portable"
    assert info.collect()["cpu_fast_path"]["denorm_transpose"] == want


def test_op_paths():
    assert info.op_path(OP, "cpu") == "compiled kernel"
    cuda = "compiled kernel" if torch._C._dispatch_has_kernel_for_dispatch_key(OP, "CUDA") else "PyTorch fallback"
    assert info.op_path(OP, "cuda") == cuda
    assert info.op_path(OP, "mps") == "PyTorch fallback"


def test_cache_locations(tmp_path, monkeypatch):
    monkeypatch.delenv("JASCO_FAST_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert info.collect()["cache"]["path"] == str(tmp_path / "jasco_fast")
    assert info.collect()["cache"]["source"] == "XDG_CACHE_HOME"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    report = info.collect()["cache"]
    assert (report["path"], report["source"]) == (str(tmp_path / "home" / ".cache" / "jasco_fast"), "default")
    assert report["exists"] is False and report["entries"] == [] and report["bytes"] == 0


def test_text_output(cache, capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert f"torch {torch.__version__}, build: " in text
    assert f"{OP}: compiled kernels: CPU" in text and "every other device: PyTorch fallback" in text
    assert "CPU fast path: " in text
    assert "devices:\n  cpu: " in text and "denorm_transpose: compiled kernel" in text
    assert f"cache: {cache} (from JASCO_FAST_CACHE_DIR): 2 entries, 1.5 kB" in text
    assert f"soundfile {soundfile.__version__} (libsndfile {soundfile.__libsndfile_version__}): writes wav" in text
    assert "pyloudnorm " in text and "transformers " in text and "omegaconf " in text


def test_json_flag(capsys):
    assert main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ops"][OP]["pytorch_fallback"] is True


def test_a_failing_section_is_reported_not_fatal(monkeypatch, capsys):
    def broken():
        raise PermissionError("cannot read the cache folder")

    monkeypatch.setattr(info, "_cache", broken)
    report = info.collect()
    assert report["cache"] == {"error": "PermissionError: cannot read the cache folder"}
    assert "cache: ERROR PermissionError: cannot read the cache folder" in info.render(report)
    assert report["ops"][OP]["compiled_kernels"]  # the other sections are still there
    assert "sections that failed: cache" in report["notes"][-1]


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_python_m_jasco_fast_info(extra, cache, tmp_path):
    # cwd elsewhere: `python -m` puts the working directory first on the path, and the jasco_fast under test is the
    # installed one (or the editable tree), not whatever a checkout's folder holds
    done = subprocess.run(
        [sys.executable, "-m", "jasco_fast", "info", *extra], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    if extra:
        report = json.loads(done.stdout)
        assert report["jasco_fast"]["package"] == str(Path(jasco_fast.__file__).parent)
        assert report["cache"]["path"] == str(cache)
    else:
        assert done.stdout.startswith("jasco_fast ") and "devices:" in done.stdout


def test_a_missing_encoder_is_named(monkeypatch):
    real = soundfile.available_subtypes

    def without_mp3(major=None):  # a libsndfile older than 1.1: the MP3 container but no encoder
        return {k: v for k, v in real(major).items() if k != "MPEG_LAYER_III"}

    monkeypatch.setattr(soundfile, "available_subtypes", without_mp3)
    report = info.collect()
    assert report["packages"]["soundfile"]["jasco_fast_formats"] == {
        "wav": True,
        "mp3": False,
        "ogg": True,
        "flac": True,
    }
    assert "writes wav, mp3 (MISSING), ogg, flac" in info.render(report)
    assert any("cannot write mp3: upgrade soundfile" in note for note in report["notes"])


def test_notes_say_what_needs_action(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.version, "hip", None)
    report = info.collect()
    cuda_note = [n for n in report["notes"] if "no CUDA kernel" in n]
    if torch._C._dispatch_has_kernel_for_dispatch_key(OP, "CUDA"):
        assert not cuda_note
    else:
        assert cuda_note and "CUDA 12.4 toolkit (nvcc)" in cuda_note[0] and "--no-build-isolation" in cuda_note[0]
        assert "no CUDA kernel" in info.render(report)
    monkeypatch.setattr(torch.version, "hip", "6.2")
    assert any("ROCm build: AMD GPUs run the PyTorch fallback" in n for n in info.collect()["notes"])
    monkeypatch.setattr(info, "_compile", lambda: {"cxx": None, "triton": None})
    assert any("no C++ compiler found" in n for n in info.collect()["notes"])
