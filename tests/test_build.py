"""setup.py finds the CUDA toolchain by itself: CUDA_HOME, nvcc through symlinks and wrapper scripts, the
nvidia wheels' headers; a CUDA torch without nvcc and a ROCm torch give a CPU-only build with one warning."""

from __future__ import annotations

import importlib.util
import os
import stat
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def setup_py(monkeypatch):
    """setup.py as a module (its setup() call runs only as __main__), with no CUDA_* variables set."""
    for var in ("CUDA_HOME", "CUDA_PATH", "JASCO_FAST_NO_CUDA"):
        monkeypatch.delenv(var, raising=False)
    spec = importlib.util.spec_from_file_location("jasco_fast_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def fake_toolkit(root: Path) -> Path:
    """A folder shaped like a CUDA toolkit whose nvcc answers a dry run as nvcc does."""
    (root / "include").mkdir(parents=True)
    (root / "include" / "cuda_runtime_api.h").write_text("")
    executable(root / "bin" / "nvcc", f"#!/bin/sh\necho '#$ TOP={root}/bin/..' >&2\n")
    return root


def test_cuda_home_from_the_environment_wins(setup_py, monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "mine"))
    assert setup_py.find_cuda_home() == str(tmp_path / "mine")


def test_nvcc_through_a_symlink(setup_py, monkeypatch, tmp_path):
    toolkit = fake_toolkit(tmp_path / "cuda-13.0")
    (tmp_path / "links").mkdir()
    os.symlink(toolkit / "bin" / "nvcc", tmp_path / "links" / "nvcc")
    monkeypatch.setenv("PATH", str(tmp_path / "links"))
    assert setup_py.find_cuda_home() == str(toolkit)


def test_nvcc_as_a_wrapper_script_elsewhere(setup_py, monkeypatch, tmp_path):
    """This machine's case: /usr/local/bin/nvcc is a script that execs the toolkit's nvcc."""
    toolkit = fake_toolkit(tmp_path / "cuda-13.0")
    executable(tmp_path / "wrap" / "nvcc", f'#!/bin/sh\nexec {toolkit}/bin/nvcc "$@"\n')
    monkeypatch.setenv("PATH", str(tmp_path / "wrap"))
    monkeypatch.setattr(setup_py, "DEFAULT_CUDA_HOME", str(tmp_path / "nowhere"))
    assert setup_py.find_cuda_home() == str(toolkit)


def test_no_nvcc_means_no_cuda_home(setup_py, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(setup_py, "DEFAULT_CUDA_HOME", str(tmp_path / "nowhere"))
    assert setup_py.find_cuda_home() is None


def test_cuda_torch_without_nvcc_builds_cpu_only_with_one_warning(setup_py, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(setup_py, "DEFAULT_CUDA_HOME", str(tmp_path / "nowhere"))
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.version, "hip", None)
    assert setup_py.cuda_plan() == (False, None)
    err = capsys.readouterr().err
    assert err.count("WARNING (jasco_fast build)") == 1
    assert "nvcc was not found" in err and "CPU kernels only" in err and "CUDA_HOME" in err


def test_rocm_torch_builds_cpu_only_with_one_warning(setup_py, monkeypatch, capsys):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", "6.4.0")
    assert setup_py.cuda_plan() == (False, None)
    err = capsys.readouterr().err
    assert err.count("WARNING (jasco_fast build)") == 1 and "ROCm" in err and "PyTorch implementation" in err


def test_cpu_torch_builds_cpu_only_silently(setup_py, monkeypatch, capsys):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None)
    assert setup_py.cuda_plan() == (False, None)
    assert capsys.readouterr().err == ""


def test_opt_out(setup_py, monkeypatch, tmp_path):
    monkeypatch.setenv("JASCO_FAST_NO_CUDA", "1")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert setup_py.cuda_plan() == (False, None)


def test_cuda_plan_with_a_toolkit(setup_py, monkeypatch, tmp_path):
    toolkit = fake_toolkit(tmp_path / "cuda")
    monkeypatch.setenv("PATH", str(toolkit / "bin"))
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.version, "hip", None)
    assert setup_py.cuda_plan() == (True, str(toolkit))


def test_wheel_headers_of_the_installed_torch(setup_py):
    """A CUDA torch (make wheel-cuda, make test-wheels) brings cusparse.h in its nvidia wheels; a CPU torch has none."""
    includes, libs = setup_py.torch_cuda_wheel_dirs()
    if torch.version.cuda:
        assert any((Path(d) / "cusparse.h").is_file() for d in includes), includes
        assert any(any(Path(d).glob("libcusparse.so*")) for d in libs), libs
    else:
        assert includes == [] and libs == []


def test_nvcc_without_its_toolkit_is_named_in_the_one_warning(setup_py, monkeypatch, tmp_path, capsys):
    executable(tmp_path / "bin" / "nvcc", "#!/bin/sh\nexit 1\n")  # a stray nvcc: no TOP, no headers
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setattr(setup_py, "DEFAULT_CUDA_HOME", str(tmp_path / "nowhere"))
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.version, "hip", None)
    assert setup_py.cuda_plan() == (False, None)
    err = capsys.readouterr().err
    assert err.count("WARNING (jasco_fast build)") == 1
    assert f"{tmp_path / 'bin' / 'nvcc'} belongs to no toolkit folder" in err and "CPU kernels only" in err
