"""Every torch-free CUDA kernel source compiles with nvcc for the GPUs the package targets (no GPU needed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

KERNELS = sorted((Path(__file__).resolve().parents[2] / "csrc" / "cuda").glob("*_kernel.cu"))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("kernel", KERNELS, ids=[k.stem for k in KERNELS])
def test_cuda_kernel_source_compiles_for_sm80_and_sm90(tmp_path, kernel):
    """Every torch-free CUDA kernel source (csrc/cuda/*_kernel.cu) compiles for A100 and H100/H200."""
    assert len(KERNELS) >= 2  # denorm_transpose and codes_to_latents at least
    cmd = [
        "nvcc",
        "-c",
        "-O3",
        "-std=c++17",
        "-gencode",
        "arch=compute_80,code=sm_80",
        "-gencode",
        "arch=compute_90,code=sm_90",
        str(kernel),
        "-o",
        str(tmp_path / "kernel.o"),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    if shutil.which("cuobjdump"):
        listing = subprocess.run(
            ["cuobjdump", "--list-elf", str(tmp_path / "kernel.o")], capture_output=True, text=True
        )
        assert "sm_80" in listing.stdout and "sm_90" in listing.stdout
