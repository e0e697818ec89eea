"""Codes benchmark: EnCodec codes -> audio, transformers' EncodecModel.decode against jasco_fast's CodeDecoder.

    python benchmarks/bench_codes.py [--device cpu|cuda] [--quick] [--rounds N] [--seconds S]

Both sides decode the same MusicGen-shaped tokens ([B, 4, 50 * seconds], codebooks of 2048) with the same
EnCodec 32 kHz weights (random weights and codebooks: timing does not depend on them). The baseline is what
MusicGen's ``generate_audio`` runs: ``EncodecModel.decode(codes[None], [None])`` (RVQ decode, then the eager
decoder with weight norm recomputed on every call). The fast path is ``CodeDecoder`` as users get it (fused
``codes_to_latents`` op, channels-last decoder under torch.compile, chunked beyond 5.4 s), loaded from the
transformers folder by ``load_decoder`` / ``load_quantizer``; its first call (compilation) is reported apart.
Timed calls alternate between the two (interleaved rounds), so drift on a shared machine hits both alike;
the table gives medians and the spread (min-max) of the per-round ratio. B = 1 and 8.
Writes benchmarks/results/codes_<device>.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import ENCODEC_32KHZ, device_name, spread, write_result

import jasco_fast


def build_models(device: str, folder: Path):
    from transformers import EncodecConfig, EncodecModel

    torch.manual_seed(0)
    model = EncodecModel(EncodecConfig(**ENCODEC_32KHZ)).eval()  # its quantizer: 4 codebooks of 2048 x 128
    with torch.no_grad():
        for layer in model.quantizer.layers:  # transformers initialises codebooks to zeros
            layer.codebook.embed.normal_()
    model.save_pretrained(folder)
    decoder = jasco_fast.load_decoder(folder, device=device)
    quantizer = jasco_fast.load_quantizer(folder, device=device)
    return model.to(device), decoder, quantizer


def timed(fn, device: str) -> tuple[float, torch.Tensor]:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="2 s of audio, 2 rounds")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timed rounds per row (default 5)")
    parser.add_argument("--seconds", type=float, default=None, help="audio seconds per item (default 10)")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON path (default benchmarks/results/codes_<device>.json)"
    )
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)
    seconds = args.seconds or (2.0 if args.quick else 10.0)
    frames = round(50 * seconds)

    with tempfile.TemporaryDirectory() as tmp:
        model, decoder, quantizer = build_models(args.device, Path(tmp))
    fast = jasco_fast.CodeDecoder(decoder, quantizer)
    gen = torch.Generator().manual_seed(1)
    rows = []
    for batch in (1, 8):
        codes = torch.randint(0, 2048, (batch, quantizer.num_codebooks, frames), generator=gen).to(args.device)
        first_ms = 1e3 * timed(lambda: fast(codes), args.device)[0]
        timed(lambda: model.decode(codes[None], [None])[0], args.device)  # warm-up of the baseline
        base_s, fast_s = [], []
        for _ in range(rounds):
            t, want = timed(lambda: model.decode(codes[None], [None])[0], args.device)
            base_s.append(t)
            t, got = timed(lambda: fast(codes), args.device)
            fast_s.append(t)
        speedup, fast_median = spread([b / f for b, f in zip(base_s, fast_s)]), spread(fast_s)["median"]
        rel_error = ((got - want).abs().max() / want.abs().max()).item()
        row = dict(
            batch=batch,
            codebooks=quantizer.num_codebooks,
            frames=frames,
            seconds=seconds,
            transformers_ms=spread(base_s, 1e3)["median"],
            fast_ms=1e3 * fast_median,
            fast_first_call_ms=first_ms,
            speedup_median=speedup["median"],
            speedup_min=speedup["min"],
            speedup_max=speedup["max"],
            fast_rtf=batch * seconds / fast_median,
            rel_error=rel_error,
            transformers_s=base_s,
            fast_s=fast_s,
        )
        rows.append(row)
        print(
            f"B={batch}: transformers {row['transformers_ms']:.0f} ms, CodeDecoder {row['fast_ms']:.0f} ms "
            f"(first call {first_ms:.0f} ms): speedup {row['speedup_median']:.2f}x "
            f"[{row['speedup_min']:.2f}-{row['speedup_max']:.2f}], real-time factor {row['fast_rtf']:.1f}x, "
            f"rel. error {rel_error:.1e}",
            flush=True,
        )
    result = dict(
        benchmark="codes",
        device=device_name(args.device),
        device_type=args.device,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        jasco_fast=jasco_fast.__version__,
        model="EnCodec 32 kHz (facebook/encodec_32khz config, random weights and codebooks)",
        baseline="transformers EncodecModel.decode(codes[None], [None])",
        fast="jasco_fast.CodeDecoder (float32, torch.compile, default chunking)",
        rounds=rounds,
        interleaved=True,
        rows=rows,
    )
    write_result(result, "codes", args.device, args.quick, args.out)


if __name__ == "__main__":
    main()
