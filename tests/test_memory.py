"""jasco_fast.memory: glibc keeps freed memory for reuse in processes that opt in (the CLI does), never by a
decoder's construction."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def run(code: str, **env) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


BUILD_DECODER = (
    "import torch, jasco_fast, jasco_fast.memory as m; from jasco_fast import LatentDecoder, SEANetDecoder, DecoderConfig;"
    "print(m.reusing_freed_memory());"
    "d = SEANetDecoder(DecoderConfig(dimension=8, n_filters=4, ratios=(2,), lstm=0));"
    "[LatentDecoder(d, backend=b, background_build=False) for b in ('eager', 'aot')];"
    "print(m.reusing_freed_memory());"
    "print(jasco_fast.reuse_freed_memory());"
    "print(m.reusing_freed_memory())"
)
CLI = (
    "import jasco_fast.memory as m; from jasco_fast.cli import main;"
    "print(m.reusing_freed_memory()); main(['cache', 'list']); print(m.reusing_freed_memory())"
)


def without_opt_out() -> dict:
    return {k: v for k, v in os.environ.items() if k != "JASCO_FAST_MALLOC"}


@pytest.mark.skipif(not GLIBC, reason="the setting exists for glibc only")
def test_a_decoder_leaves_the_process_alone_and_applications_opt_in():
    """Building CPU decoders changes nothing process-wide; jasco_fast.reuse_freed_memory() turns it on."""
    result = subprocess.run(
        [sys.executable, "-c", BUILD_DECODER], capture_output=True, text=True, timeout=300, env=without_opt_out()
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False", "True", "True"]


@pytest.mark.skipif(not GLIBC, reason="the setting exists for glibc only")
def test_the_cli_turns_it_on(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", CLI],
        capture_output=True,
        text=True,
        timeout=300,
        env={**without_opt_out(), "JASCO_FAST_CACHE_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "False" and result.stdout.split()[-1] == "True", result.stdout


def test_the_environment_opts_out():
    assert run(BUILD_DECODER, JASCO_FAST_MALLOC="system").split() == ["False", "False", "False", "False"]


@pytest.mark.skipif(not GLIBC, reason="the setting exists for glibc only")
def test_freed_large_blocks_stay_mapped_for_reuse():
    """A freed 64 MB block leaves the process (munmap) with glibc's defaults, and stays resident with the setting,
    so the next decode finds it mapped instead of page-faulting it in again."""
    code = (
        "import sys, torch, jasco_fast.memory as m\n"
        "if sys.argv[1] == 'on': assert m.reuse_freed_memory()\n"
        "def rss(): return int(open('/proc/self/statm').read().split()[1]) * 4096\n"
        "x = torch.ones(16 << 20)\n"
        "before = rss()\n"
        "del x\n"
        "print((before - rss()) >> 20)\n"
    )
    dropped = {}
    for mode in ("on", "off"):
        result = subprocess.run(
            [sys.executable, "-c", code, mode],
            capture_output=True,
            text=True,
            timeout=300,
            env={k: v for k, v in os.environ.items() if k != "JASCO_FAST_MALLOC"},
        )
        assert result.returncode == 0, result.stderr
        dropped[mode] = int(result.stdout.strip())
    assert dropped["off"] >= 60, dropped
    assert dropped["on"] <= 4, dropped
