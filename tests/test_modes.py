"""The automatic mode (jasco_fast.modes): CPU classes under instruction-set caps, the table's rows against the
committed fidelity results, dtype="auto" on the decoders and the CLI, and the warning for emulated arithmetic."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import soundfile as sf
import torch

from jasco_fast import CodeDecoder, DecoderConfig, LatentDecoder, PerformanceWarning, SEANetDecoder, modes
from jasco_fast.cli import main
from jasco_fast.decoder import CONV_FORMATS
from jasco_fast.ops import recurrent_format_supported
from jasco_fast.quantizer import Quantizer

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
CPU_CLASSES = ("amx", "avx512_bf16", "avx512", "avx2", "other")


@pytest.fixture
def tiny_decoder():
    torch.manual_seed(0)
    return SEANetDecoder(DecoderConfig(dimension=8, n_filters=4, ratios=(2, 2), lstm=1)).eval()


@pytest.fixture
def fresh_warnings(monkeypatch):
    """Each test sees the once-per-process warning anew."""
    monkeypatch.setattr(modes, "_warned", set())


def cpu_class_under(env: dict) -> str:
    """cpu_class() in a fresh process: ATEN_CPU_CAPABILITY is read when torch starts."""
    clean = {
        k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "JASCO_FAST_ISA")
    }
    out = subprocess.run(
        [sys.executable, "-c", "from jasco_fast import modes; print(modes.cpu_class())"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout.strip()


def test_every_cpu_class_and_device_has_one_row():
    keys = [(m.device, m.cpu_class) for m in modes.AUTO_MODES]
    assert len(keys) == len(set(keys))
    assert {c for d, c in keys if d == "cpu"} == set(CPU_CLASSES)
    assert {("cuda", "sm80+"), ("cuda", "older"), ("other", None)} <= set(keys)
    for m in modes.AUTO_MODES:
        assert recurrent_format_supported(m.recurrent_dtype, m.dtype), m
        assert m.conv_format in CONV_FORMATS and (
            m.conv_format is None or (m.device, m.dtype) == ("cpu", torch.float32)
        )
        assert m.evidence


def fidelity_results() -> dict[str, dict[str, float]]:
    """CPU class -> {mode kwargs repr -> worst SNR}, from every committed fidelity results file."""
    by_class: dict[str, dict[str, float]] = {}
    for path in sorted(RESULTS.glob("fidelity_cpu*.json")):
        result = json.loads(path.read_text())
        modes_measured = by_class.setdefault(result["cpu_class"], {})
        for entry in result["modes"].values():
            if entry.get("status") == "ok":
                modes_measured[entry["kwargs"]] = entry["worst"]["snr_db"]
    return by_class


def test_cpu_rows_meet_the_fidelity_floor_in_the_committed_results():
    """Each CPU row's mode was measured by bench_fidelity.py at MIN_SNR_DB or more on its worst checkpoint: on
    its own CPU class where a results file of that class exists (the int8 matvec's arithmetic differs per
    class), else on the class with the same arithmetic for that mode measured nearest (any file)."""
    by_class = fidelity_results()
    assert "avx2" in by_class and "avx512_bf16" in by_class
    for m in modes.AUTO_MODES:
        if m.device != "cpu" or (m.dtype == torch.float32 and m.recurrent_dtype is None):
            continue
        kwargs = str(
            {"dtype": m.dtype}
            | ({"recurrent_dtype": m.recurrent_dtype} if m.recurrent_dtype else {})
            | ({"conv_format": m.conv_format} if m.conv_format else {})
        )
        measured = by_class.get(m.cpu_class) or {k: v for c in by_class.values() for k, v in c.items()}
        assert kwargs in measured, f"{m.name} ({m.cpu_class}): not measured by bench_fidelity.py"
        assert measured[kwargs] >= modes.MIN_SNR_DB, m


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() != "AVX512", reason="needs an AVX-512 CPU to cap down")
def test_caps_emulate_an_avx2_only_cpu():
    assert cpu_class_under({"ATEN_CPU_CAPABILITY": "avx2"}) == "avx2"
    assert cpu_class_under({"ONEDNN_MAX_CPU_ISA": "AVX2"}) == "avx2"
    assert cpu_class_under({"JASCO_FAST_ISA": "avx2"}) == "avx2"
    assert cpu_class_under({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}) == "avx512"
    assert cpu_class_under({}) in ("amx", "avx512_bf16", "avx512")


def test_classes_without_bfloat16_arithmetic_say_so(monkeypatch):
    for klass, native in (("amx", True), ("avx512_bf16", True), ("avx512", False), ("avx2", False), ("other", False)):
        monkeypatch.setattr(modes, "cpu_class", lambda k=klass: k)
        assert modes.native_cpu_arithmetic()["bfloat16"] is native


@pytest.mark.parametrize("klass", CPU_CLASSES)
def test_auto_picks_the_row_of_the_cpu_class(monkeypatch, tiny_decoder, fresh_warnings, klass):
    monkeypatch.setattr(modes, "cpu_class", lambda: klass)
    row = modes.auto_mode("cpu")
    assert row.cpu_class == klass
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerformanceWarning)  # the automatic mode never picks an emulated dtype
        fast = LatentDecoder(tiny_decoder, backend="eager", dtype="auto")
    assert fast.dtype == row.dtype and fast.recurrent_dtype == row.recurrent_dtype
    assert fast.conv_format == row.conv_format
    latents = torch.randn(1, 30, 8)
    audio = fast(latents)
    exact = LatentDecoder(tiny_decoder, backend="eager")(latents)
    assert audio.shape == exact.shape and torch.isfinite(audio).all()


def test_recurrent_auto_with_an_explicit_dtype(monkeypatch, tiny_decoder):
    monkeypatch.setattr(modes, "cpu_class", lambda: "avx2")
    fast = LatentDecoder(tiny_decoder, backend="eager", dtype=torch.float32, recurrent_dtype="auto")
    assert fast.dtype == torch.float32 and fast.recurrent_dtype == torch.int8
    monkeypatch.setattr(modes, "cpu_class", lambda: "other")
    assert LatentDecoder(tiny_decoder, backend="eager", recurrent_dtype="auto").recurrent_dtype is None


def test_the_default_stays_float32(tiny_decoder):
    fast = LatentDecoder(tiny_decoder, backend="eager")
    assert fast.dtype == torch.float32 and fast.recurrent_dtype is None


def test_code_decoder_takes_auto(monkeypatch, tiny_decoder):
    monkeypatch.setattr(modes, "cpu_class", lambda: "avx2")
    quantizer = Quantizer(torch.randn(2, 16, 8))
    fast = CodeDecoder(tiny_decoder, quantizer, backend="eager", dtype="auto")
    assert fast.dtype == torch.float32 and fast.recurrent_dtype == torch.int8 and fast.conv_format == "int12"
    assert fast(torch.randint(0, 16, (1, 2, 20))).shape == (1, 1, 80)


@pytest.mark.parametrize("bad", ["fast", "bfloat16", 3])
def test_bad_mode_names_are_errors(tiny_decoder, bad):
    with pytest.raises((TypeError, ValueError)):
        LatentDecoder(tiny_decoder, backend="eager", dtype=bad)
    with pytest.raises((TypeError, ValueError)):
        LatentDecoder(tiny_decoder, backend="eager", recurrent_dtype=bad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cpu_class", ["avx2", "avx512"])
def test_emulated_reduced_precision_warns_once(monkeypatch, tiny_decoder, fresh_warnings, dtype, cpu_class):
    monkeypatch.setattr(modes, "cpu_class", lambda: cpu_class)
    slowdown, _ = modes.EMULATED_SLOWDOWN[dtype].get(cpu_class, modes.EMULATED_SLOWDOWN[dtype][None])
    pattern = rf"\({cpu_class} class\).*emulated.*measured {re.escape(slowdown)} slower.*float32 \+ int8 recurrent"
    with pytest.warns(PerformanceWarning, match=pattern) as caught:
        LatentDecoder(tiny_decoder, backend="eager", dtype=dtype)
    assert caught[0].filename == __file__  # names the line that built the decoder
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerformanceWarning)
        fast = LatentDecoder(tiny_decoder, backend="eager", dtype=dtype)  # once per process
    assert fast.dtype == dtype  # warned, not refused


def test_native_or_float32_does_not_warn(monkeypatch, tiny_decoder, fresh_warnings):
    monkeypatch.setattr(modes, "cpu_class", lambda: "avx512_bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerformanceWarning)
        LatentDecoder(tiny_decoder, backend="eager", dtype=torch.bfloat16)
        LatentDecoder(tiny_decoder, backend="eager", dtype=torch.float32)
        LatentDecoder(tiny_decoder, backend="eager", dtype=torch.float32, recurrent_dtype=torch.bfloat16)
    assert issubclass(PerformanceWarning, UserWarning)


def test_cli_dtype_auto(tmp_path, tiny_hf_checkpoint, capsys):
    torch.save(torch.randn(20, 8), tmp_path / "a.pt")
    assert (
        main(
            [
                "decode",
                str(tmp_path / "a.pt"),
                "--out-dir",
                str(tmp_path / "out"),
                "--checkpoint",
                str(tiny_hf_checkpoint),
                "--backend",
                "eager",
                "--dtype",
                "auto",
            ]
        )
        == 0
    )
    assert sf.info(str(tmp_path / "out" / "a.wav")).frames == 20 * 8
    assert (
        main(
            [
                "decode",
                str(tmp_path / "a.pt"),
                "--out-dir",
                str(tmp_path / "out2"),
                "--checkpoint",
                str(tiny_hf_checkpoint),
                "--backend",
                "eager",
                "--recurrent-dtype",
                "auto",
            ]
        )
        == 0
    )


def test_info_names_the_class_and_the_recommended_mode(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"CPU class: {modes.cpu_class()}" in out
    assert "recommended mode on this machine" in out and modes.auto_mode("cpu").name in out
    assert "bfloat16 native" in out or "bfloat16 EMULATED" in out
