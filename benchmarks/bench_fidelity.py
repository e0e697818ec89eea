"""Fidelity of the reduced-precision modes: how far their audio is from float32, in SNR and log-mel distance.

    python benchmarks/bench_fidelity.py [--checkpoints 4] [--seconds 10] [--quick] [--note TEXT]

For each mode of MODES (bfloat16, float16, and whatever line is added there, e.g. a mixed-precision
LatentDecoder keyword) and each of several random-weight EnCodec 32 kHz checkpoints, decodes the same
latents with ``LatentDecoder(decoder, **mode)`` and with the float32 reference (``jasco_fast.reference``)
and reports SNR (dB), the worst mel band's SNR, the log-mel distance (dB) and max error / peak (``benchmarks/_fidelity.py``), per
checkpoint and the worst case. A "float32" row is the control: the metrics' floor for the fast path.

Random weights are made to behave like trained ones, because reduced precision errors depend on the
regime each layer works in (see :func:`realistic_decoder`; every other checkpoint has an LSTM with more
recurrent gain, where a recurrent format's error grows over the steps), and the latents look like JASCO's
(see :func:`realistic_latents`). Writes benchmarks/results/fidelity_<device>.json.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import _fidelity
import torch
from _common import provenance, write_result

from jasco_fast import JASCO_LATENT_MEAN, JASCO_LATENT_STD, DecoderConfig, LatentDecoder, SEANetDecoder, reference
from jasco_fast.decoder import LSTM, Conv, ConvTranspose, ResBlock

# Reduced-precision modes: name -> LatentDecoder keyword arguments (default compile). A new mode is one line.
MODES: dict[str, dict] = {
    "float32 (control)": dict(dtype=torch.float32),
    "bfloat16": dict(dtype=torch.bfloat16),
    "bfloat16, int8 recurrent": dict(dtype=torch.bfloat16, recurrent_dtype=torch.int8),
    "float32, int8 recurrent": dict(dtype=torch.float32, recurrent_dtype=torch.int8),
    "float32, bfloat16 recurrent": dict(dtype=torch.float32, recurrent_dtype=torch.bfloat16),
    "float32, int12 convolutions": dict(dtype=torch.float32, conv_format="int12"),
    "float32, int8 recurrent, int12 convolutions": dict(
        dtype=torch.float32, recurrent_dtype=torch.int8, conv_format="int12"
    ),
    "float16": dict(dtype=torch.float16),
}

# --------------------------------------------------------------------------------------------------
# Realistic random checkpoints and latents

WEIGHTS_DOC = (
    "weights w = g * v / ||v|| (weight norm over dim 0, as upstream), v Gaussian, g log-normal per "
    "channel (sigma 0.5) times one gain per convolution calibrated on realistic latents so that each "
    "convolution's output RMS is 1 (residual branches 0.5 of the block input, final convolution "
    "zero-mean -20 dBFS audio), biases N(0, 0.05^2); LSTM weights, alternating from checkpoint to "
    "checkpoint: PyTorch's default uniform(+-1/sqrt(1024)) (RMS 0.018), or N(0, 0.05^2) (RMS 0.05, "
    "a recurrence with more gain, where errors in the recurrent matrices grow from step to step)"
)
LATENTS_DOC = (
    "latents: per channel an AR(1) Gaussian process with unit variance and frame-to-frame "
    "correlation drawn in [0.8, 0.98] (correlation time 0.1-1 s at 50 frames/s), standardised per "
    "channel over the clip: zero-mean, unit-variance, temporally correlated, like JASCO's normalised "
    "latents"
)
AUDIO_RMS = 0.1  # -20 dBFS: a typical RMS level of mastered music (peaks then land near -6 to -3 dBFS)

# LSTM weight scale of checkpoint k: None (nn.LSTM's initialisation) for even k, HIGH_GAIN_LSTM_STD for odd k.
# Trained LSTMs' weights grow away from their initialisation; at the larger scale a recurrent format's error is
# amplified through the steps (measured: int4 recurrent matrices, 15 levels per row, keep the decode at 41 dB
# with the default scale and drop it to 27 dB with this one; int8 stays at 41), so both regimes are tested.
HIGH_GAIN_LSTM_STD = 0.05


def lstm_std_of_checkpoint(k: int) -> float | None:
    return HIGH_GAIN_LSTM_STD if k % 2 else None


def realistic_latents(batch: int, frames: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """Normalised latents [B, T, D] that are smooth in time, as a flow model's latents of music are."""
    rho = 0.8 + 0.18 * torch.rand(batch, 1, dim, generator=generator)
    noise = torch.randn(batch, frames, dim, generator=generator) * torch.sqrt(1 - rho**2)
    x = torch.empty(batch, frames, dim)
    x[:, 0] = torch.randn(batch, dim, generator=generator)
    for t in range(1, frames):
        x[:, t] = rho[:, 0] * x[:, t - 1] + noise[:, t]
    return (x - x.mean(dim=1, keepdim=True)) / x.std(dim=1, keepdim=True)  # exactly zero-mean, unit-variance


def _convs_in_order(decoder: SEANetDecoder) -> list[tuple[torch.nn.Module, str]]:
    """Every convolution in forward order with its role: 'main', 'branch_in', 'branch_out', 'shortcut', 'last'."""
    out = []
    layers = list(decoder.layers)
    last_conv = [m for m in layers if isinstance(m, Conv)][-1]
    for layer in layers:
        if isinstance(layer, ResBlock):
            out += [(layer.conv1, "branch_in"), (layer.conv2, "branch_out")]
            if isinstance(layer.shortcut, Conv):
                out.append((layer.shortcut, "shortcut"))
        elif isinstance(layer, (Conv, ConvTranspose)):
            out.append((layer, "last" if layer is last_conv else "main"))
    return out


def _rms(x: torch.Tensor) -> float:
    return x.double().square().mean().sqrt().item()


@torch.no_grad()
def realistic_decoder(
    seed: int, config: DecoderConfig | None = None, calibration_frames: int = 100, lstm_std: float | None = None
) -> SEANetDecoder:
    """A random EnCodec decoder whose signal keeps a realistic level through every layer.

    PyTorch's default initialisation (kaiming_uniform, a = sqrt(5)) gives each convolution a gain of
    about 1/sqrt(3), so through the dozen convolutions of the SEANet decoder the signal falls by tens of
    dB and the biases take over: reduced precision would then be measured in a regime no trained model
    is in. A trained decoder keeps its activations near unit scale (the ELUs work around their knee)
    and produces audio at a musical level; its weight-norm gains g differ from channel to channel. So:
    v Gaussian, g log-normal per channel, and then, convolution by convolution in forward order, one
    gain per convolution fitted (LSUV-style, on realistic latents) so that its output RMS is 1; residual
    branches add 0.5 of the block input's RMS (the skip carries most of the signal); the last
    convolution makes zero-mean -20 dBFS audio (its bias cancels the DC that the biases and the ELUs'
    asymmetry otherwise leave: one checkpoint in four came out as almost pure DC without this).
    The LSTM's weights: nn.LSTM's initialisation, or N(0, lstm_std^2) when ``lstm_std`` is given.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    decoder = SEANetDecoder(config or DecoderConfig()).eval()
    convs = _convs_in_order(decoder)
    for conv, _ in convs:
        v = torch.randn(conv.weight.shape, generator=gen)
        norm = v.flatten(1).norm(dim=1).view(-1, *[1] * (v.dim() - 1))
        g = torch.exp(0.5 * torch.randn(norm.shape, generator=gen))
        conv.weight.copy_(g * v / norm)
        conv.bias.copy_(0.05 * torch.randn(conv.bias.shape, generator=gen))
    for lstm in (m for m in decoder.modules() if isinstance(m, LSTM)):
        for p in lstm.flat_weights():  # nn.LSTM's own initialisation, from this seed's generator, or N(0, lstm_std^2)
            if lstm_std is None:
                bound = 1 / math.sqrt(p.shape[0] // 4)
                p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * bound)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * lstm_std)

    latents = realistic_latents(1, calibration_frames, decoder.config.dimension, gen)
    x = (latents * JASCO_LATENT_STD + JASCO_LATENT_MEAN).permute(0, 2, 1)
    block_of = {id(b.conv2): b for b in decoder.layers if isinstance(b, ResBlock)}
    for conv, role in convs:
        seen = {}
        hooks = [conv.register_forward_hook(lambda m, i, o: seen.__setitem__("out", o))]
        if role == "branch_out":
            hooks.append(block_of[id(conv)].register_forward_hook(lambda m, i, o: seen.__setitem__("in", i[0])))
        decoder(x)  # not fused: every layer runs as itself, so the hooks fire
        for h in hooks:
            h.remove()
        linear = seen["out"] - conv.bias.view(1, -1, 1, 1)  # outputs are [B, C, 1, T]
        if role == "last":  # audio: zero-mean (a trained decoder makes no DC) at AUDIO_RMS
            mean = linear.mean(dim=(0, 2, 3))
            scale = AUDIO_RMS / _rms(linear - mean.view(1, -1, 1, 1))
            conv.weight.mul_(scale)
            conv.bias.copy_(-scale * mean)
            continue
        target = 0.5 * _rms(seen["in"]) if role == "branch_out" else 1.0
        wanted = math.sqrt(max(target**2 - _rms(conv.bias) ** 2, (0.1 * target) ** 2))
        conv.weight.mul_(wanted / _rms(linear))
    return decoder


@torch.no_grad()
def layer_levels(decoder: SEANetDecoder, x: torch.Tensor) -> list[float]:
    """RMS after each top-level layer: the check that nothing explodes or vanishes."""
    levels = []
    hooks = [layer.register_forward_hook(lambda m, i, o: levels.append(_rms(o))) for layer in decoder.layers]
    decoder(x)  # not fused: one output per layer
    for h in hooks:
        h.remove()
    return levels


# --------------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--checkpoints", type=int, default=None, help="random checkpoints (default 4; --quick 2)")
    parser.add_argument(
        "--seconds", type=float, default=None, help="seconds of audio per checkpoint (default 10; --quick 2)"
    )
    parser.add_argument("--quick", action="store_true", help="2 checkpoints of 2 s")
    parser.add_argument("--note", default=None, help="recorded in the JSON")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON path (default benchmarks/results/fidelity_<device>.json)"
    )
    parser.add_argument(
        "--mode",
        action="append",
        default=None,
        choices=list(MODES),
        help="measure only this mode (repeatable; e.g. on a CPU that emulates bfloat16)",
    )
    args = parser.parse_args(argv)
    modes = {name: MODES[name] for name in (args.mode or MODES)}
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_fidelity: --device cuda but CUDA is not available")
    n_ckpt = args.checkpoints or (2 if args.quick else 4)
    seconds = args.seconds or (2.0 if args.quick else 10.0)
    if n_ckpt < 1 or seconds <= 0:
        raise SystemExit("bench_fidelity: --checkpoints must be >= 1 and --seconds > 0")
    result = {
        "benchmark": "fidelity",
        **provenance("bench_fidelity.py", argv, args.device, args.note),
        "rounds": None,
        "seconds": seconds,  # no timing: nothing is repeated
        "weights": WEIGHTS_DOC,
        "latents": LATENTS_DOC,
        "metrics": {
            "snr_db": "10 log10(signal power / error power) over all samples",
            "log_mel_distance_db": "mean |10 log10(mel power ratio)|, 80 HTK mels to 16 kHz, "
            "n_fft 2048, hop 512, floor -100 dB below the loudest bin",
            "worst_band_snr_db": "lowest per-mel-band SNR (band power of the reference / of the "
            "error, over the whole clip)",
            "max_error_over_peak": "max |error| / max |reference|",
        },
        "checkpoints": [],
        "modes": {},
    }
    per_mode: dict[str, list[dict]] = {name: [] for name in modes}
    status = {name: "ok" for name in modes}
    notes: dict[str, str] = {}
    for k in range(n_ckpt):
        seed, lstm_std = 1000 + k, lstm_std_of_checkpoint(k)
        decoder = realistic_decoder(seed, lstm_std=lstm_std).to(args.device)
        cfg = decoder.config
        gen = torch.Generator().manual_seed(seed + 1)
        latents = realistic_latents(1, int(seconds * cfg.frame_rate), cfg.dimension, gen).to(args.device)
        want = reference.decode(reference.ReferenceDecoder(decoder), latents)
        levels = layer_levels(decoder, (latents * JASCO_LATENT_STD + JASCO_LATENT_MEAN).permute(0, 2, 1))
        result["checkpoints"].append(
            {
                "seed": seed,
                "lstm_std": lstm_std,
                "peak": want.abs().max().item(),
                "dc": want.mean().item(),
                "rms_dbfs": 20 * math.log10(_rms(want)),
                "layer_rms": [round(v, 4) for v in levels],
            }
        )
        lstm_init = f"N(0, {lstm_std:g}^2)" if lstm_std else "default init"
        print(
            f"checkpoint seed {seed} (LSTM {lstm_init}): audio peak {want.abs().max().item():.2f}, RMS "
            f"{20 * math.log10(_rms(want)):.1f} dBFS; layer RMS {min(levels):.2f}-{max(levels):.2f}",
            flush=True,
        )
        for name, kwargs in modes.items():
            if status[name] != "ok":
                continue
            try:
                # eager: the mode's arithmetic; its compiled forms' own error is in bench_decode's table
                fast = LatentDecoder(decoder, **{"backend": "eager", **kwargs})
                with torch.no_grad():
                    got = fast(latents)
            except TypeError as exc:  # a keyword this LatentDecoder does not take
                status[name] = f"not available in this jasco_fast ({exc})"
                continue
            except Exception as exc:  # e.g. a dtype with no kernels on this device
                status[name] = f"does not run on {args.device}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
                continue
            notes[name] = (
                f"backend {fast.backend!r}, dtype {str(fast.dtype).replace('torch.', '')}"
                + (f", recurrent {str(fast.recurrent_dtype).replace('torch.', '')}" if fast.recurrent_dtype else "")
                + (f", {fast.conv_format} convolutions" if getattr(fast, "conv_format", None) else "")
            )
            row = {
                "seed": seed,
                "snr_db": _fidelity.snr_db(want, got),
                "log_mel_distance_db": _fidelity.log_mel_distance(want, got, cfg.sample_rate),
                "worst_band_snr_db": _fidelity.worst_band_snr_db(want, got, cfg.sample_rate),
                "max_error_over_peak": _fidelity.max_error_over_peak(want, got),
                "finite": bool(torch.isfinite(got).all()),
            }
            per_mode[name].append(row)
            print(
                f"  {name:20s} SNR {row['snr_db']:6.1f} dB | worst band {row['worst_band_snr_db']:6.1f} dB | "
                f"log-mel {row['log_mel_distance_db']:.3f} dB | max err/peak {row['max_error_over_peak']:.1e}",
                flush=True,
            )
    for name in modes:
        rows = per_mode[name]
        if status[name] != "ok" or not rows:
            result["modes"][name] = {"status": status[name], "kwargs": repr(modes[name])}
            continue
        result["modes"][name] = {
            "status": "ok",
            "kwargs": repr(modes[name]),
            "notes": notes[name],
            "per_checkpoint": rows,
            "worst": {
                "snr_db": min(r["snr_db"] for r in rows),
                "worst_band_snr_db": min(r["worst_band_snr_db"] for r in rows),
                "log_mel_distance_db": max(r["log_mel_distance_db"] for r in rows),
                "max_error_over_peak": max(r["max_error_over_peak"] for r in rows),
            },
        }
    write_result(result, "fidelity", args.device, args.quick, args.out)
    print(f"\nfidelity against the float32 reference, worst over {n_ckpt} checkpoints of {seconds:g} s:")
    for name, m in result["modes"].items():
        if m["status"] != "ok":
            print(f"  {name:20s} {m['status']}")
        else:
            w = m["worst"]
            print(
                f"  {name:20s} SNR {w['snr_db']:6.1f} dB | worst band {w['worst_band_snr_db']:6.1f} dB | "
                f"log-mel {w['log_mel_distance_db']:.3f} dB | max err/peak {w['max_error_over_peak']:.1e}"
            )
    return result


if __name__ == "__main__":
    main()
