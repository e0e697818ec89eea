"""Ahead-of-time compiled artifacts on disk: build, key, cache, load, validate.

An *artifact* is an AOTInductor package (``torch.export`` + ``torch._inductor.aoti_compile_and_package``)
of one method of an ``nn.Module``, for given example inputs and dynamic dimensions. It is built once per
:class:`Recipe` and machine kind, stored in the cache folder, and loaded by later processes in milliseconds.

Weights are NOT inside an artifact: every parameter and buffer is kept as a named constant
(``always_keep_tensor_constants``; without it Inductor inlines small tensors such as biases and scalar
statistics into the generated code) and left out of the package (``aot_inductor.package_constants_in_so
=False``). :func:`load` hands the module's own tensors to the loaded artifact, so one artifact serves every
checkpoint of an architecture and the cache key never depends on weights. (Measured on the EnCodec 32 kHz
decoder: same steady-state speed as weights baked in, a 1.8 MB package instead of 116 MB; see docs/artifact-cache.md.)

A recipe says how to make the module in ANY process (``factory`` is ``"package.module:function"``, called
with ``params``), so a build can run in a separate, detached process (:func:`build_in_background`, used
while the caller serves its first calls eagerly) or as an explicit step (``jasco-fast compile``).

Cache layout (``JASCO_FAST_CACHE_DIR``, default ``$XDG_CACHE_HOME/jasco_fast`` or ``~/.cache/jasco_fast``)::

    aot/<key>.pt2     the package
    aot/<key>.json    its manifest: format, key, everything the key was made from, sha256 and size of the
                      package, the constants' names, shapes, strides and dtypes
    aot/<key>.lock    held (flock) by the one process that builds <key>
    aot/<key>.log     the output of the last background build

The key hashes: the recipe (name, factory, params, method), the device type and the CPU's instruction set
(``torch.backends.cpu.get_cpu_capability()``) or the GPU's name and compute capability, the torch,
CUDA and Python versions, jasco_fast's version and a fingerprint of its source and extension, and the
Inductor options. Safety: a package is only loaded when its manifest matches the key material exactly and
its size and sha256 match (so truncated, corrupt, stale or foreign entries are rebuilt, never loaded);
builders take the lock and publish with atomic renames (package first, manifest last), so concurrent
builders (torchrun ranks) never clobber each other and readers never see half a file. Callers should also
:func:`validate` a loaded artifact against their eager path on a small input before trusting it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jasco_fast._files import atomic_write, locked

__all__ = [
    "Recipe",
    "Program",
    "Artifact",
    "ArtifactRunner",
    "ArtifactError",
    "BackgroundBuilds",
    "cache_dir",
    "cache_location",
    "machine_tag",
    "build",
    "is_cached",
    "load",
    "validate",
    "build_in_background",
    "entries",
    "clear",
    "discard",
    "failure",
    "background_builds_enabled",
    "BackgroundBuildWarning",
]

FORMAT = 1
INDUCTOR_OPTIONS = {"aot_inductor.package_constants_in_so": False, "always_keep_tensor_constants": True}
_PREFIX = "owner."  # the FQN prefix of the owner's tensors inside the exported wrapper


class ArtifactError(RuntimeError):
    """An artifact could not be built (export or compilation failed)."""


# --------------------------------------------------------------------------------------------------
# Where, and for what machine


def cache_location() -> tuple[Path, str]:
    """jasco_fast's cache folder and what chose it: ``JASCO_FAST_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/jasco_fast`` ("XDG_CACHE_HOME"), else ``~/.cache/jasco_fast`` ("default")."""
    if os.environ.get("JASCO_FAST_CACHE_DIR"):
        return Path(os.environ["JASCO_FAST_CACHE_DIR"]).expanduser(), "JASCO_FAST_CACHE_DIR"
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "jasco_fast", "XDG_CACHE_HOME"
    return Path.home() / ".cache" / "jasco_fast", "default"


def cache_dir() -> Path:
    """jasco_fast's cache folder (:func:`cache_location` says what chose it)."""
    return cache_location()[0]


class BackgroundBuildWarning(UserWarning):
    """Announces, once per process, that a cache miss started a background build of ahead-of-time artifacts."""


_announce_lock = threading.Lock()
_announced = False


def _outside_the_package() -> int:
    """The ``stacklevel``, for a warning raised by this function's caller, of the first frame outside
    jasco_fast, torch (``Module.__call__``) and contextlib (a deferred build's block): the caller's line that
    led to it (a decode call, say)."""
    inside = (os.path.dirname(__file__) + os.sep, os.path.dirname(torch.__file__) + os.sep, contextlib.__file__)
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(inside):
        frame, level = frame.f_back, level + 1
    return level


def _announce_background_build(cache: Path | None) -> None:
    """A detached builder process is a visible effect of a library call: said once per process, with the
    cache it writes to and how to turn it off."""
    global _announced
    with _announce_lock:
        if _announced:
            return
        _announced = True
    import warnings

    warnings.warn(
        f"jasco_fast: building ahead-of-time compiled decoders into {(cache or cache_dir()) / 'aot'} in a "
        f"low-priority background process; calls run eagerly until they are ready. Turn this off with "
        f"background_build=False or JASCO_FAST_BACKGROUND_BUILD=0 (`jasco-fast compile` builds them "
        f"instead)",
        BackgroundBuildWarning,
        stacklevel=_outside_the_package(),
    )


def background_builds_enabled() -> bool:
    """Whether a cache miss may start a background build: yes unless ``JASCO_FAST_BACKGROUND_BUILD=0``."""
    return os.environ.get("JASCO_FAST_BACKGROUND_BUILD", "1") != "0"


def machine_tag(device: str | torch.device) -> dict:
    """What of the machine changes the generated code: CPU instruction set, or GPU model and arch."""
    device = torch.device(device)
    tag: dict[str, Any] = {"device_type": device.type, "machine": platform.machine()}
    if device.type == "cpu":
        tag["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        from jasco_fast.decoder import cpu_has_amx, cpu_is_avx2_class  # the decoder's graph depends on them

        tag["amx"] = cpu_has_amx()
        tag["avx2_class"] = cpu_is_avx2_class()
    elif device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        tag["gpu"] = torch.cuda.get_device_name(index)
        tag["gpu_capability"] = list(torch.cuda.get_device_capability(index))
        tag["cuda"] = torch.version.cuda
    else:
        raise ValueError(f"ahead-of-time artifacts support cpu and cuda devices, got {device.type!r}")
    return tag


_FINGERPRINT: str | None = None


def source_fingerprint() -> str:
    """sha256 over jasco_fast's Python sources and its compiled extension: any change to the code that
    the graph is traced from (or to the ops' schemas) gives new keys."""
    global _FINGERPRINT
    if _FINGERPRINT is None:
        folder = Path(__file__).resolve().parent
        digest = hashlib.sha256()
        for path in sorted(folder.glob("*.py")) + sorted(folder.glob("_C*.so")) + sorted(folder.glob("_C*.pyd")):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
        _FINGERPRINT = digest.hexdigest()
    return _FINGERPRINT


# --------------------------------------------------------------------------------------------------
# Recipes and programs


@dataclasses.dataclass(frozen=True)
class Program:
    """What a recipe's factory returns: the module whose ``method`` is compiled, example inputs (batch
    dims of 2 or more, or torch.export specialises them to 1), ``dynamic_shapes`` in torch.export's
    form for the method's positional inputs (e.g. ``({0: Dim("batch", ...), 1: Dim("frames", ...)},)``),
    and the ``tolerance`` of the build's check of the artifact against the eager method."""

    module: nn.Module
    example_inputs: tuple
    dynamic_shapes: Any = None
    method: str = "forward"
    tolerance: float = 1e-4  # relative L2 error accepted when the build checks the artifact against eager


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How to make a :class:`Program` in any process: ``factory`` (``"package.module:function"``) is
    called as ``factory(**params)``; ``params`` must be JSON values. ``device`` is where it runs."""

    name: str
    factory: str
    params: Mapping[str, Any]
    device: str = "cpu"

    def __post_init__(self):
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"recipe name must be letters, digits, '-' or '_', got {self.name!r}")
        if ":" not in self.factory:
            raise ValueError(f"factory must be 'package.module:function', got {self.factory!r}")
        try:
            json.dumps(dict(self.params), sort_keys=True)
        except TypeError as exc:
            raise TypeError(f"recipe params must be JSON values: {exc}") from None
        object.__setattr__(self, "device", str(torch.device(self.device).type))

    def to_json(self) -> str:
        return json.dumps(
            {"name": self.name, "factory": self.factory, "params": dict(self.params), "device": self.device},
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        data = json.loads(text)
        return cls(data["name"], data["factory"], data["params"], data["device"])

    def key_material(self) -> dict:
        """Everything the generated code depends on."""
        from jasco_fast import __version__

        return {
            "format": FORMAT,
            "recipe": json.loads(self.to_json()),
            "machine": machine_tag(self.device),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "jasco_fast": __version__,
            "source": source_fingerprint(),
            "inductor": INDUCTOR_OPTIONS,
        }

    def key(self, material: dict | None = None) -> str:
        blob = json.dumps(material or self.key_material(), sort_keys=True).encode()
        return f"{self.name}-{hashlib.sha256(blob).hexdigest()[:24]}"

    def make(self) -> Program:
        module_name, _, attr = self.factory.partition(":")
        program = getattr(importlib.import_module(module_name), attr)(**self.params)
        if not isinstance(program, Program):
            raise TypeError(f"{self.factory} must return a jasco_fast.artifacts.Program, got {type(program).__name__}")
        return program


class _Bound(nn.Module):
    """Exports ``owner.<method>``; the owner's tensors appear under the ``owner.`` prefix."""

    def __init__(self, owner: nn.Module, method: str):
        super().__init__()
        self.owner = owner
        self.method = method

    def forward(self, *inputs):
        return getattr(self.owner, self.method)(*inputs)


def _weights(owner: nn.Module) -> dict[str, torch.Tensor]:
    tensors = {_PREFIX + k: v for k, v in owner.named_parameters()}
    tensors.update({_PREFIX + k: v for k, v in owner.named_buffers()})
    return {k: v.detach() for k, v in tensors.items()}


def _tensor_spec(t: torch.Tensor) -> list:
    return [list(t.shape), list(t.stride()), str(t.dtype).replace("torch.", "")]


# --------------------------------------------------------------------------------------------------
# Cache entries


def _paths(key: str, cache: Path | None) -> dict[str, Path]:
    folder = (cache or cache_dir()) / "aot"
    return {s: folder / f"{key}.{s}" for s in ("pt2", "json", "lock", "log", "failed")}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_manifest(recipe: Recipe, cache: Path | None) -> tuple[dict | None, str]:
    """(manifest, "") when the entry for ``recipe`` is complete and current, else (None, why not)."""
    material = recipe.key_material()
    key = recipe.key(material)
    paths = _paths(key, cache)
    if not paths["json"].is_file():
        return None, "no entry"
    try:
        manifest = json.loads(paths["json"].read_text())
    except (OSError, ValueError):
        return None, "unreadable manifest"
    if not isinstance(manifest, dict) or manifest.get("key") != key or manifest.get("material") != material:
        return None, "stale manifest (made for another torch, machine, source or recipe)"
    try:
        size = paths["pt2"].stat().st_size
    except OSError:
        return None, "package missing"
    if size != manifest.get("size") or _sha256(paths["pt2"]) != manifest.get("sha256"):
        return None, "package truncated or corrupt (size or sha256 differ from the manifest)"
    return manifest, ""


def is_cached(recipe: Recipe, *, cache: Path | None = None) -> bool:
    """Whether the cache holds a complete, current entry for ``recipe`` (manifest, size and sha256 checked)."""
    return _read_manifest(recipe, cache)[0] is not None


def build(recipe: Recipe, *, cache: Path | None = None, blocking: bool = True, force: bool = False) -> Path | None:
    """Build (if not cached and current) the artifact for ``recipe``; returns the package's path.

    Holds the entry's lock while building, so of several processes building the same entry one builds and
    the others wait for it (``blocking``) or return None at once. ``force`` rebuilds a valid entry.
    Raises :class:`ArtifactError` when export or compilation fails.
    """
    material = recipe.key_material()
    key = recipe.key(material)
    paths = _paths(key, cache)
    with locked(paths["lock"], blocking) as held:
        if not held:
            return None
        if not force and _read_manifest(recipe, cache)[0] is not None:
            return paths["pt2"]
        start = time.perf_counter()
        try:
            program = recipe.make()
        except Exception as exc:
            raise ArtifactError(f"{recipe.factory} failed: {type(exc).__name__}: {exc}") from exc
        owner = program.module.to(recipe.device).eval()
        inputs = tuple(x.to(recipe.device) if isinstance(x, torch.Tensor) else x for x in program.example_inputs)
        try:
            with torch.no_grad():
                dynamic = None if program.dynamic_shapes is None else (tuple(program.dynamic_shapes),)  # *inputs
                exported = torch.export.export(
                    _Bound(owner, program.method), inputs, dynamic_shapes=dynamic, strict=False
                )
        except Exception as exc:
            raise ArtifactError(f"torch.export of {recipe.factory} failed: {type(exc).__name__}: {exc}") from exc
        tmp = paths["pt2"].with_name(f".{key}.{os.getpid()}.pt2")
        try:
            torch._inductor.aoti_compile_and_package(
                exported, package_path=str(tmp), inductor_configs=dict(INDUCTOR_OPTIONS)
            )
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            raise ArtifactError(
                f"AOTInductor compilation of {recipe.factory} failed: {type(exc).__name__}: {exc}"
            ) from exc
        constants = {k: _tensor_spec(v) for k, v in _weights(owner).items()}
        try:
            error = _check_built(tmp, owner, program, inputs)
        except ArtifactError:
            tmp.unlink(missing_ok=True)
            raise
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        manifest = {
            "format": FORMAT,
            "key": key,
            "material": material,
            "size": tmp.stat().st_size,
            "sha256": _sha256(tmp),
            "constants": constants,
            "checked_error": error,
            "built_seconds": round(time.perf_counter() - start, 2),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        # The old manifest goes first, the new one last: a reader never pairs a manifest with another package.
        paths["json"].unlink(missing_ok=True)
        os.replace(tmp, paths["pt2"])
        atomic_write(paths["json"], json.dumps(manifest, indent=1, sort_keys=True).encode())
        paths["failed"].unlink(missing_ok=True)
        return paths["pt2"]


def _check_built(package: Path, owner: nn.Module, program: Program, inputs: tuple) -> float:
    """Run the freshly built package against the eager method on the example inputs, with the owner's
    weights PERTURBED first: an artifact that baked in a tensor instead of reading the constants it is
    handed (or that miscompiled) fails here, before it is published. Returns the relative error."""
    gen = torch.Generator(device="cpu").manual_seed(1234)
    weights = _weights(owner)  # detached views: perturbing them perturbs the owner
    with torch.no_grad():
        for t in weights.values():
            if t.is_floating_point():
                noise = torch.randn(t.shape, generator=gen, dtype=torch.float32).to(t.device, t.dtype)
                t.mul_(1 + 0.1 * noise).add_(0.01 * noise)
    try:
        runner = _open_package(package, inputs[0].device)
        foreign = _bind(runner, weights)
    except Exception as exc:
        raise ArtifactError(f"the built artifact does not load: {type(exc).__name__}: {exc}") from exc
    if foreign:  # e.g. a plain tensor attribute instead of a buffer: it would never see the real weights
        raise ArtifactError(
            f"the built artifact holds tensors that are not the module's parameters or buffers "
            f"{foreign[:3]}: not published"
        )
    ok, error = validate(runner, getattr(owner, program.method), inputs, tolerance=program.tolerance)
    if not ok:
        raise ArtifactError(
            f"the built artifact disagrees with the eager method (relative error {error:.1e} > "
            f"{program.tolerance:.0e}): not published"
        )
    return error


def failure(recipe: Recipe, *, cache: Path | None = None) -> str | None:
    """Why the last background build of ``recipe`` failed on this machine (None if it did not): such a
    recipe is not built in the background again until the marker goes (``jasco-fast compile``, which
    builds in the foreground and shows the error, or ``jasco-fast cache clear``)."""
    path = _paths(recipe.key(), cache)["failed"]
    if not path.is_file():
        return None
    try:
        return str(json.loads(path.read_text()).get("error", "unknown error"))
    except (OSError, ValueError, AttributeError):
        return "unreadable failure marker"


def discard(recipe: Recipe, *, cache: Path | None = None, sha256: str | None = None) -> bool:
    """Remove the entry for ``recipe``, under its lock: the entry whose package has ``sha256`` (one that
    failed validation), or, without ``sha256``, the entry only if it is incomplete or corrupt. An entry
    rebuilt meanwhile by another process is kept. Returns whether something was removed."""
    paths = _paths(recipe.key(), cache)
    with locked(paths["lock"], True):
        if sha256 is None:
            if _read_manifest(recipe, cache)[0] is not None:
                return False
        else:
            with contextlib.suppress(OSError, ValueError):
                if json.loads(paths["json"].read_text()).get("sha256") != sha256:
                    return False
        paths["json"].unlink(missing_ok=True)
        paths["pt2"].unlink(missing_ok=True)
        return True


# --------------------------------------------------------------------------------------------------
# Loading and validating


class Artifact:
    """A loaded artifact bound to its owner's weights: call it like the owner's compiled method.

    The weights are handed over by reference (``user_managed``): the artifact reads the owner's tensors
    as they are, and keeps them alive. Change the owner's weights in place and the artifact sees it;
    replace them (new tensors, other layout) and the artifact must be loaded again.
    """

    def __init__(self, runner, path: Path, manifest: dict, weights: dict[str, torch.Tensor]):
        self._runner = runner
        self._weights = weights
        self.path = path
        self.manifest = manifest

    @property
    def key(self) -> str:
        return self.manifest["key"]

    def __call__(self, *inputs):
        return self._runner(*inputs)


class _Package:
    """A loaded AOTInductor package, called with positional tensors. torch's own wrapper
    (``torch.export.pt2_archive._package.AOTICompiledModel``) does the same but importing it pulls in the
    export serializer and sympy (over a second of a cold start here) and re-parses the call spec per call."""

    def __init__(self, loader):
        import torch.utils._pytree as pytree

        self.loader = loader
        self._unflatten = pytree.tree_unflatten
        self._out_spec = pytree.treespec_loads(loader.get_call_spec()[1])

    def __call__(self, *inputs: torch.Tensor):
        return self._unflatten(self.loader.boxed_run(list(inputs)), self._out_spec)

    def get_constant_fqns(self) -> list[str]:
        return self.loader.get_constant_fqns()

    def load_constants(self, constants: dict, *, check_full_update: bool, user_managed: bool) -> None:
        self.loader.load_constants(constants, False, check_full_update, user_managed)


def _bind(package, weights: dict[str, torch.Tensor]) -> list[str]:
    """Hand ``weights`` to a loaded package by reference (it reads them as they are); returns the constants
    the package expects that are not among them, in which case nothing is bound."""
    names = package.get_constant_fqns()
    missing = sorted(set(names) - set(weights))
    if not missing:
        package.load_constants({k: weights[k] for k in names}, check_full_update=True, user_managed=True)
    return missing


def _open_package(path: Path, device: torch.device):
    """The package at ``path``, loaded without ``aoti_load_package``'s per-process CPU probe (torch's Python
    loader compiles and runs test programs to re-detect the vector ISA, only to warn on a mismatch: 1.4 s
    of a 5 s cold start here; the key already pins the ISA) and without its Python wrapper's imports.
    Falls back to the public loader if torch's internals move."""
    device_index = device.index if device.index is not None else -1
    try:
        return _Package(torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, device_index))
    except (AttributeError, TypeError):
        return torch._inductor.aoti_load_package(str(path), device_index=device_index)


def load(recipe: Recipe, owner: nn.Module, *, cache: Path | None = None) -> tuple[Artifact | None, str]:
    """(the artifact for ``recipe`` bound to ``owner``'s weights, "") if the cache holds a complete,
    current entry whose constants match ``owner``'s tensors (names, shapes, strides, dtypes); else
    (None, why not). Never raises for a bad entry: a caller rebuilds instead."""
    manifest, why = _read_manifest(recipe, cache)
    if manifest is None:
        return None, why
    weights = _weights(owner)
    devices = {v.device for v in weights.values()}
    if len(devices) != 1 or next(iter(devices)).type != recipe.device:
        return None, f"the module's tensors are on {sorted(map(str, devices))}, the recipe is for {recipe.device}"
    device = next(iter(devices))
    mine = {k: _tensor_spec(v) for k, v in weights.items()}
    if mine != manifest.get("constants"):
        theirs = manifest.get("constants") or {}
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        return None, f"the module's tensors differ from those the artifact was built for ({diff[:3]})"
    path = _paths(manifest["key"], cache)["pt2"]
    try:
        runner = _open_package(path, device)
        missing = _bind(runner, weights)
        if missing:
            return None, f"the package expects constants the module lacks: {missing[:3]}"
    except Exception as exc:  # a package that torch cannot load is treated as corrupt
        return None, f"loading failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return Artifact(runner, path, manifest, weights), ""


def _rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double(), want.double()
    if not torch.isfinite(got).all():
        return float("inf")
    return ((got - want).norm() / want.norm().clamp_min(1e-12)).item()


VALIDATION_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8, torch.float16: 3e-2, torch.bfloat16: 3e-2}


def validate(artifact: Callable, reference: Callable, inputs: Sequence, *, tolerance: float) -> tuple[bool, float]:
    """Run both on ``inputs`` (a small probe); (whether the relative L2 error is within ``tolerance``,
    the error). Outputs may be a tensor or a tuple/list of tensors; a crash counts as a failure."""
    try:
        with torch.inference_mode():
            got, want = artifact(*inputs), reference(*inputs)
    except Exception:
        return False, float("inf")
    got = list(got) if isinstance(got, (tuple, list)) else [got]
    want = list(want) if isinstance(want, (tuple, list)) else [want]
    if len(got) != len(want) or any(g.shape != w.shape for g, w in zip(got, want)):
        return False, float("inf")
    err = max(_rel_error(g, w) for g, w in zip(got, want))
    return err <= tolerance, err


# --------------------------------------------------------------------------------------------------
# The first-call policy


class ArtifactRunner:
    """Runs ``owner``'s method through its artifact when the cache has a valid one, else through ``eager``.

    The policy (docs/artifact-cache.md): a cache hit is loaded (and, given a
    ``probe``, validated against ``eager`` on it) before its first use. On a miss, calls are served by
    ``eager`` (nothing blocks on a compile); after the first such call, when ``background`` is true, a
    detached, low-priority process builds the artifact (through ``builds``, which may be shared with other
    runners so that one process builds them all), and each later call checks, with one ``stat``, whether
    it has appeared, then switches to it. An entry that fails to load or to validate is discarded and
    rebuilt once; after that this process stays eager (and warns once).

    Args:
        recipe: what to build; ``recipe.make()`` must export the same method of a module structured like
            ``owner`` (same tensor names, shapes, strides, dtypes).
        owner: the module whose weights the artifact computes with.
        eager: the eager function computing the same thing (the fallback and the validation oracle).
        probe: small inputs for validation at load, or None to rely on the check every build makes
            (:func:`build` runs the artifact against eager, with perturbed weights, before publishing it).
        tolerance: largest accepted relative L2 error of the artifact against ``eager`` on ``probe``.
        background: build on a miss in a background process (else only an explicit :func:`build` does).
        builds: the :class:`BackgroundBuilds` to ask (default: one of its own, for this recipe alone).
    """

    def __init__(
        self,
        recipe: Recipe,
        owner: nn.Module,
        eager: Callable,
        probe: Sequence | None,
        tolerance: float,
        *,
        background: bool = True,
        cache: Path | None = None,
        builds: BackgroundBuilds | None = None,
    ):
        self.recipe, self.owner, self.eager, self.tolerance = recipe, owner, eager, tolerance
        self.probe = None if probe is None else tuple(probe)
        self.background = background
        self.cache = cache
        self.builds = builds or BackgroundBuilds([recipe], cache=cache)
        self.artifact: Artifact | None = None
        self.status = "not loaded"
        self._manifest_path = _paths(recipe.key(), cache)["json"]
        self._rebuilds = 0
        self._try_load()

    @property
    def builder(self) -> subprocess.Popen | None:
        """The background build process last started for this runner's recipes (None if none)."""
        return self.builds.process

    def _try_load(self) -> None:
        artifact, why = load(self.recipe, self.owner, cache=self.cache)
        if artifact is None:
            self.status = why
            if why != "no entry":
                self._reject(why)
            return
        if self.probe is None:
            self.artifact = artifact
            error = artifact.manifest.get("checked_error", float("nan"))
            self.status = f"loaded {artifact.path.name} (checked when built: error {error:.1e})"
            return
        ok, err = validate(artifact, self.eager, self.probe, tolerance=self.tolerance)
        if ok:
            self.artifact, self.status = artifact, f"loaded {artifact.path.name} (probe error {err:.1e})"
        else:
            self._reject(
                f"failed validation (relative error {err:.1e} > {self.tolerance:.0e})", artifact.manifest["sha256"]
            )

    def _reject(self, why: str, sha256: str | None = None) -> None:
        """A bad entry: drop it and rebuild it once; a second bad build leaves this process eager."""
        import warnings

        with contextlib.suppress(OSError):  # keeps an entry rebuilt meanwhile: the next call loads it
            discard(self.recipe, cache=self.cache, sha256=sha256)
        self._rebuilds += 1
        self.status = f"rejected: {why}"
        if self._rebuilds > 1:
            self.background = False
            warnings.warn(
                f"jasco_fast: the ahead-of-time artifact {self.recipe.name} was rejected twice ({why}); "
                f"running eagerly",
                RuntimeWarning,
                stacklevel=3,
            )

    def __call__(self, *inputs):
        """Inputs as the recipe's example inputs were: same dtypes, contiguous, on the recipe's device."""
        if self.artifact is None and self._rebuilds <= 1 and self._manifest_path.exists():
            self._try_load()  # built meanwhile (by our background process, another process, or `compile`)
        if self.artifact is not None:
            return self.artifact(*inputs)
        out = self.eager(*inputs)
        if self.background:
            self.builds.request(self.recipe)
        return out


class BackgroundBuilds:
    """The background builds of a set of recipes (e.g. a decoder's whole-input and per-chunk artifacts):
    at most one builder process at a time, which builds every recipe of the set not yet in the cache, the
    requested ones first. Inside :meth:`deferred` (a decoder's call) the builder starts when the block ends. A recipe is started at most twice per process (a build,
    and one rebuild after a rejected entry), and never while its last background build has a failure
    marker (:func:`failure`)."""

    def __init__(self, recipes: Sequence[Recipe], *, cache: Path | None = None):
        self.recipes = list(recipes)
        self.cache = cache
        self.process: subprocess.Popen | None = None
        self.enabled = True
        self._started: dict[str, int] = {}
        self._depth = 0
        self._wanted: list[Recipe] = []  # misses inside a deferred() block, in order

    @contextlib.contextmanager
    def deferred(self):
        """Requests made inside the block start their builder when it ends: after the caller's call, so
        that a starting builder (an interpreter importing torch) does not compete with that call."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0 and self._wanted:
                wanted, self._wanted = self._wanted, []
                self._start(wanted, announce=True)

    def request(self, recipe: Recipe) -> None:
        """Called on a miss of ``recipe``: start a builder (at once, or at the end of a deferred() block)
        unless one is running. A folder that cannot be written (a read-only cache) turns background builds
        off for this set, with one warning."""
        if self._depth:
            self._wanted.append(recipe)
        else:
            self._start([recipe], announce=True)

    def start(self, first: Sequence[Recipe] = ()) -> subprocess.Popen | None:
        """Start a builder now for every recipe of the set the cache lacks, ``first`` first, unless one is
        running; returns the builder running now, or None (nothing left to build, or it cannot start)."""
        self._start(list(first))
        return self.process if self.process is not None and self.process.poll() is None else None

    def _start(self, first: list[Recipe], *, announce: bool = False) -> None:
        """``announce``: a build no one asked for (a miss), said once per process (:class:`BackgroundBuildWarning`)."""
        if not self.enabled:
            return
        if self.process is not None and self.process.poll() is None:
            return  # one builder at a time; it has the set already
        todo, seen = [], set()
        for r in [*first, *self.recipes]:
            key = r.key()
            if key in seen or self._started.get(key, 0) >= 2 or failure(r, cache=self.cache) is not None:
                continue
            seen.add(key)
            if not _paths(key, self.cache)["json"].exists():
                todo.append(r)
        if not todo:
            return
        try:
            self.process = build_in_background(todo, cache=self.cache)
        except OSError as exc:
            import warnings

            self.enabled = False
            warnings.warn(
                f"jasco_fast: cannot build the ahead-of-time artifacts in the background ({exc}); "
                f"running eagerly (set JASCO_FAST_CACHE_DIR to a writable folder)",
                RuntimeWarning,
                stacklevel=3,
            )
            return
        for r in todo:
            self._started[r.key()] = self._started.get(r.key(), 0) + 1
        if announce:
            _announce_background_build(self.cache)


def build_in_background(recipes: Recipe | Sequence[Recipe], *, cache: Path | None = None) -> subprocess.Popen:
    """Start ``python -m jasco_fast.artifacts build <recipe>...`` as a detached, low-priority process (it
    finishes even if this process exits first) that builds the recipes one after another; its output goes
    to ``aot/<key>.log`` of the first. It skips an entry another process is already building, and leaves a
    failure marker for a recipe whose build fails (:func:`failure`)."""
    recipes = [recipes] if isinstance(recipes, Recipe) else list(recipes)
    paths = _paths(recipes[0].key(), cache)
    paths["log"].parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["JASCO_FAST_CACHE_DIR"] = str(cache or cache_dir())
    # This very jasco_fast, not another copy: `-m` puts the working directory first on sys.path (a source
    # tree there would shadow an installed package and give its artifact another key), so run from here.
    home = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [home, env.get("PYTHONPATH", "")] if p)
    with open(paths["log"], "ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jasco_fast.artifacts",
                "build",
                "--nice",
                "--no-wait",
                *(r.to_json() for r in recipes),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            cwd=home,
            start_new_session=True,
            close_fds=True,
        )


def entries(cache: Path | None = None) -> list[dict]:
    """The manifests in the cache (complete entries; unverified)."""
    out = []
    for path in sorted(((cache or cache_dir()) / "aot").glob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            manifest = json.loads(path.read_text())
            manifest["path"] = str(path.with_suffix(".pt2"))
            out.append(manifest)
    return out


def clear(cache: Path | None = None) -> int:
    """Delete every artifact in the cache; returns the number of files removed."""
    folder = (cache or cache_dir()) / "aot"
    removed = 0
    for path in folder.glob("*") if folder.is_dir() else []:
        if path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m jasco_fast.artifacts", description="build an artifact")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build")
    p.add_argument("recipes", nargs="+", help="recipes as JSON (Recipe.to_json), built in this order")
    p.add_argument("--nice", action="store_true", help="run at low CPU priority")
    p.add_argument("--no-wait", action="store_true", help="exit at once if another process builds it")
    args = parser.parse_args(argv)
    if args.nice:
        with contextlib.suppress(OSError):
            os.nice(10)
    failed = 0
    for text in args.recipes:
        recipe = Recipe.from_json(text)
        start = time.perf_counter()
        try:
            path = build(recipe, blocking=not args.no_wait)
        except ArtifactError as exc:
            # remembered, so that later processes do not start the same failing build over and over
            failed += 1
            marker = _paths(recipe.key(), None)["failed"]
            atomic_write(
                marker,
                json.dumps(
                    {
                        "error": str(exc).splitlines()[0] if str(exc) else repr(exc),
                        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    }
                ).encode(),
            )
            print(f"{time.strftime('%H:%M:%S')} {recipe.name}: FAILED: {exc}", flush=True)
            continue
        print(
            f"{time.strftime('%H:%M:%S')} {recipe.name}: "
            f"{'built ' + str(path) if path else 'another process is building it'} "
            f"({time.perf_counter() - start:.1f} s)",
            flush=True,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    # run the importable module's copy, so Program, the key and the lock are the ones callers use
    from jasco_fast import artifacts as _module

    sys.exit(_module._main())
