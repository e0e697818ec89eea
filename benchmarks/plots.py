"""SVG figures from the committed benchmark results JSON (docs/figures/).

    python benchmarks/plots.py                  # write every figure to docs/figures/
    python benchmarks/tables.py --write         # the same, with the tables of the docs

Each figure is drawn from benchmarks/results/*.json only, so a figure always shows the committed numbers
(tests/test_docs_figures.py reads the numbers back from the drawn artists and compares them with the JSON).
The SVGs are deterministic (fixed hash salt, no date), so rerunning on unchanged JSON changes nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
FIGURES_DIR = HERE.parent / "docs" / "figures"

MACHINE_OF_CLASS = {"amx": "Intel Xeon with AMX", "avx512_bf16": "AMD EPYC Zen 5", "avx2": "AVX2-only CPU"}


def load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def cpu_class(result: dict, name: str, part: str | None = None) -> str:
    if "cpu_class" not in result:
        raise SystemExit(f"{name}{'#' + part if part else ''}: no cpu_class recorded; rerun its benchmark")
    return result["cpu_class"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "svg.hashsalt": "jasco_fast",
            "svg.fonttype": "none",
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    )
    return plt


def _barh_spread(ax, labels, spreads, *, scale=1.0, color=None):
    """Horizontal bars at the medians with min-max whiskers; returns the BarContainer."""
    med = [s["median"] * scale for s in spreads]
    lo = [s["median"] * scale - s["min"] * scale for s in spreads]
    hi = [s["max"] * scale - s["median"] * scale for s in spreads]
    y = list(range(len(labels)))
    bars = ax.barh(y, med, xerr=[lo, hi], color=color, capsize=2, error_kw={"elinewidth": 0.8})
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    return bars


def decode_time(plt):
    """Decode time per implementation and mode, one panel per CPU class, median with the min-max of rounds."""
    decode = load("decode_cpu.json")
    peers = decode["peers"]
    panels = []
    rows = [r for r in decode["rows"] if r["batch"] == 1]
    labels, spreads, colors = [], [], []
    for r in rows:
        labels += [f"JASCO eager (reference), {r['seconds']:g} s", f"jasco_fast float32, {r['seconds']:g} s"]
        spreads += [r["eager_ms"], r["fast_ms"]]
        colors += ["0.6", "C0"]
    panels.append((cpu_class(decode, "decode_cpu.json"), decode, "decode: B = 1, float32", labels, spreads, colors))
    names = [n for n, e in peers["implementations"].items() if e["status"] == "ok"]
    colors = ["C0" if n.startswith("jasco_fast") else "0.6" for n in names]
    panels.append(
        (
            cpu_class(peers, "decode_cpu.json", "peers"),
            peers,
            f"CPU peers: B = {peers['batch']}, {peers['seconds']:g} s",
            [n if n.startswith("jasco_fast") else n.split(" (")[0] for n in names],
            [peers["implementations"][n]["ms"] for n in names],
            colors,
        )
    )
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(8, 1.6 + 0.3 * sum(len(p[3]) for p in panels)),
        gridspec_kw={"height_ratios": [len(p[3]) for p in panels]},
    )
    for ax, (cls, result, what, labels, spreads, colors) in zip(axes, panels):
        _barh_spread(ax, labels, spreads, scale=1e-3, color=colors)
        ax.set_title(
            f"CPU class {cls} ({MACHINE_OF_CLASS.get(cls, cls)}, {result['threads']} threads)\n{what}",
            loc="left",
            fontsize=9,
        )
        ax.set_xlabel("decode time, s (median, whiskers: min-max of rounds)")
    fig.tight_layout()
    return fig


def peak_rss(plt):
    """Whole-process peak RSS against audio length, one pass against chunked (long_audio_cpu.json)."""
    result = load("long_audio_cpu.json")
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for batch, marker in ((1, "o"), (8, "s")):
        for path, style, word in (("full", "--", "one pass"), ("chunked", "-", "chunked")):
            pts = [
                (m["seconds"], m["peak_rss_mb"] / 1e3)
                for m in result["memory"]
                if m["batch"] == batch and m["path"] == path and "peak_rss_mb" in m
            ]
            if pts:
                ax.plot(
                    *zip(*pts),
                    style,
                    marker=marker,
                    color="C0" if path == "chunked" else "C3",
                    label=f"{word}, B = {batch}",
                )
    cli = result["cli"]
    hour = load("long_audio_cli_1h_cpu.json")
    ax.plot(
        [cli["seconds"], hour["audio_seconds"]],
        [cli["peak_rss_mb"] / 1e3, hour["peak_rss_kb"] / 1e6],
        "^",
        color="C2",
        linestyle="none",
        label="jasco-fast decode to FLAC, B = 1 (chunked)",
    )
    ax.set_xscale("log")
    ax.set_xlabel("audio length, s")
    ax.set_ylabel("peak RSS of the process, GB")
    ax.set_title(f"CPU class {result['cpu_class']} ({result['device']}):\nmemory of one decode", loc="left", fontsize=9)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


COLD_START_LABELS = {
    "transformers": "transformers eager",
    "jasco_fast_empty": "jasco_fast, empty cache",
    "jasco_fast_warm": "jasco_fast, warm cache",
    "torch_compile": "jasco_fast, torch.compile",
}


def first_audio(plt):
    """Time from a new process's start to its first 10 s of audio, per path (cold_start_cpu.json)."""
    result = load("cold_start_cpu.json")
    kinds = list(result["summary"])
    fig, ax = plt.subplots(figsize=(7, 2.6))
    _barh_spread(
        ax,
        [COLD_START_LABELS.get(k, k) for k in kinds],
        [result["summary"][k]["first_audio_s"] for k in kinds],
        color=["0.6" if k == "transformers" else "C0" for k in kinds],
    )
    ax.set_xlabel("new process to first audio, s (median, whiskers: min-max of rounds)")
    ax.set_title(
        f"CPU class {result['cpu_class']} ({result['device']}):\ncold start, {result['audio_seconds']:g} s of audio",
        loc="left",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def fidelity(plt):
    """SNR and worst mel band's SNR per reduced-precision mode, worst over the checkpoints (fidelity_cpu.json)."""
    result = load("fidelity_cpu.json")
    modes = [m for m, e in result["modes"].items() if e["status"] == "ok"]
    y = list(range(len(modes)))
    fig, ax = plt.subplots(figsize=(7, 3.0))
    ax.barh(
        [i - 0.2 for i in y],
        [result["modes"][m]["worst"]["snr_db"] for m in modes],
        height=0.4,
        color="C0",
        label="SNR, worst checkpoint",
    )
    ax.barh(
        [i + 0.2 for i in y],
        [result["modes"][m]["worst"]["worst_band_snr_db"] for m in modes],
        height=0.4,
        color="C1",
        label="worst mel band's SNR",
    )
    ax.axvline(40, color="k", linewidth=0.8, linestyle=":", label="40 dB")
    ax.set_yticks(y, modes)
    ax.invert_yaxis()
    ax.set_xlabel("dB against the float32 reference (higher: closer)")
    ax.set_title(
        f"CPU class {result['cpu_class']} ({result['device']}):\nfidelity, {len(result['checkpoints'])} checkpoints",
        loc="left",
        fontsize=9,
    )
    ax.legend(frameon=False, fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


FIGURES = {
    "decode-time.svg": decode_time,
    "peak-rss.svg": peak_rss,
    "first-audio.svg": first_audio,
    "fidelity.svg": fidelity,
}


def figure(name: str):
    """The matplotlib figure of one entry of FIGURES (not saved)."""
    return FIGURES[name](_pyplot())


def write(out_dir: Path = FIGURES_DIR) -> list[tuple[Path, bool]]:
    """Render every figure to out_dir; returns (path, changed) per figure."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    done = []
    for name, draw in FIGURES.items():
        fig = draw(plt)
        path = out_dir / name
        old = path.read_bytes() if path.exists() else None
        fig.savefig(path, format="svg", metadata={"Date": None})
        plt.close(fig)
        done.append((path, path.read_bytes() != old))
    return done


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=FIGURES_DIR)
    args = parser.parse_args(argv)
    for path, changed in write(args.out_dir):
        print(f"{path.name}: {'updated' if changed else 'unchanged'}")


if __name__ == "__main__":
    main()
