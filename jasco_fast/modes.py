"""Which compute mode each device and CPU class runs best: ``dtype="auto"`` and ``recurrent_dtype="auto"``.

A *mode* is a compute dtype for the convolutions, a format for the LSTM's recurrent matrices and a convolution
format (None: the compute dtype's arithmetic; ``"int12"``: 12-bit integer products, float32 decoders). The
automatic mode is the fastest one whose worst-case SNR in ``benchmarks/bench_fidelity.py`` is at least
:data:`MIN_SNR_DB`; :data:`AUTO_MODES` is the one table of that choice, each row with the measurements that
justify it (``docs/performance.md`` has the full tables). The default everywhere stays float32, the exact mode.

CPU classes (:func:`cpu_class`) follow what the CPU's arithmetic can do, as torch and oneDNN see it, so that
capping them (``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``, ``JASCO_FAST_ISA=avx2``) emulates a
smaller CPU for tests and measurements:

- ``amx``: AMX tiles (Intel Xeon 4th generation and later): native bfloat16 matrix arithmetic;
- ``avx512_bf16``: AVX512-BF16 without AMX (AMD Zen 4 / Zen 5, Intel Cooper Lake): bfloat16 dot products;
- ``avx512``: AVX-512 without bfloat16 arithmetic (Intel Skylake-X .. Ice Lake);
- ``avx2``: AVX2 + FMA and nothing wider (AMD Zen 2 / Zen 3, most Intel desktop and laptop parts);
- ``other``: anything else (other architectures, older x86): float32 only, nothing measured.

Where a CPU has no arithmetic for a reduced precision, oneDNN emulates it, many times slower than float32:
an explicit request warns once per process (:class:`PerformanceWarning`) with the measured slowdown.
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import torch

__all__ = [
    "PerformanceWarning",
    "Mode",
    "AUTO_MODES",
    "MIN_SNR_DB",
    "cpu_class",
    "native_cpu_arithmetic",
    "auto_mode",
    "resolve_mode",
    "warn_if_emulated",
]

MIN_SNR_DB = 40.0  # the automatic mode's fidelity floor, worst checkpoint of bench_fidelity.py


class PerformanceWarning(UserWarning):
    """A requested mode runs much slower on this machine than another one would (e.g. bfloat16 on a CPU that
    emulates bfloat16 arithmetic)."""


@dataclasses.dataclass(frozen=True)
class Mode:
    """One row of :data:`AUTO_MODES`: on ``device`` (and, for CPUs, ``cpu_class``), decode in ``dtype`` with the
    LSTM's recurrent matrices as ``recurrent_dtype`` (None: the compute dtype) and the convolutions in
    ``conv_format`` (None: the compute dtype's arithmetic); ``evidence`` says why."""

    device: str
    cpu_class: str | None
    dtype: torch.dtype
    recurrent_dtype: torch.dtype | None
    evidence: str
    conv_format: str | None = None

    @property
    def name(self) -> str:
        parts = [str(self.dtype).replace("torch.", "")]
        if self.recurrent_dtype is not None:
            parts.append(f"{str(self.recurrent_dtype)[6:]} recurrent")
        if self.conv_format is not None:
            parts.append(f"{self.conv_format} convolutions")
        return " + ".join(parts)


# Times: a 10 s decode at B = 1 relative to float32 on the same CPU, in one process, interleaved rounds
# (benchmarks/bench_decode.py --peers); SNR: the worst of 4 calibrated checkpoints (benchmarks/bench_fidelity.py).
AUTO_MODES: tuple[Mode, ...] = (
    Mode(
        "cpu", "amx", torch.bfloat16, torch.int8, "Intel Xeon with AMX (2026-11-25): 0.405x float32; worst SNR 41.3 dB"
    ),
    Mode(
        "cpu",
        "avx512_bf16",
        torch.bfloat16,
        torch.int8,
        "AMD EPYC Zen 5 (2026-12-03): 0.48x float32 (0.43-0.58 over 7 rounds); worst SNR 41.3 dB",
    ),
    Mode(
        "cpu",
        "avx512",
        torch.float32,
        torch.int8,
        "AMD EPYC Zen 4 as an AVX-512 CPU without BF16 or VNNI (tools/cpuid-as avx512, 2026-12-06): 0.73x float32 "
        "(0.69-0.76 over 9 rounds; int8 recurrent alone 0.87x); the kernels of the avx2 row: worst SNR 45.7 dB; "
        "bfloat16 2.5x slower",
        conv_format="int12",
    ),
    Mode(
        "cpu",
        "avx2",
        torch.float32,
        torch.int8,
        "AMD EPYC Zen 4 as an AVX2 CPU (tools/cpuid-as avx2, 2026-12-06): 0.68x float32 (0.63-0.74 over 11 rounds; "
        "int8 recurrent alone 0.87x); worst SNR 45.7 dB "
        "(int12 convolutions 48.7 dB, the int8 matvec's 7-bit h 48.4 dB); bfloat16 52x slower",
        conv_format="int12",
    ),
    Mode("cpu", "other", torch.float32, None, "nothing measured: the exact mode"),
    Mode(
        "cuda",
        "sm80+",
        torch.bfloat16,
        None,
        "bfloat16 tensor cores (A100, H100, ...); not yet measured on a GPU; worst SNR 41.6 dB (CPU bfloat16)",
    ),
    Mode("cuda", "older", torch.float32, None, "no bfloat16 tensor cores; float16 not measured: the exact mode"),
    Mode("other", None, torch.float32, None, "nothing measured: the exact mode"),
)

# An explicit reduced precision on a CPU that emulates it: CPU class (None: any other) -> (slowdown against
# float32, where it was measured).
EMULATED_SLOWDOWN = {
    torch.bfloat16: {
        "avx512": ("2.5x", "an AMD EPYC Zen 4 as an AVX-512 CPU without BF16 (tools/cpuid-as avx512), 10 s at B = 1"),
        None: ("24x", "an AVX2-only AMD EPYC (Zen 3), 10 s at B = 1"),
    },
    torch.float16: {None: ("60x", "an AMD EPYC Zen 4 (AVX512-BF16, no AVX512-FP16), 2 s at B = 1")},
}

_ONEDNN_BELOW_AVX512 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2"}
_warned: set[torch.dtype] = set()


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _isa_capped_below_avx512() -> bool:
    """The caps that emulate a smaller CPU: torch's (ATEN_CPU_CAPABILITY, read by get_cpu_capability), oneDNN's
    and the extension's own."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _ONEDNN_BELOW_AVX512:
        return True
    return os.environ.get("JASCO_FAST_ISA", "") in ("avx2", "portable")


def cpu_class() -> str:
    """This CPU's class (module docstring), after the instruction-set caps in the environment."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability == "AVX2" or (capability == "AVX512" and _isa_capped_below_avx512()):
        return "avx2"
    if capability != "AVX512":
        return "other"
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in ("AVX512_CORE", "AVX512_CORE_VNNI"):
        return "avx512"
    if torch.cpu._is_amx_tile_supported():
        return "amx"
    if torch.cpu._is_avx512_bf16_supported():
        return "avx512_bf16"
    return "avx512"


def native_cpu_arithmetic() -> dict[str, bool]:
    """Whether this CPU (after caps) has bfloat16 and float16 arithmetic, or has them emulated."""
    klass = cpu_class()
    fp16 = klass == "amx" and torch.cpu._is_amx_fp16_supported()
    fp16 = fp16 or (
        klass in ("amx", "avx512_bf16", "avx512")
        and "avx512_fp16" in _cpu_flags()
        and os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
        not in ("AVX512_CORE", "AVX512_CORE_VNNI", "AVX512_CORE_BF16")
    )
    return {"bfloat16": klass in ("amx", "avx512_bf16"), "float16": bool(fp16)}


def _row(device: torch.device) -> Mode:
    if device.type == "cpu":
        key = ("cpu", cpu_class())
    elif device.type == "cuda":
        key = ("cuda", "sm80+" if torch.cuda.get_device_capability(device)[0] >= 8 else "older")
    else:
        key = ("other", None)
    return next(m for m in AUTO_MODES if (m.device, m.cpu_class) == key)


def auto_mode(device: torch.device | str = "cpu") -> Mode:
    """The automatic mode's row for ``device`` on this machine."""
    return _row(torch.device(device))


def resolve_mode(dtype, recurrent_dtype, device: torch.device, default: torch.dtype, conv_format=None):
    """``(dtype, recurrent_dtype, conv_format)`` with ``"auto"`` replaced by the automatic mode's choice; ``dtype``
    None is ``default``. ``recurrent_dtype="auto"`` with an explicit ``dtype``: the row's recurrent format where it
    goes with that dtype (int8 goes with any), else the dtype's own; ``conv_format="auto"``: the row's convolution
    format where the dtype is the row's, else None. ``dtype="auto"`` makes the other two ``"auto"`` unless given."""
    row = auto_mode(device)
    for name, value in (("dtype", dtype), ("recurrent_dtype", recurrent_dtype)):
        if isinstance(value, str) and value != "auto":
            raise ValueError(f"{name} must be a torch.dtype or 'auto', got {value!r}")
    if dtype == "auto":
        dtype = row.dtype
        if recurrent_dtype is None:
            recurrent_dtype = "auto"
        if conv_format is None:
            conv_format = "auto"
    elif dtype is None:
        dtype = default
    if recurrent_dtype == "auto":
        recurrent_dtype = row.recurrent_dtype if row.recurrent_dtype in (None, torch.int8) else None
    if conv_format == "auto":
        conv_format = row.conv_format if dtype == row.dtype else None
    return dtype, recurrent_dtype, conv_format


def warn_if_emulated(dtype: torch.dtype, device: torch.device, *, stacklevel: int = 3) -> None:
    """Warn once per process and dtype when ``dtype`` on this CPU runs as emulated arithmetic (``stacklevel``:
    the caller's frame the warning names, counted from this function)."""
    if device.type != "cpu" or dtype not in EMULATED_SLOWDOWN or dtype in _warned:
        return
    name = str(dtype).replace("torch.", "")
    if native_cpu_arithmetic()[name]:
        return
    _warned.add(dtype)
    by_class = EMULATED_SLOWDOWN[dtype]
    slowdown, where = by_class.get(cpu_class(), by_class[None])
    row = auto_mode(device)
    warnings.warn(
        f"this CPU ({cpu_class()} class) has no {name} arithmetic, so {name} is emulated: a {name} "
        f"decode measured {slowdown} slower than float32 on {where}. dtype='auto' picks {row.name} "
        f"here; float32 is the exact mode.",
        PerformanceWarning,
        stacklevel=stacklevel,
    )
