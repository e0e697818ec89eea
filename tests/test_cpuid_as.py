"""tools/cpuid-as: a command run under it sees the smaller CPU class in every library, and its real faults still
reach the program's own SIGSEGV handler."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "cpuid-as"

pytestmark = [
    pytest.mark.skipif(not TOOL.exists(), reason="tools/cpuid-as is not in this tree (an installed package)"),
    pytest.mark.skipif(
        "cpuid_fault" not in Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else True,
        reason="this CPU (or its hypervisor) cannot make CPUID fault",
    ),
    pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler to build the library"),
]

PROBE = (
    "import torch; from jasco_fast import modes; "
    "print(torch.backends.cpu.get_cpu_capability(), modes.cpu_class(), torch.cpu._is_avx512_bf16_supported())"
)


def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CPUID_AS", "LD_PRELOAD", "ATEN_CPU_CAPABILITY")}
    return subprocess.run([str(TOOL), *args], capture_output=True, text=True, timeout=300, env=env, **kwargs)


def test_avx2_class_seen_by_torch_and_jasco_fast(tmp_path):
    out = run("avx2", sys.executable, "-c", PROBE, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["AVX2", "avx2", "False"]


def test_avx512_class_hides_bfloat16():
    import torch

    if not torch.cpu._is_avx512_supported():
        pytest.skip("this CPU has no AVX-512 to keep")
    out = run("avx512", sys.executable, "-c", PROBE)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["AVX512", "avx512", "False"]


def test_a_real_fault_reaches_the_programs_handler():
    crash = "import faulthandler, ctypes; faulthandler.enable(); ctypes.string_at(0)"
    out = run("avx2", sys.executable, "-c", crash)
    assert out.returncode != 0
    assert "Segmentation fault" in out.stderr  # faulthandler's report: the handler it installed ran


def test_refuses_an_unknown_class():
    out = run("sse2", "true")
    assert out.returncode == 2 and "usage" in out.stderr
