"""benchmarks/gpu_check.py (`make gpu-check`) on a machine without a GPU: it refuses loudly, and its
summary of the benchmark results (targets, README table) is right on results shaped like the real ones."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("jasco_fast_gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_refuses_loudly_without_a_gpu():
    for step in (["preflight"], ["bench"]):
        result = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), *step], capture_output=True, text=True, cwd=ROOT
        )
        assert result.returncode == 1, result
        assert "gpu-check: FAILED:" in result.stderr
        assert ("not a CUDA build" in result.stderr) or ("sees no GPU" in result.stderr)


@pytest.mark.parametrize(
    "name,slug",
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA GeForce RTX 4090", "rtx"),
        ("", "gpu"),
    ],
)
def test_gpu_slug(gpu_check, name, slug):
    assert gpu_check.gpu_slug(name) == slug


def op_row(shape, out_dtype, clone, fused, channels_last, eager):
    return {
        "shape": list(shape),
        "out_dtype": out_dtype,
        "clone_GBps": clone,
        "fused_GBps": fused,
        "fused_channels_last_GBps": channels_last,
        "eager_GBps": eager,
    }


def decode_row(path, dtype, batch, seconds, median_s, status="ok"):
    row = {"path": path, "dtype": dtype, "batch": batch, "seconds": seconds, "status": status}
    if status == "ok":
        row.update(
            median_s=median_s,
            min_s=median_s * 0.9,
            max_s=median_s * 1.1,
            peak_mem_mb=100.0,
            audio_s_per_s=batch * seconds / median_s,
        )
    return row


def write_results(folder: Path, speedup_b8: float, op_fraction: float) -> None:
    op = {
        "device": "Test GPU",
        "rows": [
            op_row((1, 500, 128), "float32", 100, 10, 10, 5),
            op_row((64, 1500, 128), "float32", 3000, 3000 * op_fraction, 2900, 900),
            op_row((64, 1500, 128), "bfloat16", 3000, 100, 100, 100),
        ],
    }
    (folder / "denorm_transpose_cpu.json").write_text(json.dumps(op))
    for dtype, factor in (("float32", 1.0), ("bfloat16", speedup_b8)):
        rows = []
        for batch in (1, 8):
            eager = decode_row("eager_float32", "float32", batch, 10.0, 1.0)
            fast = decode_row("compiled", dtype, batch, 10.0, 1.0 / factor)
            eager["speedup_vs_eager_float32"], fast["speedup_vs_eager_float32"] = 1.0, factor
            rows += [eager, fast]
        rows.append(decode_row("compiled", dtype, 128, 30.0, None, status="out of memory"))
        (folder / f"decode_throughput_{dtype}_cpu.json").write_text(
            json.dumps({"device": "Test GPU", "dtype": dtype, "rows": rows})
        )


@pytest.mark.parametrize("speedup,fraction,met", [(3.5, 0.9, True), (2.0, 0.5, False)])
def test_summary_against_the_targets(gpu_check, tmp_path, capsys, speedup, fraction, met):
    write_results(tmp_path, speedup, fraction)
    result = gpu_check.summary("cpu", tmp_path)
    out = capsys.readouterr().out
    assert result["op"]["shape"] == [64, 1500, 128]  # the largest float32 shape, not the launch-bound one
    assert result["op"]["fused_fraction_of_copy"] == pytest.approx(fraction)
    assert result["op"]["meets_target"] is met
    assert result["decode"]["best"]["speedup_vs_eager_float32"] == pytest.approx(speedup)
    assert result["decode"]["best"]["dtype"] == "bfloat16" and result["decode"]["meets_target"] is met
    saved = json.loads((tmp_path / "gpu_check_cpu.json").read_text())
    assert saved["decode"] == result["decode"] and len(saved["files"]) == 3
    # the README table: one line per (B, length, dtype), the out-of-memory case included
    table = [line for line in out.splitlines() if line.startswith("| ") and "compiled" not in line[:40]]
    assert len([line for line in table if line.split("|")[3].strip() in ("float32", "bfloat16")]) == 6
    assert "out of memory" in out and f"{speedup:.2f}x" in out
    assert ("NOT met" in out) is not met


def test_summary_without_results_fails_loudly(gpu_check, tmp_path):
    with pytest.raises(SystemExit, match="no results"):
        gpu_check.summary("cpu", tmp_path)


def test_summary_judges_the_op_on_the_device_timed_bandwidth(gpu_check, tmp_path, capsys):
    write_results(tmp_path, 3.5, 0.5)  # the op benchmark alone would fail the target ...
    rows = [
        {"name": "copy", "GBps": 3000.0},
        {"name": "fused", "GBps": 2700.0},
        {"name": "fused_channels_last", "GBps": 2850.0},
        {"name": "fused_to_bfloat16", "GBps": 2400.0},
    ]
    for r in rows:
        r["fraction_of_copy"] = r["GBps"] / 3000.0
    (tmp_path / "bandwidth_cpu.json").write_text(json.dumps({"shape": [256, 1500, 128], "rows": rows}))
    result = gpu_check.summary("cpu", tmp_path)  # ... the bandwidth measured on the device passes it
    assert result["op"]["shape"] == [256, 1500, 128] and result["op"]["meets_target"] is True
    assert result["op"]["fused_fraction_of_copy"] == pytest.approx(0.9)
    assert "bandwidth_cpu.json" in result["files"]
    out = capsys.readouterr().out
    assert "90% of the device-to-device copy's 3000 GB/s" in out and "target >= 85%: met" in out
