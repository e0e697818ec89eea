"""benchmarks/plots.py: every figure renders from the committed results JSON, and what it draws is the JSON's
numbers (read back from the matplotlib artists before saving)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib", reason="matplotlib (the `bench` extra) draws the figures")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


@pytest.fixture(scope="module")
def plots():
    spec = importlib.util.spec_from_file_location("plots", ROOT / "benchmarks" / "plots.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["plots"] = module
    spec.loader.exec_module(module)
    yield module
    import matplotlib.pyplot as plt

    plt.close("all")


def _json(name):
    return json.loads((RESULTS / name).read_text())


def _bars(ax):
    """(label, width, (left whisker, right whisker)) per horizontal bar, in drawing order."""
    from matplotlib.container import BarContainer

    labels = [t.get_text() for t in ax.get_yticklabels()]
    out = []
    for c in ax.containers:
        if not isinstance(c, BarContainer):
            continue
        segs = c.errorbar.lines[2][0].get_segments() if c.errorbar is not None else [None] * len(c.patches)
        for rect, seg in zip(c.patches, segs):
            whiskers = None if seg is None else (seg[0][0], seg[1][0])
            out.append((rect.get_width(), whiskers))
    return labels, out


def _flat(x):
    return [float(v) for item in x for v in (_flat(item) if isinstance(item, (list, tuple)) else [item])]


def _close(got, want):
    got, want = (_flat(x) if isinstance(x, (list, tuple)) else [float(x)] for x in (got, want))
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_every_figure_is_committed_and_referenced(plots):
    performance = (ROOT / "docs" / "performance.md").read_text()
    for name in plots.FIGURES:
        assert (ROOT / "docs" / "figures" / name).is_file(), f"docs/figures/{name} missing: python benchmarks/plots.py"
        assert f"figures/{name}" in performance, f"docs/performance.md does not show {name}"
    readme = (ROOT / "README.md").read_text()
    assert f"docs/figures/{next(iter(plots.FIGURES))}" in readme


def test_decode_time_draws_the_json(plots):
    decode = _json("decode_cpu.json")
    fig = plots.figure("decode-time.svg")
    amx, peers_ax = fig.axes
    _, bars = _bars(amx)
    want = []
    for r in (r for r in decode["rows"] if r["batch"] == 1):
        want += [r["eager_ms"], r["fast_ms"]]
    assert len(bars) == len(want)
    for (width, whiskers), s in zip(bars, want):
        _close(width, s["median"] * 1e-3)
        _close(whiskers, (s["min"] * 1e-3, s["max"] * 1e-3))
    assert "amx" in amx.get_title(loc="left")
    labels, bars = _bars(peers_ax)
    impls = {n: e for n, e in decode["peers"]["implementations"].items() if e["status"] == "ok"}
    assert len(bars) == len(impls)
    for label, (width, whiskers), (name, e) in zip(labels, bars, impls.items()):
        assert name.startswith(label)
        _close(width, e["ms"]["median"] * 1e-3)
        _close(whiskers, (e["ms"]["min"] * 1e-3, e["ms"]["max"] * 1e-3))
    assert "avx512_bf16" in peers_ax.get_title(loc="left")


def test_peak_rss_draws_the_json(plots):
    result = _json("long_audio_cpu.json")
    (ax,) = plots.figure("peak-rss.svg").axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    for batch in (1, 8):
        for path, word in (("full", "one pass"), ("chunked", "chunked")):
            want = [
                (m["seconds"], m["peak_rss_mb"] / 1e3)
                for m in result["memory"]
                if m["batch"] == batch and m["path"] == path and "peak_rss_mb" in m
            ]
            line = lines[f"{word}, B = {batch}"]
            _close(list(zip(line.get_xdata(), line.get_ydata())), want)
    cli = [line for label, line in lines.items() if label.startswith("jasco-fast decode")][0]
    hour = _json("long_audio_cli_1h_cpu.json")
    _close(list(cli.get_xdata()), [result["cli"]["seconds"], hour["audio_seconds"]])
    _close(list(cli.get_ydata()), [result["cli"]["peak_rss_mb"] / 1e3, hour["peak_rss_kb"] / 1e6])


def test_first_audio_draws_the_json(plots):
    summary = _json("cold_start_cpu.json")["summary"]
    (ax,) = plots.figure("first-audio.svg").axes
    labels, bars = _bars(ax)
    assert len(bars) == len(summary)
    for label, (width, whiskers), (kind, s) in zip(labels, bars, summary.items()):
        assert label == plots.COLD_START_LABELS[kind]
        _close(width, s["first_audio_s"]["median"])
        _close(whiskers, (s["first_audio_s"]["min"], s["first_audio_s"]["max"]))


def test_fidelity_draws_the_json(plots):
    modes = {m: e for m, e in _json("fidelity_cpu.json")["modes"].items() if e["status"] == "ok"}
    (ax,) = plots.figure("fidelity.svg").axes
    labels, bars = _bars(ax)
    assert labels == list(modes)
    snr, band = bars[: len(modes)], bars[len(modes) :]
    _close([w for w, _ in snr], [e["worst"]["snr_db"] for e in modes.values()])
    _close([w for w, _ in band], [e["worst"]["worst_band_snr_db"] for e in modes.values()])


def test_rendering_is_deterministic(plots, tmp_path):
    first = {p.name: p.read_bytes() for p, _ in plots.write(tmp_path / "a")}
    second = {p.name: p.read_bytes() for p, _ in plots.write(tmp_path / "b")}
    assert first == second
