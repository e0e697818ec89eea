"""Markdown tables from the benchmark results JSON: the tables of docs/ come from here.

    python benchmarks/tables.py                 # print a table per benchmarks/results/*.json
    python benchmarks/tables.py --write         # also rewrite the marked blocks of DOCUMENTS and the figures
                                                # of docs/figures/ (benchmarks/plots.py; needs matplotlib)

A document marks a table with `<!-- results: decode_cpu.json -->` ... `<!-- /results -->`; --write replaces
what lies between with the table of that file, so the figures there are always those of the committed JSON.
`<!-- results: decode_cpu.json#peers -->` marks the table of one part of a file (here: its "peers" key).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DOCS = HERE.parent / "docs"
# The documents whose marked blocks --write rewrites: the README and every page of docs/.
DOCUMENTS = [HERE.parent / "README.md", *sorted(DOCS.rglob("*.md"))]
BLOCK = re.compile(r"(<!-- results: (?P<name>[\w.-]+)(?:#(?P<part>\w+))? -->\n).*?(<!-- /results -->)", re.S)


def _range(s: dict, fmt: str, scale: float = 1.0) -> str:
    """median [min-max] of a spread over rounds."""
    return f"{s['median'] * scale:{fmt}} [{s['min'] * scale:{fmt}}–{s['max'] * scale:{fmt}}]"


def cpu_class_words(result: dict) -> str:
    """The CPU class of a CPU result ("" for GPU results and for results recorded before classes were)."""
    if result.get("device_type", "cpu") != "cpu" or "cpu_class" not in result:
        return ""
    if result.get("cpu_class_emulated") and result.get("cpuid_as"):
        return (
            f", CPU class {result['cpu_class']} EMULATED by masking CPUID for the whole process "
            f"(tools/cpuid-as {result['cpuid_as']}: every library, the peers included, sees that class)"
        )
    if result.get("cpu_class_emulated"):
        caps = " ".join(f"{k}={v}" for k, v in result.get("isa_caps", {}).items())
        peers = (
            "; ONNX Runtime and OpenVINO keep the machine's own instruction set"
            if "implementations" in result or result.get("benchmark") == "decode"
            else ""
        )
        return f", CPU class {result['cpu_class']} EMULATED by instruction-set caps ({caps}{peers})"
    return f", CPU class {result['cpu_class']}"


def provenance_line(result: dict) -> str:
    load = result.get("load_average_at_start")
    note = f" Note: {result['note'].rstrip('.')}." if result.get("note") else ""
    if result.get("complete") is False:
        note += " The run did not finish: only the rows below were measured."
    rounds = f"{result['rounds']} interleaved rounds (median [min–max]), " if result.get("rounds") else ""
    return (
        f"Measured {result.get('date_utc', '(date not recorded)')} on {result['device']}{cpu_class_words(result)}, "
        f"torch {result['torch']}, "
        f"jasco_fast {result.get('jasco_fast')} ({result.get('git_commit')}), {rounds}load average at start {load[0] if load else '?'} on {result.get('cpu_count')} "
        f"CPUs, by `{result['command']}`.{note}"
    )


def decode_table(result: dict) -> str:
    lines = [
        provenance_line(result),
        "",
        "| B | audio | eager s | fast path s | fast / eager | first call s | real time | GEMM-rate time s | "
        "fast / GEMM-rate time | peak RSS eager / fast MB | rel. error |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['batch']} | {r['seconds']:g} s | {_range(r['eager_ms'], '.2f', 1e-3)} | "
            f"{_range(r['fast_ms'], '.2f', 1e-3)} | {_range(r['fast_over_eager'], '.2f')} | "
            f"{r['fast_first_call_ms'] / 1e3:.1f} | {r['fast_rtf']:.1f}x | {r['floor_ms'] / 1e3:.2f} | "
            f"{_range(r['fast_over_floor'], '.2f')} | {r['eager_peak_mem_mb']:.0f} / {r['fast_peak_mem_mb']:.0f} | "
            f"{r['rel_error']:.1e} |"
        )
    lines.append("")
    lines.append(
        f"GEMM-rate time: the decoder's arithmetic at this run's measured float32 2048^3 GEMM rate "
        f'({result["matmul_gflops"]:.0f} GFLOP/s); not a floor (docs/performance.md, "Floors").'
    )
    return "\n".join(lines)


def denorm_transpose_table(result: dict) -> str:
    lines = [
        provenance_line(result),
        "",
        "| shape | output | clone ms | fused, contiguous: ms (x clone) | fused, channels-last: ms (x clone) | "
        "eager `(x*std+mean).permute(0,2,1).contiguous()`: ms (x clone) |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        cells = [str(tuple(r["shape"])), r["out_dtype"], _range(r["ms"]["clone"], ".3f")]
        for k in ("fused", "fused_channels_last", "eager"):
            cells.append(f"{r['ms'][k]['median']:.3f} ({_range(r['over_clone'][k], '.2f')})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def peers_table(peers: dict) -> str:
    """bench_decode.py --peers: every implementation's time as a ratio to the baseline, and its error."""
    lines = [
        provenance_line(peers),
        "",
        f"B = {peers['batch']}, {peers['seconds']:g} s of audio ({peers['frames']} latent frames), {peers['decoder']}. "
        f"Ratio: time / `{peers['baseline']}`'s time in the same round (below 1: faster). Error: against the "
        f"float32 reference (`jasco_fast.reference`).",
        "",
        "| implementation | time s | time ratio | max error / peak | SNR dB | notes |",
        "|---|---|---|---|---|---|",
    ]
    for name, e in peers["implementations"].items():
        if e["status"] != "ok":
            lines.append(f"| {name} | – | – | – | – | {e['status']} |")
            continue
        lines.append(
            f"| {name} | {_range(e['ms'], '.2f', 1e-3)} | {_range(e['over_baseline'], '.2f')} | "
            f"{e['max_error_over_peak']:.1e} | {e['snr_db']:.1f} | {e['notes']} |"
        )
    return "\n".join(lines)


def stages_table(result: dict) -> str:
    r = result["rates"]
    lines = [
        provenance_line(result),
        "",
        f"Decode of {result['frames']} frames at B = {result['batch']}, {result['dtype']}, each stage compiled on its "
        f"own (torch.compile with LatentDecoder's options). Rates (best of two measurements): {r['gemm_square_2048_flops'] / 1e9:.0f} "
        f"GFLOP/s for a 2048^3 GEMM, {r['lstm_matvec_bytes_per_s'] / 1e9:.1f} GB/s for the LSTM's [4096, 1024] "
        f"matvec, {r['copy_bytes_per_s'] / 1e9:.1f} GB/s copy (read + write).",
        "",
        "| stage | output [B, C, 1, T] | eager ms | compiled ms | floor ms | bound | compiled / floor (median) | "
        "fastest round / floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["stages"]:
        bound = "weights bytes x T" if row["stage"] == "lstm" else row["bound"]
        lines.append(
            f"| {row['stage']} | {row['out_shape']} | {_range(row['eager_ms'], '.1f')} | "
            f"{_range(row['compiled_ms'], '.1f')} | {row['floor_ms']:.1f} | {bound} | "
            f"{row['ratio_compiled_to_floor']:.2f} | {row['ratio_fastest_compiled_to_floor']:.2f} |"
        )
    total = result["sum_of_stages_ms"]
    lines.append(
        f"| sum of stages | | {total['eager']:.1f} | {total['compiled']:.1f} | {result['sum_of_floors_ms']:.1f} | | "
        f"{total['compiled'] / result['sum_of_floors_ms']:.2f} | "
        f"{result['sum_of_fastest_rounds_ms']['compiled'] / result['sum_of_floors_ms']:.2f} |"
    )
    whole = result.get("whole_decode_ms") or {}
    if whole:
        lines += [
            "",
            f"Whole decode in the same rounds: eager {_range(whole['eager'], '.1f')} ms, compiled (LatentDecoder, "
            f"one pass) {_range(whole['compiled'], '.1f')} ms: {result['whole_compiled_to_floor']:.2f}x the sum "
            f"of the floors (fastest round {result['whole_fastest_compiled_to_floor']:.2f}x).",
        ]
    return "\n".join(lines)


def _checkpoint_name(c: dict) -> str:
    lstm_std = c.get("lstm_std")  # absent in results from before the high-gain LSTM checkpoints
    return f"{c['seed']} (LSTM N(0, {lstm_std:g}^2))" if lstm_std else str(c["seed"])


def fidelity_table(result: dict) -> str:
    """bench_fidelity.py: each reduced-precision mode against float32, worst case over the checkpoints."""
    lines = [
        provenance_line(result),
        "",
        f"{len(result['checkpoints'])} random-weight EnCodec 32 kHz checkpoints (seeds "
        f"{', '.join(_checkpoint_name(c) for c in result['checkpoints'])}), {result['seconds']:g} s of latents each; "
        f"{result['weights']}; {result['latents']}",
        "",
        "| mode | SNR dB, worst [per checkpoint] | worst mel band's SNR dB | log-mel distance dB, worst "
        "[per checkpoint] | max error / peak, worst | notes |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in result["modes"].items():
        if m["status"] != "ok":
            lines.append(f"| {name} | – | – | – | – | {m['status']} |")
            continue
        snr = ", ".join(f"{p['snr_db']:.1f}" for p in m["per_checkpoint"])
        mel = ", ".join(f"{p['log_mel_distance_db']:.3f}" for p in m["per_checkpoint"])
        worst = m["worst"]
        lines.append(
            f"| {name} | {worst['snr_db']:.1f} [{snr}] | {worst['worst_band_snr_db']:.1f} | "
            f"{worst['log_mel_distance_db']:.3f} [{mel}] | "
            f"{worst['max_error_over_peak']:.1e} | {m['notes']} |"
        )
    levels = ", ".join(f"{c['peak']:.2f} / {c['rms_dbfs']:.1f} dBFS" for c in result["checkpoints"])
    lines += ["", f"Level of the float32 decode per checkpoint (peak / RMS): {levels}."]
    return "\n".join(lines)


RENDER = {
    "decode": decode_table,
    "denorm_transpose": denorm_transpose_table,
    "fidelity": fidelity_table,
    "stages": stages_table,
}
PARTS = {"peers": peers_table}


def table(path: Path, part: str | None = None) -> str:
    result = json.loads(path.read_text())
    if part is not None:
        if part not in PARTS or part not in result:
            raise SystemExit(
                f"{path}: no part {part!r} to render (parts: {', '.join(k for k in PARTS if k in result)})"
            )
        return PARTS[part](result[part])
    if "date_utc" not in result:
        raise SystemExit(f"{path}: written by an older benchmark script (no date, rounds or spread); rerun it")
    return RENDER[result["benchmark"]](result)


def rewrite(document: Path) -> bool:
    text = document.read_text()

    def replace(m: re.Match) -> str:
        return m.group(1) + table(RESULTS / m.group("name"), m.group("part")) + "\n" + m.group(4)

    new = BLOCK.sub(replace, text)
    if new != text:
        document.write_text(new)
    return new != text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--write", action="store_true", help="rewrite the marked blocks of the documents and the figures"
    )
    args = parser.parse_args(argv)
    for path in sorted(RESULTS.glob("*.json")):
        result = json.loads(path.read_text())
        if result.get("benchmark") in RENDER:
            if result.get("rows", True) != []:  # a decode file may hold only the peers so far
                print(f"## {path.name}\n\n{table(path)}\n")
            for part in PARTS:
                if part in result:
                    print(f"## {path.name}#{part}\n\n{table(path, part)}\n")
    if args.write:
        for doc in DOCUMENTS:
            print(f"{doc.relative_to(HERE.parent)}: {'updated' if rewrite(doc) else 'unchanged'}")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SystemExit("the figures need matplotlib: pip install matplotlib (in the `bench` extra)") from None
        import plots  # benchmarks/ is sys.path[0] when this script runs

        for path, changed in plots.write():
            print(f"docs/figures/{path.name}: {'updated' if changed else 'unchanged'}")


if __name__ == "__main__":
    main()
