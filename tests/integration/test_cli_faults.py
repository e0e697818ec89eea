"""`jasco-fast decode` under faults (issue 16): a read-only output folder, a folder that fills up, an input
deleted mid-run, SIGTERM and SIGINT mid-batch. In each case the outputs already written stay whole, no
partial or temporary file is left, the exit status says the run failed, and a rerun finishes the job.

Real faults where this machine allows them (tmpfs mounts need root with CAP_SYS_ADMIN; tests run as root
here, and root ignores file permissions, so a read-only *mount* is the real read-only folder); the same
faults simulated at the writer, which run everywhere."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import jasco_fast._files as _files
import jasco_fast.audio as audio
import jasco_fast.cli as cli
import jasco_fast.io as inputs
from jasco_fast.cli import main

HOP, RATE, D = 8, 8000, 8  # the tiny checkpoint (tests/checkpoints.py TINY_HF)
REPO = Path(__file__).resolve().parents[2]


def write_inputs(folder: Path, count: int, frames: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = []
    for i in range(count):
        path = folder / f"item{i:03d}.npy"
        np.save(path, rng.standard_normal((frames, D)).astype(np.float32))
        files.append(path)
    return files


def decode(files, out, checkpoint, *extra) -> int:
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
            "--batch-size",
            "1",
            *extra,
        ]
    )


def leftovers(folder: Path) -> list[str]:
    """Temporaries or anything else that is not a finished output."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or not p.name.endswith(".wav"))


def assert_whole(folder: Path, frames: int) -> list[str]:
    """Every output in ``folder`` decodes completely; returns their names."""
    names = sorted(p.name for p in folder.glob("*.wav"))
    for name in names:
        info = sf.info(str(folder / name))
        assert info.frames == frames * HOP and info.samplerate == RATE, (name, info)
        assert sf.read(str(folder / name))[0].shape == (frames * HOP,)
    return names


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size, read_only) -> a fresh tmpfs folder; remount(size, read_only) changes it."""
    mounts = []

    def mount(size: str, read_only: bool = False) -> Path:
        point = tmp_path / f"mnt{len(mounts)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the simulated variant covers it")
        mounts.append(point)
        if read_only:
            remount(point, size, True)
        return point

    def remount(point: Path, size: str, read_only: bool) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size},{'ro' if read_only else 'rw'}", str(point)], check=True)

    yield mount, remount
    for point in reversed(mounts):
        subprocess.run(["umount", "-l", str(point)], check=False)


# --------------------------------------------------------------------------------------------------
# A read-only output folder


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_read_only_output_folder_simulated(tmp_path, tiny_hf_checkpoint, capsys, monkeypatch, code):
    files = write_inputs(tmp_path / "in", 6, 30)
    out = tmp_path / "out"
    real_open = _files.open_temporary
    opened = []

    def open_then_refuse(path):  # the folder turns read-only after two outputs
        if len(opened) >= 2:
            raise OSError(code, os.strerror(code), str(path))
        opened.append(path)
        return real_open(path)

    monkeypatch.setattr(_files, "open_temporary", open_then_refuse)
    assert decode(files, out, tiny_hf_checkpoint) == 1
    captured = capsys.readouterr()
    # Writing overlaps decoding, so up to every remaining batch may be decoded (and refused) before it stops.
    stopped = re.search(
        rf"stopping: {re.escape(str(out))} cannot take more output \({os.strerror(code)}\); "
        rf"(\d) items not decoded",
        captured.err,
    )
    assert stopped and 0 <= int(stopped.group(1)) <= 3, captured.err
    assert "decoded 2 items" in captured.out and "4 failed" in captured.out, captured.out
    assert assert_whole(out, 30) == ["item000.wav", "item001.wav"] and leftovers(out) == []

    monkeypatch.setattr(_files, "open_temporary", real_open)  # writable again: the rerun finishes the job
    assert decode(files, out, tiny_hf_checkpoint) == 0
    assert "2 skipped" in capsys.readouterr().out
    assert len(assert_whole(out, 30)) == 6 and leftovers(out) == []


def test_read_only_output_folder_mounted(tmp_path, tiny_hf_checkpoint, capsys, tmpfs):
    mount, remount = tmpfs
    out = mount("1m")
    files = write_inputs(tmp_path / "in", 4, 30)
    assert decode(files[:2], out, tiny_hf_checkpoint) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    remount(out, "1m", read_only=True)
    assert decode(files, out, tiny_hf_checkpoint) == 1
    assert "Read-only file system" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched, nothing left behind
    remount(out, "1m", read_only=False)
    assert decode(files, out, tiny_hf_checkpoint) == 0
    assert len(assert_whole(out, 30)) == 4 and leftovers(out) == []


def test_output_folder_that_cannot_be_created(tmp_path, tiny_hf_checkpoint, capsys, tmpfs):
    mount, _ = tmpfs
    parent = mount("64k", read_only=True)
    files = write_inputs(tmp_path / "in", 1, 30)
    assert decode(files, parent / "out", tiny_hf_checkpoint) == 2
    assert f"cannot create the output folder {parent / 'out'}: Read-only file system" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# A folder that fills up while writing


def test_disk_fills_up_simulated(tmp_path, tiny_hf_checkpoint, capsys, monkeypatch):
    files = write_inputs(tmp_path / "in", 5, 30)
    out = tmp_path / "out"
    real = audio.sf.SoundFile
    writes = []

    class FillingUp(real):
        def write(self, data):  # the third file gets half its samples on disk, then the disk is full
            if len(writes) >= 2:
                super().write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            writes.append(1)
            return super().write(data)

    monkeypatch.setattr(audio.sf, "SoundFile", FillingUp)
    assert decode(files, out, tiny_hf_checkpoint) == 1
    assert "No space left on device" in capsys.readouterr().err
    monkeypatch.setattr(audio.sf, "SoundFile", real)
    assert assert_whole(out, 30) == ["item000.wav", "item001.wav"] and leftovers(out) == []
    assert decode(files, out, tiny_hf_checkpoint) == 0
    assert len(assert_whole(out, 30)) == 5 and leftovers(out) == []


def test_disk_fills_up_tmpfs(tmp_path, tiny_hf_checkpoint, capsys, tmpfs):
    mount, remount = tmpfs
    frames = 1000  # 8000 samples: a 16 kB WAV, four 4 kB pages of tmpfs
    out = mount("56k")  # room for three
    files = write_inputs(tmp_path / "in", 8, frames)
    assert decode(files, out, tiny_hf_checkpoint) == 1
    err = capsys.readouterr().err
    assert "stopping:" in err and "cannot take more output" in err, err
    written = assert_whole(out, frames)
    assert 1 <= len(written) < 8 and leftovers(out) == []
    remount(out, "1m", read_only=False)  # room made: the rerun writes only what is missing
    assert decode(files, out, tiny_hf_checkpoint) == 0
    assert f"{len(written)} skipped" in capsys.readouterr().out
    assert len(assert_whole(out, frames)) == 8 and leftovers(out) == []


# --------------------------------------------------------------------------------------------------
# An input deleted mid-run (after the command line named it, before it was read)


def test_input_deleted_mid_run(tmp_path, tiny_hf_checkpoint, capsys, monkeypatch):
    files = write_inputs(tmp_path / "in", 4, 30)
    kept = files[2].read_bytes()
    real_read = inputs.load_tensor

    def read_and_delete(path):
        if path == files[0]:
            files[2].unlink()
        return real_read(path)

    monkeypatch.setattr(inputs, "load_tensor", read_and_delete)
    out = tmp_path / "out"
    assert decode(files, out, tiny_hf_checkpoint) == 1
    assert f"{files[2]}: cannot read it: No such file or directory" in capsys.readouterr().err
    assert assert_whole(out, 30) == ["item000.wav", "item001.wav", "item003.wav"] and leftovers(out) == []
    files[2].write_bytes(kept)
    monkeypatch.setattr(inputs, "load_tensor", real_read)
    assert decode(files, out, tiny_hf_checkpoint) == 0
    assert "3 skipped" in capsys.readouterr().out
    assert len(assert_whole(out, 30)) == 4


# --------------------------------------------------------------------------------------------------
# SIGTERM and SIGINT mid-batch, to a real `jasco-fast decode` process


@pytest.mark.parametrize(
    "signum, status, said", [(signal.SIGTERM, 143, "terminated (SIGTERM)"), (signal.SIGINT, 130, "interrupted")]
)
def test_signal_mid_batch(tmp_path, tiny_hf_checkpoint, signum, status, said):
    frames, count = 2000, 120
    files = write_inputs(tmp_path / "in", count, frames)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
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
        "--batch-size",
        "1",
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    # default dispositions in the child: a shell's background job would otherwise pass on an ignored SIGINT
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signum, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and len(list(out.glob("*.wav"))) < 3:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err
    assert said in err
    written = assert_whole(out, frames)
    assert 3 <= len(written) < count and leftovers(out) == []

    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(written)} skipped" in rerun.stdout
    assert len(list(out.glob("*.wav"))) == count and leftovers(out) == []


def test_sigterm_handler_is_installed_only_while_main_runs(tmp_path, tiny_hf_checkpoint, monkeypatch):
    seen = []
    real_shard = cli._decode_shard

    def shard(*args):
        seen.append(signal.getsignal(signal.SIGTERM))
        return real_shard(*args)

    monkeypatch.setattr(cli, "_decode_shard", shard)
    before = signal.getsignal(signal.SIGTERM)
    assert decode(write_inputs(tmp_path / "in", 1, 30), tmp_path / "out", tiny_hf_checkpoint) == 0
    assert seen == [cli._terminate] and signal.getsignal(signal.SIGTERM) is before
