"""What integer arithmetic could buy an AVX2-only CPU: the speed of the inner loops, the fidelity of the formats.

    python benchmarks/bench_avx2_integer.py [--rounds 5] [--checkpoints 4] [--seconds 10] [--quick] [--note TEXT]
                                            [--out PATH]

Three measurements behind the automatic mode's row for AVX2-only CPUs (docs/design/cpu-classes.md):

* **Speed** (``avx2_integer_kernels.c``, built here with ``cc -O3``, one thread, interleaved rounds): the int8
  LSTM format's recurrent matvec in each AVX2 instruction sequence (one thread's share of a step at C = 1024 on
  2 threads), and a register-blocked GEMM micro-kernel in float32 FMA against int16 ``vpmaddwd``.
* **Fidelity** (no kernel needed: the roundings are simulated on the reference decoder): bench_fidelity.py's random-weight checkpoints and latents, decoded with
  - the int8 recurrent matrices times h at the fixed point of each integer matvec
    (``reference.ReferenceDecoder(..., int8_matvec=...)``): 16-bit (``vpdpbusd``, AVX512-VNNI CPUs; the
    ``vpmaddwd`` sequence's int16 h is as fine) or one unsigned 7-bit byte (``vpmaddubsw``, AVX2 CPUs);
  - every convolution in integers: weights b-bit per output channel, activations b-bit with one scale per
    64 time steps (symmetric), for b = 8 ... 16; and int8 weights with float32 activations.
  SNR against the float32 reference, worst over the checkpoints.
* **The int12 convolutions, layer by layer** (the built format, ``conv_format="int12"``): each residual block and
  ELU + transposed convolution of the EnCodec 32 kHz decoder on its 10 s input, as a float32 decoder runs it
  (``fuse()``: the fused float32 ops, oneDNN, the GEMM form) and as the int12 decoder does (``fuse("int12")``),
  interleaved rounds, torch's threads, freed memory reused as the ``jasco-fast`` command does.

Writes benchmarks/results/avx2_integer_cpu.json (``--out`` to change).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import _fidelity
import bench_fidelity
import torch
from _common import provenance, spread, write_result
from torch import nn

from jasco_fast import SEANetDecoder, reference
from jasco_fast.decoder import (
    Conv,
    ConvTranspose,
    FusedEluConvTransposeInt12,
    FusedResBlockInt12,
)
from jasco_fast.memory import reuse_freed_memory

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "avx2_integer_kernels.c"
BINARY = HERE.parent / "build" / "avx2_integer_kernels"
CONV_TILE = 64  # time steps per activation scale


def build_kernels(cc: str) -> Path:
    if not BINARY.exists() or BINARY.stat().st_mtime < SOURCE.stat().st_mtime:
        BINARY.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([cc, "-O3", "-o", str(BINARY), str(SOURCE)], check=True)
    return BINARY


def kernel_rounds(rounds: int, cc: str) -> list[dict]:
    run = subprocess.run([str(build_kernels(cc)), str(rounds)], capture_output=True, text=True)
    if run.returncode != 0:  # 2: no AVX2 + FMA on this CPU
        raise SystemExit(f"bench_avx2_integer: {run.stderr.strip()}")
    return [json.loads(line) for line in run.stdout.splitlines()]


# ----------------------------------------------------------------------------------------------- fidelity


def quantize_symmetric(x: torch.Tensor, bits: int, reduce_dims: tuple[int, ...]) -> torch.Tensor:
    """x rounded to a signed b-bit grid (levels +-(2^(b-1) - 1)), one scale per slice over reduce_dims."""
    qmax = 2 ** (bits - 1) - 1
    scale = x.abs().amax(dim=reduce_dims, keepdim=True).clamp_min(1e-30) / qmax
    return (x / scale).round().clamp(-qmax, qmax) * scale


def quantize_activation(x: torch.Tensor, bits: int) -> torch.Tensor:
    """[B, C, T] with one scale per CONV_TILE time steps (over all channels)."""
    B, C, T = x.shape
    pad = (-T) % CONV_TILE
    tiles = nn.functional.pad(x, (0, pad)).reshape(B, C, -1, CONV_TILE)
    return quantize_symmetric(tiles, bits, (1, 3)).reshape(B, C, -1)[..., :T]


def integer_convolutions(decoder, bits: int | None, weight_bits: int) -> reference.ReferenceDecoder:
    """The reference decoder of a copy of `decoder` whose convolution weights are rounded to weight_bits per
    output channel, its convolutions' inputs to `bits` (None: float32)."""
    decoder = copy.deepcopy(decoder)
    with torch.no_grad():
        for m in decoder.modules():
            if isinstance(m, (Conv, ConvTranspose)):
                out_dim = 1 if isinstance(m, ConvTranspose) else 0  # [Cin, Cout, 1, k] / [Cout, Cin, 1, k]
                reduce = tuple(d for d in range(m.weight.dim()) if d != out_dim)
                m.weight.copy_(quantize_symmetric(m.weight, weight_bits, reduce))
    ref = reference.ReferenceDecoder(decoder)
    if bits is not None:
        for m in ref.modules():
            if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
                m.register_forward_pre_hook(lambda mod, args, b=bits: (quantize_activation(args[0], b),))
    return ref


FORMATS: dict[str, dict] = {
    "int8 W_hh x 16-bit h (vpdpbusd: the AVX512-VNNI kernel)": dict(int8_matvec="avx512_vnni"),
    "int8 W_hh x 7-bit h (vpmaddubsw: the AVX2 kernel)": dict(int8_matvec="avx2_u7"),
    "convolutions: int8 weights, float32 activations": dict(conv_bits=None, weight_bits=8),
    **{f"convolutions: {b}-bit weights and activations": dict(conv_bits=b, weight_bits=b) for b in (8, 10, 12, 14, 16)},
}


def decode_with(decoder, latents: torch.Tensor, fmt: dict) -> torch.Tensor:
    if "int8_matvec" in fmt:
        ref = reference.ReferenceDecoder(decoder, int8_matvec=fmt["int8_matvec"])
    else:
        ref = integer_convolutions(decoder, fmt["conv_bits"], fmt["weight_bits"])
    return reference.decode(ref, latents)


def fidelity(checkpoints: int, seconds: float) -> dict:
    per_format: dict[str, list[float]] = {name: [] for name in FORMATS}
    for k in range(checkpoints):
        seed, lstm_std = 1000 + k, bench_fidelity.lstm_std_of_checkpoint(k)
        decoder = bench_fidelity.realistic_decoder(seed, lstm_std=lstm_std)
        gen = torch.Generator().manual_seed(seed + 1)
        latents = bench_fidelity.realistic_latents(
            1, int(seconds * decoder.config.frame_rate), decoder.config.dimension, gen
        )
        want = reference.decode(reference.ReferenceDecoder(decoder), latents)
        for name, fmt in FORMATS.items():
            snr = _fidelity.snr_db(want, decode_with(decoder, latents, fmt))
            per_format[name].append(snr)
            print(f"  checkpoint {k} (seed {seed}): {name}: {snr:.1f} dB", flush=True)
    return {name: {"snr_db": v, "worst_snr_db": min(v)} for name, v in per_format.items()}


# ----------------------------------------------------------------------------------------------- int12 layers


def layer_rounds(rounds: int, seconds: float) -> dict[str, dict[str, list[float]]]:
    """Layer name -> {"float32": [ms per round], "int12": [...]}: the decoder's layers that the int12 format
    changes, each on the input the decoder gives it (a float32 pass over random latents first)."""
    reuse_freed_memory()
    decoder = SEANetDecoder().eval()
    plain = copy.deepcopy(decoder).to_channels_last().fuse().layers
    int12 = copy.deepcopy(decoder).to_channels_last().fuse("int12").layers
    frames = int(seconds * decoder.config.frame_rate)
    x = torch.randn(1, decoder.config.dimension, 1, frames, generator=torch.Generator().manual_seed(0))
    spans, inputs = {}, {}
    with torch.no_grad():
        x = x.contiguous(memory_format=torch.channels_last)
        for i, layer in enumerate(int12):
            if isinstance(layer, FusedResBlockInt12):
                spans[f"layer {i}: residual block, {layer.conv1.weight.shape[1]} channels"] = (i, i + 1)
            elif isinstance(layer, FusedEluConvTransposeInt12):
                c_in, c_out = layer.weight.shape[:2]
                spans[f"layers {i - 1}-{i}: ELU + transposed conv {c_in} -> {c_out}"] = (i - 1, i + 1)
            inputs[i] = x
            x = plain[i](x)
        times: dict[str, dict[str, list[float]]] = {name: {"float32": [], "int12": []} for name in spans}
        for _ in range(rounds + 1):  # the first round warms up
            for name, (a, b) in spans.items():
                for label, layers in (("float32", plain), ("int12", int12)):
                    y = inputs[a]
                    start = time.perf_counter()
                    for layer in layers[a:b]:
                        y = layer(y)
                    times[name][label].append((time.perf_counter() - start) * 1e3)
    return {name: {k: v[1:] for k, v in t.items()} for name, t in times.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="kernel rounds (default 5; --quick 2)")
    parser.add_argument("--checkpoints", type=int, default=None, help="fidelity checkpoints (default 4; --quick 1)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per checkpoint (default 10; --quick 1)")
    parser.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="cpu (the only device this study covers; cuda is skipped, for `jasco-fast bench`)",
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--note", default=None, help="recorded in the JSON")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.device != "cpu":
        print("bench_avx2_integer: CPU only; skipped for", args.device)
        return {}
    cc = shutil.which("cc") or shutil.which("gcc")
    if platform.machine().lower() not in ("x86_64", "amd64") or cc is None:
        print("bench_avx2_integer: needs an x86-64 CPU and a C compiler (cc); skipped")
        return {}
    rounds = args.rounds or (2 if args.quick else 5)
    checkpoints = args.checkpoints or (1 if args.quick else 4)
    seconds = args.seconds or (1.0 if args.quick else 10.0)

    samples = kernel_rounds(rounds, cc)
    matvec = {k: [s["matvec_us_per_step"][k] for s in samples] for k in samples[0]["matvec_us_per_step"]}
    gemm = {k: [s["gemm_gmac_per_s"][k] for s in samples] for k in samples[0]["gemm_gmac_per_s"]}
    f32 = statistics.median(matvec["float32"])
    print(f"\nrecurrent matvec, one thread's share of a step (2048 x 1024), {rounds} rounds")
    print(f"{'sequence':<16}{'us/step':>10}{'min-max':>16}{'/ float32':>11}")
    for name, v in matvec.items():
        print(
            f"{name:<16}{statistics.median(v):>10.1f}{f'{min(v):.1f}-{max(v):.1f}':>16}{statistics.median(v) / f32:>11.2f}"
        )
    print("\nGEMM micro-kernel (6 x 16, operands in L1)")
    for name, v in gemm.items():
        print(f"{name:<16}{statistics.median(v):>10.1f} GMAC/s")
    gemm_ratio = statistics.median(g / f for g, f in zip(gemm["int16_madd"], gemm["float32_fma"]))
    print(f"int16 / float32 multiply-add rate: {gemm_ratio:.2f}x\n")

    print(f"int12 convolutions, layer by layer: 10 s, {torch.get_num_threads()} threads, {rounds} rounds")
    layers = layer_rounds(rounds, 2.0 if args.quick else 10.0)
    print(f"{'layers':<56}{'float32 ms':>12}{'int12 ms':>10}{'ratio':>8}")
    layer_ratios = {}
    for name, t in layers.items():
        layer_ratios[name] = statistics.median(i / f for i, f in zip(t["int12"], t["float32"]))
        print(
            f"{name:<56}{statistics.median(t['float32']):>12.1f}{statistics.median(t['int12']):>10.1f}"
            f"{layer_ratios[name]:>8.2f}"
        )
    sums = [sum(t["float32"][r] for t in layers.values()) for r in range(rounds)]
    sums12 = [sum(t["int12"][r] for t in layers.values()) for r in range(rounds)]
    total_ratio = statistics.median(i / f for i, f in zip(sums12, sums))
    print(f"{'all of them':<56}{statistics.median(sums):>12.1f}{statistics.median(sums12):>10.1f}{total_ratio:>8.2f}\n")

    print(f"fidelity: {checkpoints} checkpoints of {seconds:g} s (SNR against float32)")
    fid = fidelity(checkpoints, seconds)
    print(f"\n{'format':<52}{'worst SNR dB':>14}")
    for name, r in fid.items():
        print(f"{name:<52}{r['worst_snr_db']:>14.1f}")

    result = {
        "benchmark": "avx2_integer",
        **provenance("bench_avx2_integer.py", argv, "cpu", args.note),
        "rounds": rounds,
        "kernels": {
            "source": "benchmarks/avx2_integer_kernels.c (cc -O3), one thread",
            "matvec_us_per_step": {k: spread(v) for k, v in matvec.items()},
            "matvec_ratio_to_float32": {k: statistics.median(v) / f32 for k, v in matvec.items()},
            "gemm_gmac_per_s": {k: spread(v) for k, v in gemm.items()},
            "gemm_int16_to_float32_rate": gemm_ratio,
        },
        "int12_layers": {
            "what": "each layer the int12 format changes, float32 decoder (fuse()) against int12 (fuse('int12')), "
            "EnCodec 32 kHz, random weights, B = 1, freed memory reused",
            "seconds": 2.0 if args.quick else 10.0,
            "threads": torch.get_num_threads(),
            "ms": {name: {k: spread(v) for k, v in t.items()} for name, t in layers.items()},
            "ratio_int12_to_float32": layer_ratios,
            "sum_ms": {"float32": spread(sums), "int12": spread(sums12)},
            "sum_ratio": total_ratio,
        },
        "fidelity": {
            "checkpoints": checkpoints,
            "seconds": seconds,
            "weights": bench_fidelity.WEIGHTS_DOC,
            "activation_scale": f"one per {CONV_TILE} time steps, symmetric",
            "formats": fid,
        },
    }
    write_result(result, "avx2_integer", "cpu", args.quick, args.out)
    return result


if __name__ == "__main__":
    main()
