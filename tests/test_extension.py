"""The compiled extension's loading (jasco_fast/extension.py): where it cannot serve the installed torch, or does not
load, or was never built, ``import jasco_fast`` still works, warns once, runs every op's PyTorch implementation with
the compiled kernels' results, and ``jasco-fast info`` says why."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from checkpoints import child_env

import jasco_fast
from jasco_fast import extension

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(jasco_fast.__file__).resolve().parent

# A child process: (optionally) an older torch's version string, then the package, a decode and the info report.
CHILD = """
import json, sys, warnings
warnings.simplefilter("always")
if sys.argv[3] == "copy":  # the copy on PYTHONPATH, not an editable install's source tree
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
import torch
if sys.argv[1] != "-":
    torch.__version__ = sys.argv[1]
with warnings.catch_warnings(record=True) as caught:
    import jasco_fast
    from jasco_fast import extension, info
    from jasco_fast.decoder import DecoderConfig, SEANetDecoder
    torch.manual_seed(0)
    decoder = SEANetDecoder(DecoderConfig(dimension=8, n_filters=4, ratios=(4, 2), lstm=2, sample_rate=8000)).eval()
    decoder.fuse()
    latents = torch.randn(2, 9, 8)
    with torch.no_grad():
        audio = jasco_fast.LatentDecoder(decoder, backend="eager")(latents)
        codes = torch.ops.jasco_fast.codes_to_latents(torch.randint(0, 5, (1, 2, 3)), torch.randn(2, 5, 8), None, False)
    torch.save({"audio": audio, "state": decoder.state_dict()}, sys.argv[2])
print(json.dumps({
    "file": jasco_fast.__file__,
    "loaded": extension.STATUS.loaded,
    "reason": extension.STATUS.reason,
    "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
    "info": info.render(info.collect()),
}))
"""


def run_child(tmp_path: Path, version: str = "-", package_root: Path | None = None) -> tuple[dict, dict]:
    out = tmp_path / "out.pt"
    env = child_env(Path(__file__).parent)  # the jasco_fast under test: installed, or the editable tree
    if package_root is not None:  # a copy of the package first on the path
        env["PYTHONPATH"] = f"{package_root}:{env['PYTHONPATH']}"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, version, str(out), "copy" if package_root else "installed"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert package_root is None or Path(report["file"]).is_relative_to(package_root), report["file"]
    return report, torch.load(out)


def test_the_extension_serves_this_torch():
    assert extension.STATUS.loaded, extension.STATUS.reason
    assert extension.STATUS.path.endswith(".abi3.so")  # one binary for every CPython >= 3.10


def test_setup_builds_for_the_target_the_package_checks():
    tree = ast.parse((ROOT / "setup.py").read_text())
    namespace: dict = {"os": __import__("os"), "ast": ast, "HERE": str(ROOT)}
    source = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "torch_target")
    exec(compile(ast.Module([source], []), "setup.py", "exec"), namespace)
    assert namespace["torch_target"]() == extension.TORCH_TARGET


def _same_decode(child: dict, tmp_path: Path) -> None:
    """The child's decode (PyTorch implementations only) is this process's (compiled kernels), same weights."""
    from jasco_fast.decoder import DecoderConfig, SEANetDecoder

    decoder = SEANetDecoder(DecoderConfig(dimension=8, n_filters=4, ratios=(4, 2), lstm=2, sample_rate=8000)).eval()
    decoder.load_state_dict(child["state"])
    decoder.fuse()
    torch.manual_seed(0)
    SEANetDecoder(DecoderConfig(dimension=8, n_filters=4, ratios=(4, 2), lstm=2, sample_rate=8000))  # same draws
    latents = torch.randn(2, 9, 8)
    with torch.no_grad():
        audio = jasco_fast.LatentDecoder(decoder, backend="eager")(latents)
    torch.testing.assert_close(child["audio"], audio, rtol=1e-5, atol=1e-5)


def test_an_older_torch_gets_the_pytorch_implementations(tmp_path):
    report, saved = run_child(tmp_path, version="2.10.0+cpu")
    assert not report["loaded"]
    assert "torch 2.10.0+cpu is older than torch 2.13" in report["reason"]
    extension_warnings = [w for w in report["warnings"] if w.startswith("ExtensionWarning")]
    assert len(extension_warnings) == 1, report["warnings"]  # once, for every op and call
    assert not [w for w in report["warnings"] if w.startswith("FallbackWarning")]
    assert "NOT LOADED" in report["info"] and "older than torch 2.13" in report["info"]
    _same_decode(saved, tmp_path)


def _package_copy(tmp_path: Path, extension_bytes: bytes | None) -> Path:
    root = tmp_path / "site"
    shutil.copytree(PACKAGE, root / "jasco_fast", ignore=shutil.ignore_patterns("_C*.so", "__pycache__"))
    if extension_bytes is not None:
        (root / "jasco_fast" / Path(extension.STATUS.path).name).write_bytes(extension_bytes)
    return root


def test_a_broken_extension_is_not_an_import_error(tmp_path):
    report, saved = run_child(tmp_path, package_root=_package_copy(tmp_path, b"not a shared library"))
    assert not report["loaded"] and "failed to load" in report["reason"]
    assert sum(w.startswith("ExtensionWarning") for w in report["warnings"]) == 1
    assert "NOT LOADED" in report["info"]
    _same_decode(saved, tmp_path)


def test_an_unbuilt_tree_says_so(tmp_path):
    report, _ = run_child(tmp_path, package_root=_package_copy(tmp_path, None))
    assert not report["loaded"] and "not built" in report["reason"]


@pytest.mark.skipif(not extension.STATUS.loaded, reason="the compiled kernels are not loaded")
def test_this_torch_loads_it_without_a_warning(tmp_path):
    report, _ = run_child(tmp_path)
    assert report["loaded"] and report["reason"] is None
    assert not [w for w in report["warnings"] if w.startswith(("ExtensionWarning", "FallbackWarning"))]


POLICY_LIBRARIES = {"libstdc++.so.6", "libm.so.6", "libgcc_s.so.1", "libc.so.6", "ld-linux-x86-64.so.2"}


@pytest.mark.skipif(shutil.which("readelf") is None, reason="needs readelf (binutils), which builds the library too")
@pytest.mark.skipif(not extension.STATUS.loaded, reason="the compiled kernels are not loaded")
def test_the_library_links_no_torch_library():
    """The library reaches torch through stubs (csrc/torch_symbols.cpp): it needs no torch, CUDA or OpenMP library
    of its own (manylinux_2_28), and every function it calls from torch is resolved."""
    dynamic = subprocess.run(["readelf", "-dW", extension.STATUS.path], capture_output=True, text=True, check=True)
    needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dynamic.stdout))
    assert needed and needed <= POLICY_LIBRARIES, needed
    symbols = subprocess.run(["readelf", "--dyn-syms", "-W", extension.STATUS.path], capture_output=True, text=True)
    undefined = {line.split()[-1].split("@")[0] for line in symbols.stdout.splitlines() if " UND " in line}
    assert not {s for s in undefined if s.startswith(("aoti_torch_", "torch_", "GOMP_", "omp_", "_ZN3c10", "_ZN2at"))}
