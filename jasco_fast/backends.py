"""How a decoder's one window of input becomes audio: eagerly, compiled in this process by torch.compile
("inductor"), or through the ahead-of-time compiled artifacts of :mod:`jasco_fast.artifacts` ("aot").

A backend serves an *owner*, the decoder module (:class:`jasco_fast.LatentDecoder` or
:class:`jasco_fast.CodeDecoder`), through three of its methods:

* ``owner._decode(x)``: the front-end op and the decoder over a whole input (frames on dim 1), float32 audio;
* ``owner._make_step(plan, position)``: the eager module of one chunk position, ``(window, h, c) -> (audio, h, c)``;
* ``owner.aot_recipes()`` / ``owner.aot_recipe(...)`` (``"aot"`` only): what to build.

Each backend has the same two calls, :meth:`Backend.whole` (one pass over an input already checked, on the
owner's device, B >= 1) and :meth:`Backend.step` (one chunk at one position); the chunk runner
(:mod:`jasco_fast.runner`) decides which to call.
"""

from __future__ import annotations

import contextlib
import subprocess

import torch
from torch import nn

from jasco_fast import artifacts, extension
from jasco_fast.decoder import Conv, ConvTranspose, SEANetDecoder
from jasco_fast.streaming import POSITIONS, ChunkPlan

__all__ = [
    "BACKENDS",
    "Backend",
    "EagerBackend",
    "InductorBackend",
    "AotBackend",
    "resolve_backend",
    "make_backend",
    "compile_options",
    "aot_min_frames",
    "AOT_MAX_BATCH",
    "AOT_MAX_FRAMES",
]

BACKENDS = ("eager", "inductor", "aot")
# Bounds of the ahead-of-time artifact's dynamic dims; calls outside them run eagerly.
AOT_MAX_BATCH = 1024
AOT_MAX_FRAMES = 2**17  # 43 minutes at 50 frames/s


def resolve_backend(backend: str | None, mode: str | None, device: torch.device, *, aot: bool = True) -> str:
    """The backend a decoder runs: ``backend`` as given, or for None the device's default ("aot" on the CPU
    where the owner has artifacts (``aot``) and the compiled kernels are loaded (the artifacts call them), else
    "inductor"; a ``mode`` asks for torch.compile, so it picks "inductor" too). ``mode`` is an option of torch.compile: any other backend with one is a ValueError."""
    if backend is not None and (not isinstance(backend, str) or backend not in BACKENDS):
        raise ValueError(f"backend must be None (the device's default) or one of {BACKENDS}, got {backend!r}")
    if mode is not None and backend not in (None, "inductor"):
        raise ValueError(
            f"mode is a torch.compile mode: it needs backend='inductor' (or None), got backend={backend!r}"
        )
    if backend == "aot" and not aot:
        raise ValueError(
            "backend='aot' is not available for this decoder (no artifact recipe covers it); use "
            "backend='inductor' or 'eager'"
        )
    if backend is None:
        cpu_artifacts = aot and device.type == "cpu" and extension.STATUS.loaded
        return "aot" if cpu_artifacts and mode is None else "inductor"
    return backend


def compile_options(mode: str | None) -> dict:
    """Inductor options of a ``torch.compile`` mode (``torch._inductor.list_mode_options``), checked here so an
    unknown mode is a ValueError at construction. No ``freezing``: in torch 2.13 that option alone does not
    freeze (Dynamo reads the global flag), and frozen weights measured no faster (docs/design/decode-cpu.md)."""
    from torch._inductor import list_mode_options

    try:
        return dict(list_mode_options(mode)) if mode else {}
    except RuntimeError as exc:  # an unknown mode
        raise ValueError(f"mode: {exc}") from None


def aot_min_frames(decoder: SEANetDecoder) -> int:
    """The fewest latent frames the ahead-of-time artifact takes: every reflect/circular padding must be
    shorter than its input (below that the decoder takes another branch, so the export is bounded)."""
    need, upsampling = 2, 1
    for layer in decoder.layers:
        if isinstance(layer, ConvTranspose):
            upsampling *= layer.stride
        for conv in (m for m in layer.modules() if isinstance(m, Conv)):
            pad = max(conv.pad_left, conv.pad_right)
            if conv.pad_mode in ("reflect", "circular") and pad:
                need = max(need, pad // upsampling + 1)
    return need


class Backend:
    """Runs one window of an owner's input (see the module docstring). Calls happen under
    ``torch.inference_mode`` (the runner's), on inputs already checked and on the owner's device."""

    name: str

    def __init__(self, owner: nn.Module):
        self.owner = owner

    def whole(self, x: torch.Tensor) -> torch.Tensor:
        """One pass over ``x`` [B, T, ...] (B >= 1) -> float32 audio [B, C, T * hop]."""
        raise NotImplementedError

    def step(self, plan: ChunkPlan, position: str, window: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        """One chunk at ``position`` of ``plan``: ``(window [B, W, ...], h, c) -> (audio, h, c)``."""
        raise NotImplementedError

    def deferred(self):
        """A block (one call, one stream) after which work the backend put off (a background build) starts."""
        return contextlib.nullcontext()


class EagerBackend(Backend):
    """The owner's modules as they are; one step module per (chunk length, position), made at first use."""

    name = "eager"

    def __init__(self, owner: nn.Module):
        super().__init__(owner)
        self._steps: dict[tuple[int, str], object] = {}

    def whole(self, x):
        return self.owner._decode(x)

    def step(self, plan, position, window, h, c):
        key = (plan.chunk_frames, position)
        if key not in self._steps:
            self._steps[key] = self._wrap(self.owner._make_step(plan, position))
        return self._steps[key](window, h, c)

    def _wrap(self, module: nn.Module):
        return module


class InductorBackend(EagerBackend):
    """torch.compile in this process, ``dynamic=False`` with the input's length marked dynamic: one graph for
    every length of a one-pass call and of the last chunk (a new batch size compiles again)."""

    name = "inductor"

    def __init__(self, owner: nn.Module, mode: str | None = None):
        super().__init__(owner)
        self._compile_kwargs = dict(dynamic=False, options=compile_options(mode))
        self._decode = torch.compile(owner._decode, **self._compile_kwargs)

    def whole(self, x):
        if x.shape[1] > 1:
            torch._dynamo.mark_dynamic(x, 1)  # one graph for every length
        return self._decode(x)

    def step(self, plan, position, window, h, c):
        if position == "last":
            torch._dynamo.mark_dynamic(window, 1)  # one graph for every length of the last chunk
        return super().step(plan, position, window, h, c)

    def _wrap(self, module):
        return torch.compile(module, **self._compile_kwargs)


class AotBackend(Backend):
    """Ahead-of-time compiled artifacts from the on-disk cache (:mod:`jasco_fast.artifacts`): one for one-pass
    calls and one per chunk position, each for B = 1 and for any B, loaded at first use. What they do not serve
    (float64, B > :data:`AOT_MAX_BATCH`, one-pass lengths outside [:func:`aot_min_frames`,
    :data:`AOT_MAX_FRAMES`]) and what the cache lacks runs through :attr:`fallback` (eager). A miss starts one
    background build of everything the owner uses, after the call, unless ``background_build`` is false.
    Never imports torch.compile (a second of a cold start)."""

    name = "aot"

    def __init__(self, owner: nn.Module, background_build: bool | None = None):
        super().__init__(owner)
        if background_build is None:
            background_build = artifacts.background_builds_enabled()
        self.background_build = bool(background_build)
        self.fallback: Backend = EagerBackend(owner)
        self.min_frames = aot_min_frames(owner.decoder)
        self.builds = artifacts.BackgroundBuilds(owner.aot_recipes())
        self.runners: dict[tuple, artifacts.ArtifactRunner] = {}

    def accepts(self, x: torch.Tensor) -> bool:
        """Whether a one-pass artifact serves ``x`` [B, T, D]."""
        B, T = x.shape[:2]
        return x.dtype != torch.float64 and B <= AOT_MAX_BATCH and self.min_frames <= T <= AOT_MAX_FRAMES

    def whole(self, x):
        if not self.accepts(x):
            return self.fallback.whole(x)
        # traced from contiguous float32 latents (the op computes in float32 for float32/16 and bfloat16
        # latents alike, so the cast changes nothing)
        return self.runner(None, None, single=x.shape[0] == 1)(x.to(torch.float32).contiguous())

    def step(self, plan, position, window, h, c):
        if window.shape[0] > AOT_MAX_BATCH or window.dtype == torch.float64:
            return self.fallback.step(plan, position, window, h, c)
        # traced from float32 windows, like the one-pass artifact
        return self.runner(plan, position, single=window.shape[0] == 1)(window.to(torch.float32), h, c)

    def deferred(self):
        return self.builds.deferred()

    def runner(self, plan: ChunkPlan | None, position: str | None, *, single: bool) -> artifacts.ArtifactRunner:
        """The artifact runner of one-pass calls (``position`` None) or of a chunk position, for B = 1 or any B."""
        key = (plan.chunk_frames if plan else None, position, single)
        if key not in self.runners:
            owner = self.owner
            recipe = owner.aot_recipe(position, key[0], single=single)
            if recipe not in self.builds.recipes:  # stream() with another chunk_frames
                self.builds.recipes.append(recipe)
            tolerance = artifacts.VALIDATION_TOLERANCE.get(owner.dtype, 3e-2)
            if position is None:  # a probe of a few frames: cheap, so it is run against eager at load
                probe = torch.randn(
                    1 if single else 2,
                    self.min_frames + 1,
                    owner.decoder.config.dimension,
                    generator=torch.Generator().manual_seed(0),
                )
                runner = artifacts.ArtifactRunner(
                    recipe,
                    owner,
                    owner._decode,
                    (probe.to(owner.device),),
                    tolerance,
                    background=self.background_build,
                    builds=self.builds,
                )
            else:  # no probe: a chunk window is hundreds of frames, and every build already checked the artifact
                step = owner._make_step(plan, position)
                runner = artifacts.ArtifactRunner(
                    recipe, step, step, None, tolerance, background=self.background_build, builds=self.builds
                )
            self.runners[key] = runner
        return self.runners[key]

    def load_all(self, plan: ChunkPlan | None) -> None:
        """Load every artifact the owner's calls use (one pass; and each chunk position of ``plan``)."""
        for single in (True, False):
            self.runner(None, None, single=single)
            for position in POSITIONS if plan else ():
                self.runner(plan, position, single=single)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the background build (if one runs), at most ``timeout`` seconds; whether the cache now holds
        every artifact (False when the build is still running at the timeout: it goes on)."""
        if self.builds.process is not None:
            try:
                self.builds.process.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
        return all(artifacts.is_cached(r) for r in self.builds.recipes)

    def start_build(self) -> subprocess.Popen | None:
        """Start building now what the cache lacks, the artifacts calls missed first."""
        return self.builds.start([r.recipe for r in self.runners.values() if r.artifact is None])


def make_backend(
    name: str, owner: nn.Module, *, mode: str | None = None, background_build: bool | None = None
) -> Backend:
    """The backend object of a name :func:`resolve_backend` returned."""
    if name == "eager":
        return EagerBackend(owner)
    if name == "inductor":
        return InductorBackend(owner, mode)
    if name == "aot":
        return AotBackend(owner, background_build)
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
