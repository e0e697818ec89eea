"""The jasco-fast command line on temporary folders: decode, skip, bad inputs, demo, torchrun."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import save_file

from jasco_fast.cli import main

HOP, RATE, D = 8, 8000, 8  # the tiny checkpoint (tests/checkpoints.py TINY_HF)


def write_inputs(folder, lengths=(("a", (40, D)), ("b", (2, 40, D)), ("c", (25, D)))):
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, (name, shape) in enumerate(lengths):
        latents = torch.randn(shape)
        path = folder / f"{name}{['.pt', '.npy', '.safetensors'][i % 3]}"
        if path.suffix == ".pt":
            torch.save(latents, path)
        elif path.suffix == ".npy":
            np.save(path, latents.numpy())
        else:
            save_file({"latents": latents}, str(path))
        files.append(path)
    return files


def decode(files, out, checkpoint, *extra):
    return main(
        [
            "decode",
            *map(str, files),
            "--out-dir",
            str(out),
            "--checkpoint",
            str(checkpoint),
            "--backend",
            "eager",
            *extra,
        ]
    )


def test_decode_every_input_format_and_batching(tmp_path, tiny_hf_checkpoint, capsys):
    files = write_inputs(tmp_path / "in")
    assert decode(files, tmp_path / "out", tiny_hf_checkpoint, "--batch-size", "2") == 0
    expected = {"a.wav": 40, "b_0.wav": 40, "b_1.wav": 40, "c.wav": 25}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(expected)
    for name, frames in expected.items():
        info = sf.info(str(tmp_path / "out" / name))
        assert info.samplerate == RATE and info.frames == frames * HOP and info.channels == 1
    captured = capsys.readouterr()
    assert "decoded 4 items" in captured.out and "real-time factor" in captured.out
    # the progress bar counts audio seconds: total = 145 frames / 1000 frames per s
    assert "decoding audio seconds" in captured.err and "0.145/0.145" in captured.err and "s/s" in captured.err


def test_pt_and_safetensors_dicts_with_one_tensor(tmp_path, tiny_hf_checkpoint):
    (tmp_path / "in").mkdir()
    torch.save({"anything": torch.randn(12, D)}, tmp_path / "in" / "p.pt")
    save_file({"z": torch.randn(3, 12, D)}, str(tmp_path / "in" / "s.safetensors"))
    torch.save({"x": torch.randn(12, D), "y": torch.randn(12, D)}, tmp_path / "in" / "two.pt")
    code = decode(sorted((tmp_path / "in").iterdir()), tmp_path / "out", tiny_hf_checkpoint)
    assert code == 1  # two.pt: two tensors and no 'latents' key is ambiguous
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p.wav", "s_0.wav", "s_1.wav", "s_2.wav"]


def test_items_of_one_file_are_decoded_independently_of_batching(tmp_path, tiny_hf_checkpoint):
    files = write_inputs(tmp_path / "in", (("b", (3, 16, D)),))
    decode(files, tmp_path / "one", tiny_hf_checkpoint, "--batch-size", "1", "--strategy", "none")
    decode(files, tmp_path / "all", tiny_hf_checkpoint, "--batch-size", "3", "--strategy", "none")
    for i in range(3):
        a, _ = sf.read(str(tmp_path / "one" / f"b_{i}.wav"))
        b, _ = sf.read(str(tmp_path / "all" / f"b_{i}.wav"))
        np.testing.assert_allclose(a, b, atol=2 / 32768)


def test_skip_existing_and_overwrite(tmp_path, tiny_hf_checkpoint, capsys):
    files = write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    assert decode(files, out, tiny_hf_checkpoint) == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert decode(files, out, tiny_hf_checkpoint) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    printed = capsys.readouterr().out
    assert "decoded 0 items" in printed and "4 skipped" in printed
    (out / "a.wav").unlink()  # only the missing one is decoded
    assert decode(files, out, tiny_hf_checkpoint) == 0
    assert "decoded 1 items" in capsys.readouterr().out
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert decode(files, out, tiny_hf_checkpoint, "--overwrite") == 0
    assert "decoded 4 items" in capsys.readouterr().out
    assert all(p.stat().st_mtime_ns != stamps[p.name] for p in out.iterdir())


def test_inputs_whose_outputs_would_clash(tmp_path, tiny_hf_checkpoint, capsys):
    (tmp_path / "in").mkdir()
    torch.save(torch.randn(10, D), tmp_path / "in" / "x.pt")
    np.save(tmp_path / "in" / "x.npy", np.zeros((10, D), dtype=np.float32))
    assert decode([tmp_path / "in" / "x.pt", tmp_path / "in" / "x.npy"], tmp_path / "out", tiny_hf_checkpoint) == 1
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["x.wav"]
    assert "x.pt: its output names clash with those of" in capsys.readouterr().err


def test_bad_inputs_are_reported_one_line_each_and_the_rest_finish(tmp_path, tiny_hf_checkpoint, capsys):
    good = write_inputs(tmp_path / "in", (("good", (30, D)),))
    corrupt = tmp_path / "in" / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    wrong_d = tmp_path / "in" / "wrong_d.npy"
    np.save(wrong_d, np.zeros((30, D + 1), dtype=np.float32))
    rank4 = tmp_path / "in" / "rank4.pt"
    torch.save(torch.zeros(1, 1, 30, D), rank4)
    integer = tmp_path / "in" / "integer.pt"
    torch.save(torch.zeros(30, D, dtype=torch.int64), integer)
    nan = tmp_path / "in" / "nan.pt"
    torch.save(torch.full((30, D), float("nan")), nan)
    code = decode([*good, corrupt, wrong_d, rank4, integer, nan], tmp_path / "out", tiny_hf_checkpoint)
    err = capsys.readouterr().err
    assert code == 1
    assert (tmp_path / "out" / "good.wav").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.wav"]
    lines = [line for line in err.splitlines() if line.startswith("jasco-fast: ")]
    for path, problem in [
        (corrupt, "not a readable torch file"),
        (wrong_d, "D = 9"),
        (rank4, "[T, D] or [B, T, D]"),
        (integer, "codes have K = 30"),
        (nan, "NaN"),
    ]:  # integer files are codes [K, T]
        assert sum(str(path) in line and problem in line for line in lines) == 1, (path, err)


@pytest.mark.parametrize("fmt", ["flac", "mp3"])
def test_formats_and_strategy(tmp_path, tiny_hf_checkpoint, fmt):
    files = write_inputs(tmp_path / "in", (("x", (100, D)),))
    assert decode(files, tmp_path / "out", tiny_hf_checkpoint, "--format", fmt, "--strategy", "rms") == 0
    data, rate = sf.read(str(tmp_path / "out" / f"x.{fmt}"))
    assert rate == RATE and np.abs(data).max() > 0
    if fmt == "flac":
        assert len(data) == 100 * HOP
    else:  # LAME pads the start and end by up to a frame
        assert abs(len(data) - 100 * HOP) <= 2 * 1152


def test_decode_without_checkpoint_says_the_weights_are_random(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    torch.save(torch.randn(5, 128), tmp_path / "in" / "r.pt")
    assert (
        main(["decode", str(tmp_path / "in" / "r.pt"), "--out-dir", str(tmp_path / "out"), "--backend", "eager"]) == 0
    )
    err = capsys.readouterr().err
    assert "RANDOM" in err and "noise" in err
    info = sf.info(str(tmp_path / "out" / "r.wav"))
    assert info.samplerate == 32000 and info.frames == 5 * 640


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_without_cuda_is_a_clear_error(tmp_path, tiny_hf_checkpoint, capsys):
    files = write_inputs(tmp_path / "in", (("x", (10, D)),))
    assert decode(files, tmp_path / "out", tiny_hf_checkpoint, "--device", "cuda") == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert main(["demo", "--device", "cuda", "--out-dir", str(tmp_path / "demo")]) == 2


def test_bad_checkpoint_is_a_usage_error(tmp_path, capsys):
    files = write_inputs(tmp_path / "in", (("x", (10, D)),))
    assert decode(files, tmp_path / "out", tmp_path / "missing") == 2
    assert "no such file" in capsys.readouterr().err


def test_demo_on_the_default_architecture(tmp_path, capsys):
    assert main(["demo", "--seconds", "0.2", "--backend", "eager", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "RANDOM" in out and "eager (--backend eager)" in out
    # the steady state of several warm calls, and the first call against it
    assert re.search(r"steady state [\d.]+ s per call, median of [3-5] \([\d.]+-[\d.]+\): real-time factor", out), out
    assert re.search(r"first call [\d.]+ s, [\d.]+x the steady state", out), out
    info = sf.info(str(tmp_path / "demo_0.wav"))
    assert info.samplerate == 32000 and info.frames == 10 * 640


def test_demo_torch_compiled_on_a_checkpoint(tmp_path, tiny_hf_checkpoint, capsys):
    assert (
        main(
            [
                "demo",
                "--seconds",
                "0.05",
                "--checkpoint",
                str(tiny_hf_checkpoint),
                "--batch-size",
                "2",
                "--backend",
                "inductor",
                "--out-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "compiling with torch.compile" in out and "), torch.compile:" in out
    assert "first call" in out and "includes compiling with torch.compile" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo_0.wav", "demo_1.wav"]


@pytest.mark.parametrize("flags", [[], ["--backend", "aot"]])  # aot: the CPU's default
def test_demo_on_an_empty_artifact_cache_runs_eagerly(tmp_path, tiny_hf_checkpoint, capsys, flags):
    assert (
        main(["demo", "--seconds", "0.05", "--checkpoint", str(tiny_hf_checkpoint), *flags, "--out-dir", str(tmp_path)])
        == 0
    )
    assert "eager: no ahead-of-time decoder cached yet" in capsys.readouterr().out


class FakeBuilder:
    """Stands in for the background build process: records when it was started."""

    def __init__(self, events, recipes):
        self.recipes = recipes
        events.append(("build", len(recipes)))

    def poll(self):
        return None

    def wait(self, timeout=None):
        return 0


@pytest.fixture
def demo_events(monkeypatch):
    """The order of the demo's decoder calls ("call") and background build starts ("build", recipes)."""
    from jasco_fast import artifacts
    from jasco_fast.pipeline import LatentDecoder

    events = []
    forward = LatentDecoder.forward

    def counted(self, latents):
        events.append(("call",))
        return forward(self, latents)

    monkeypatch.setattr(LatentDecoder, "forward", counted)
    monkeypatch.setattr(artifacts, "build_in_background", lambda recipes, cache=None: FakeBuilder(events, recipes))
    return events


def test_demo_builds_the_missing_artifacts_only_after_its_timed_calls(
    tmp_path, tiny_hf_checkpoint, capsys, monkeypatch, demo_events
):
    monkeypatch.setenv("JASCO_FAST_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("JASCO_FAST_BACKGROUND_BUILD", "1")
    assert (
        main(["demo", "--seconds", "0.05", "--checkpoint", str(tiny_hf_checkpoint), "--out-dir", str(tmp_path / "out")])
        == 0
    )
    out = capsys.readouterr().out
    calls = demo_events.count(("call",))
    assert calls >= 1 + 3  # the first call and the steady state's warm calls
    # one build, of every artifact the decoder uses, started after the last call
    assert demo_events[:calls] == [("call",)] * calls and len(demo_events) == calls + 1, demo_events
    assert demo_events[-1][0] == "build" and demo_events[-1][1] == 8
    assert "eager: no ahead-of-time decoder cached yet" in out and "steady state" in out and "first call" in out
    line = out.splitlines()[-1]
    assert line.startswith("building the ahead-of-time decoder into " + str(tmp_path / "cache" / "aot"))
    assert "JASCO_FAST_BACKGROUND_BUILD=0" in line and "`jasco-fast compile`" in line


def test_demo_with_background_builds_off_builds_nothing(tmp_path, tiny_hf_checkpoint, capsys, monkeypatch, demo_events):
    monkeypatch.setenv("JASCO_FAST_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("JASCO_FAST_BACKGROUND_BUILD", "0")
    assert (
        main(["demo", "--seconds", "0.05", "--checkpoint", str(tiny_hf_checkpoint), "--out-dir", str(tmp_path / "out")])
        == 0
    )
    out = capsys.readouterr().out
    assert not [e for e in demo_events if e[0] == "build"]
    assert not list((tmp_path / "cache").glob("aot/*.pt2"))
    assert "not building the ahead-of-time decoder (JASCO_FAST_BACKGROUND_BUILD=0)" in out


def test_a_mode_without_the_inductor_backend_is_a_usage_error(tmp_path, capsys):
    assert (
        main(["demo", "--seconds", "0.05", "--backend", "eager", "--mode", "default", "--out-dir", str(tmp_path)]) == 2
    )
    assert "--mode is a torch.compile mode: it needs --backend inductor" in capsys.readouterr().err


@pytest.mark.parametrize("old", ["--no-compile", "--torch-compile", "--aot"])
def test_the_old_compile_flags_are_gone(tmp_path, old):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--seconds", "0.05", old, "--out-dir", str(tmp_path)])
    assert exc.value.code == 2


def test_bench_runs_the_registered_scripts_of_the_source_checkout(tmp_path, monkeypatch, capfd):
    import jasco_fast
    from jasco_fast.cli import BENCHMARKS

    bench = tmp_path / "benchmarks"
    bench.mkdir()
    (bench / "_common.py").write_text("")
    (bench / "bench_unregistered.py").write_text("raise SystemExit('must not run')\n")
    for name in BENCHMARKS:
        # each script sees background builds off and the environment as the command started, not as the
        # script before it left it, and runs as a script (its folder first on its path)
        (bench / f"bench_{name}.py").write_text(
            "import os, sys\n"
            "import _common\n"
            "def main(argv=None):\n"
            f"    print('TABLE {name}', argv, os.environ['JASCO_FAST_BACKGROUND_BUILD'], "
            "os.environ.get('JASCO_FAST_CACHE_DIR'))\n"
            "    os.environ['JASCO_FAST_CACHE_DIR'] = '/deleted'\n"
            "    return {}\n"
            "if __name__ == '__main__':\n"
            "    main(sys.argv[1:])\n"
        )
    monkeypatch.setattr(jasco_fast, "__file__", str(tmp_path / "jasco_fast" / "__init__.py"))
    monkeypatch.setenv("JASCO_FAST_BACKGROUND_BUILD", "1")
    cache = os.environ["JASCO_FAST_CACHE_DIR"]
    assert main(["bench", "--quick"]) == 0
    out = capfd.readouterr().out
    tables = [line for line in out.splitlines() if line.startswith("TABLE")]
    assert tables == [f"TABLE {name} ['--device', 'cpu', '--quick'] 0 {cache}" for name in BENCHMARKS]
    assert os.environ["JASCO_FAST_BACKGROUND_BUILD"] == "1" and os.environ["JASCO_FAST_CACHE_DIR"] == cache
    assert main(["bench", "decode", "--note", "busy machine"]) == 0
    out = capfd.readouterr().out
    assert "TABLE denorm" not in out and "TABLE decode ['--device', 'cpu', '--note', 'busy machine']" in out
    assert main(["bench", "nope"]) == 2
    assert "unknown benchmark 'nope'; choose from aot_weights, avx2_integer, codes," in capfd.readouterr().err
    (bench / "bench_decode.py").write_text("raise SystemExit(3)\n")
    assert main(["bench", "decode"]) == 1
    assert "benchmark decode failed (exit status 3)" in capfd.readouterr().err


def test_bench_outside_a_source_checkout_says_what_it_needs(tmp_path, monkeypatch, capsys):
    import jasco_fast

    # as installed from a wheel: site-packages/jasco_fast, and maybe some other project's benchmarks/ beside it
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "bench_other.py").write_text("raise SystemExit('must not run')\n")
    monkeypatch.setattr(jasco_fast, "__file__", str(tmp_path / "jasco_fast" / "__init__.py"))
    assert main(["bench"]) == 2
    err = capsys.readouterr().err
    assert "source checkout" in err and "pip install --no-build-isolation -e ." in err


def test_the_repository_benchmarks_are_found():
    import jasco_fast
    from jasco_fast.cli import BENCHMARKS, benchmark_scripts

    checkout = Path(__file__).resolve().parents[2]
    if Path(jasco_fast.__file__).resolve().parent.parent != checkout:
        pytest.skip(
            "jasco_fast is imported from an installed copy, not this checkout (e.g. make test-wheels' "
            "regular install); the error for that case is tested above"
        )
    assert list(benchmark_scripts()) == list(BENCHMARKS)
    # every benchmark script of the checkout is registered: a new one must be added to BENCHMARKS
    assert sorted(p.stem[len("bench_") :] for p in (checkout / "benchmarks").glob("bench_*.py")) == sorted(BENCHMARKS)


def test_module_entry_point_help(tmp_path):
    # (outside the checkout: `python -m` runs the jasco_fast under test, not a folder of the working directory)
    result = subprocess.run(
        [sys.executable, "-m", "jasco_fast", "--help"], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0 and "decode" in result.stdout and "demo" in result.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_shard_the_files(tmp_path, tiny_hf_checkpoint):
    files = write_inputs(tmp_path / "in", tuple((f"f{i}", (20 + i, D)) for i in range(5)))
    files.append(tmp_path / "in" / "broken.pt")
    files[-1].write_bytes(b"broken")
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        "jasco_fast",
        "decode",
        *map(str, files),
        "--out-dir",
        str(out),
        "--checkpoint",
        str(tiny_hf_checkpoint),
        "--backend",
        "eager",
    ]
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    # every good file decoded exactly once, by one of the two ranks
    assert sorted(p.name for p in out.iterdir()) == [f"f{i}.wav" for i in range(5)]
    assert result.stdout.count("decoded 5 items") == 1, result.stdout + result.stderr
    assert "on 2 processes" in result.stdout and "1 failed" in result.stdout
    # the gathered per-rank counts: each file decoded by exactly one rank (5 in all, both ranks busy)
    per_rank = [int(m) for m in re.findall(r"rank \d: (\d+) items", result.stdout)]
    assert len(per_rank) == 2 and sum(per_rank) == 5 and min(per_rank) >= 2, result.stdout
    assert result.stderr.count("broken.pt: not a readable torch file") == 1
    assert result.returncode != 0  # a failed input makes the whole run fail
