"""LatentDecoder: JASCO latents [B, T, D] -> audio [B, C, T * hop], the fast path end to end.
CodeDecoder: EnCodec codes [B, K, T] (MusicGen / AudioGen tokens) -> audio, the same path after the RVQ decode."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import warnings
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from jasco_fast import artifacts
from jasco_fast.memory import reuse_freed_memory
from jasco_fast.modes import resolve_mode, warn_if_emulated
from jasco_fast.decoder import LSTM, Conv, ConvTranspose, DecoderConfig, SEANetDecoder
from jasco_fast.errors import decoding_out_of_memory, is_out_of_memory
from jasco_fast.ops import (JASCO_LATENT_MEAN, JASCO_LATENT_STD, codes_to_latents, denormalize_transpose,
                            recurrent_format_supported)
from jasco_fast.overlap import to_device
from jasco_fast.quantizer import Quantizer, as_codes
from jasco_fast.streaming import POSITIONS, ChunkPlan, ChunkStep, chunk_plan, run_chunks, why_not_chunkable

__all__ = ["LatentDecoder", "CodeDecoder", "DTYPES", "DEFAULT_CHUNK_FRAMES", "AOT_MAX_BATCH", "AOT_MAX_FRAMES",
           "aot_min_frames"]


# The compute dtypes LatentDecoder is tested with, by the names the CLI and the benchmarks take.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _compile_options(mode: str | None) -> dict:
    """Inductor options of a ``torch.compile`` mode (``torch._inductor.list_mode_options``), checked here so an
    unknown mode is a ValueError at construction. No ``freezing``: in torch 2.13 that option alone does not
    freeze (Dynamo reads the global flag), and frozen weights measured no faster (docs/design/decode-cpu.md)."""
    from torch._inductor import list_mode_options

    try:
        return dict(list_mode_options(mode)) if mode else {}
    except RuntimeError as exc:  # an unknown mode
        raise ValueError(f"compile_mode: {exc}") from None


# Latent frames per chunk when decoding long inputs (50 frames per second for JASCO): chosen by
# benchmarks/bench_long_audio.py (throughput against memory).
DEFAULT_CHUNK_FRAMES = 256

COMPILE_CHOICES = (True, False, "aot", "torch.compile")
# Bounds of the ahead-of-time artifact's dynamic dims; calls outside them take the torch.compile path.
AOT_MAX_BATCH = 1024
AOT_MAX_FRAMES = 2 ** 17  # 43 minutes at 50 frames/s


def _statistic(value, name: str, dim: int) -> torch.Tensor:
    # Checked at construction (the op sees the statistics only at the first call) and for finiteness,
    # which the op does not require.
    t = torch.as_tensor(value, dtype=torch.float32).detach().clone()
    if t.dim() > 1 or t.numel() not in (1, dim):
        raise ValueError(f"{name} must be a scalar or have {dim} values (one per latent channel), "
                         f"got shape {list(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite")
    return t.reshape(()) if t.numel() == 1 else t


class LatentChunkStep(nn.Module):
    """One chunk of :meth:`LatentDecoder.stream` at one position, tensors in and out:
    ``(latents window [B, W, D], h, c) -> (audio [B, C, n * hop] float32, h, c)``.

    The fused op (denormalise, transpose, cast, channels-last) followed by :class:`ChunkStep`; this is the
    function a compiled or exported chunk decoder compiles, one per position ("first", "middle", "last").
    """

    def __init__(self, owner: "LatentDecoder", plan: ChunkPlan, position: str):
        super().__init__()
        self.step = ChunkStep(owner.decoder, plan, position)
        # the owner's tensors, not copies; buffers, so that an exported step reads them as weights
        self.register_buffer("mean", owner.mean)
        self.register_buffer("std", owner.std)
        self.dtype, self.channels_last = owner.dtype, owner.channels_last

    def forward(self, window: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        x = denormalize_transpose(window, self.mean, self.std, dtype=self.dtype, channels_last=self.channels_last)
        audio, h, c = self.step(x, h, c)
        return audio.float(), h, c


class LatentDecoder(nn.Module):
    """Latents [B, T, D] -> audio [B, C, T * hop] (float32), as JASCO's ``generate_audio`` computes it.

    One pass of the fused ``denorm_transpose`` op (scale, shift, transpose and cast to ``dtype``) writes
    the latents channels-last, and the decoder reads them there, with its weights channels-last too.

    ``compile=True`` (the default) picks the device's compiled path: on the CPU ``"aot"``, elsewhere (and
    with a ``compile_mode``) ``"torch.compile"``. ``compile=False``: the same path eagerly.

    ``compile="aot"``: ahead-of-time compiled artifacts (AOTInductor, see :mod:`jasco_fast.artifacts`) from the
    on-disk cache, one for one-pass calls and one per chunk position for long inputs, each loaded at its first
    use; shared by every checkpoint of the architecture; serving ``1 <= B <= AOT_MAX_BATCH`` (one-pass:
    ``aot_min_frames(decoder) <= T <= AOT_MAX_FRAMES``) without recompiling; other calls run eagerly. With
    no artifact cached yet, calls run eagerly (nothing blocks on a compile) while one background process
    builds them (``background_build=False`` or ``JASCO_FAST_BACKGROUND_BUILD=0`` leaves building to
    ``jasco-fast compile``); later calls switch to them as they appear.

    ``compile="torch.compile"``: compiled in this process with ``torch.compile`` (the decoder is copied:
    change it afterwards and build a new LatentDecoder); T is dynamic, so new lengths reuse the graph; the first call (and a new batch size)
    compiles.

    **Long inputs are decoded chunk by chunk, in bounded memory** (the same chunks as :meth:`stream`):
    a call with ``T >= chunk_frames + right`` latent frames (``right``: the decoder's look-ahead, 4
    frames for EnCodec 32 kHz; so T >= 260 frames, 5.2 s of JASCO audio, at the default 256) decodes
    windows of ``left + chunk_frames + right`` frames and carries the LSTM state between them; shorter
    inputs take one pass. The result is the same as one pass (float32: below 1e-6 of the peak in the tests;
    the convolutions see the same numbers, only the kernels' summation order may differ with the length).
    Memory: the decoder's activations for one window of ``chunk_frames + left + right`` frames per batch
    item (for EnCodec 32 kHz in float32 the widest are 64 channels at the audio rate, 164 kB per frame
    each, a few alive at once; measured above the process's base at the default chunk: 0.25-0.3 GB at
    B = 1, 1.15 GB at B = 8, so about 0.15 GB per item), plus the output audio (128 kB per second per channel per item) and the latents
    (0.5 kB per frame per item). It does not grow with T. One pass instead needs activations for all
    T frames (about 28 MB per second of audio per item). Decoders that cannot be chunked exactly
    (``time_group_norm``, ``circular`` padding) always take one pass.

    Args:
        decoder: a :class:`SEANetDecoder` (e.g. from ``load_decoder``); it is copied, not modified.
        mean, std: the latent statistics, scalars or one per channel (JASCO: -0.0074, 4.0102).
        compile: ``True`` (the device's default), ``"aot"``, ``"torch.compile"`` (above), or ``False`` (eager).
        channels_last: ``False`` feeds the decoder a contiguous [B, D, T] instead (for comparison).
        dtype: the decoder's compute dtype (e.g. ``torch.bfloat16`` on GPUs); default: the decoder's.
            ``"auto"``: the fastest mode measured on this device and CPU class with a worst-case SNR of at
            least 40 dB (:data:`jasco_fast.modes.AUTO_MODES`), recurrent format included; the choice is
            visible as :attr:`dtype` and :attr:`recurrent_dtype`. A reduced precision that this CPU only
            emulates warns once (:class:`jasco_fast.PerformanceWarning`).
        compile_mode: a ``torch.compile`` mode (e.g. ``"reduce-overhead"`` for CUDA graphs when every call
            has the same shape).
        chunk_frames: latent frames per chunk for long inputs (default :data:`DEFAULT_CHUNK_FRAMES`);
            ``None``: every call takes one pass, whatever its length (memory grows with T).
        background_build: ``"aot"`` only: on an artifact cache miss, build the artifacts in a background
            process (default: unless the environment sets ``JASCO_FAST_BACKGROUND_BUILD=0``).
        recurrent_dtype: how the LSTM's recurrent matrices are streamed each step (at B = 1 the LSTM reads
            them once per frame, which bounds its speed): ``None``, the compute dtype; ``torch.int8``, 8-bit
            with a float32 scale per row (a quarter of float32's bytes); ``torch.bfloat16`` with float32
            ``dtype``. The LSTM's state and arithmetic stay float32 (see :func:`jasco_fast.ops.lstm_skip`).
            ``dtype=torch.bfloat16, recurrent_dtype=torch.int8`` is the reduced-precision mode measured in
            docs/performance.md ("CPU peers", "Fidelity of reduced precision"). ``"auto"``: the automatic mode's format for ``dtype``.
    """

    def __init__(self, decoder: SEANetDecoder, mean=JASCO_LATENT_MEAN, std=JASCO_LATENT_STD, *,
                 compile: bool | str = True, channels_last: bool = True, dtype: torch.dtype | str | None = None,
                 compile_mode: str | None = None, chunk_frames: int | None = DEFAULT_CHUNK_FRAMES,
                 background_build: bool | None = None, recurrent_dtype: torch.dtype | str | None = None):
        super().__init__()
        if not isinstance(decoder, SEANetDecoder):
            raise TypeError(f"decoder must be a jasco_fast.SEANetDecoder, got {type(decoder).__name__}")
        if not any(compile is c for c in COMPILE_CHOICES[:2]) and compile not in COMPILE_CHOICES[2:]:
            raise ValueError(f"compile must be one of {COMPILE_CHOICES}, got {compile!r}")
        param = next(decoder.parameters())
        if dtype is not None and dtype != "auto" and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating-point torch.dtype or 'auto', got {dtype!r}")
        if not (recurrent_dtype is None or recurrent_dtype == "auto" or isinstance(recurrent_dtype, torch.dtype)):
            raise ValueError(f"recurrent_dtype must be None, a torch.dtype or 'auto', got {recurrent_dtype!r}")
        dtype, recurrent_dtype = resolve_mode(dtype, recurrent_dtype, param.device, param.dtype)
        warn_if_emulated(dtype, param.device)
        self.dtype = dtype
        self.decoder = copy.deepcopy(decoder).to(dtype=self.dtype).eval().requires_grad_(False)
        self.recurrent_dtype = _recurrent_dtype(recurrent_dtype, self.dtype)
        for module in self.decoder.modules():
            if isinstance(module, LSTM):
                module.recurrent_dtype = self.recurrent_dtype
        self.channels_last = channels_last
        if channels_last:
            self.decoder.to_channels_last()
        self.decoder.fuse()  # after the dtype and the layout: they decide which fused modules apply
        dim = decoder.config.dimension
        self.register_buffer("mean", _statistic(mean, "mean", dim).to(param.device))
        self.register_buffer("std", _statistic(std, "std", dim).to(param.device))
        self.backend = self._backend(compile, compile_mode, param.device)
        if param.device.type == "cpu":
            reuse_freed_memory()
        self.is_compiled = self.backend != "eager"
        # the "aot" backend never calls torch.compile (nor imports it: a second of a cold start): what its
        # artifacts do not serve runs eagerly
        self._run = self._decode
        if self.backend == "torch.compile":
            self._compile_kwargs = dict(dynamic=False, options=_compile_options(compile_mode))
            self._run = torch.compile(self._decode, **self._compile_kwargs)
        self.chunk_frames = None  # None: one pass whatever the length
        if chunk_frames is not None and why_not_chunkable(self.decoder) is None:
            self.chunk_frames = self._plan(chunk_frames).chunk_frames  # validates it
        self._steps: dict[tuple[int, str], object] = {}
        # --- ahead-of-time artifacts (jasco_fast.artifacts): one for one-pass calls, one per chunk position;
        # each is loaded at its first use, and one background process builds whatever the cache lacks
        self._runners: dict[object, artifacts.ArtifactRunner] = {}
        if self.backend == "aot":
            if background_build is None:
                background_build = os.environ.get("JASCO_FAST_BACKGROUND_BUILD", "1") != "0"
            self._background_build = background_build
            self._aot_min_frames = aot_min_frames(self.decoder)
            self._builds = artifacts.BackgroundBuilds(self.aot_recipes())

    def _backend(self, compile, compile_mode, device: torch.device) -> str:
        """``compile`` -> "eager", "aot" or "torch.compile". True picks the ahead-of-time artifacts where they
        are measured (CPU, no ``compile_mode``), else torch.compile."""
        if compile_mode is not None and not (compile is True or compile == "torch.compile"):
            raise ValueError(f"compile_mode is an option of torch.compile: it needs compile=True or "
                             f"'torch.compile', got compile={compile!r}")
        if compile is False:
            return "eager"
        if compile == "aot" or (compile is True and self._aot_by_default(compile_mode, device)):
            return "aot"
        return "torch.compile"

    def _aot_by_default(self, compile_mode, device: torch.device) -> bool:
        return compile_mode is None and device.type == "cpu"

    @property
    def compiled(self) -> bool:
        """Deprecated (removed in 0.3): :attr:`is_compiled`."""
        warnings.warn("LatentDecoder.compiled is deprecated and will be removed in jasco_fast 0.3; use "
                      "LatentDecoder.is_compiled", DeprecationWarning, stacklevel=2)
        return self.is_compiled

    def _recipe_params(self) -> dict:
        return {"config": dataclasses.asdict(self.decoder.config), "dtype": str(self.dtype).replace("torch.", ""),
                "channels_last": self.channels_last,
                "statistics_shape": [list(self.mean.shape), list(self.std.shape)],
                "recurrent_dtype": None if self.recurrent_dtype is None else str(self.recurrent_dtype).replace("torch.", "")}

    def aot_recipe(self, position: str | None = None, chunk_frames: int | None = None, *,
                   single: bool = False) -> artifacts.Recipe:
        """The recipe of an ahead-of-time artifact of this decoder (architecture, dtype, layout, device):
        one-pass decoding (``position`` None), or the chunk step at ``position`` for chunks of
        ``chunk_frames`` (default: this decoder's); ``single``: specialised to B = 1 (else any B)."""
        params = {**self._recipe_params(), "single": single}
        if position is None:
            return artifacts.Recipe("latent_decoder", "jasco_fast.pipeline:latent_decoder_program", params,
                                    device=self.device.type)
        if position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
        params.update(position=position,
                      chunk_frames=self._plan(chunk_frames or self.chunk_frames or DEFAULT_CHUNK_FRAMES).chunk_frames)
        return artifacts.Recipe("latent_chunk_step", "jasco_fast.pipeline:latent_chunk_step_program", params,
                                device=self.device.type)

    def aot_recipes(self) -> list[artifacts.Recipe]:
        """Every artifact this decoder's calls use: one-pass, and each chunk position when it chunks; each
        for B = 1 and for any B. (A batch dimension of one, known when compiled, measured 7 % faster at
        B = 1 than the same code for any B; torch.compile specialises on B the same way.)"""
        positions = [None, "first", "last", "middle"] if self.chunk_frames else [None]
        return [self.aot_recipe(p, single=single) for p in positions for single in (True, False)]

    @property
    def aot(self) -> artifacts.ArtifactRunner | None:
        """The runner of the one-pass artifact for any B (``compile="aot"``; None otherwise), loaded at first use."""
        return self._runner(None, None, single=False) if self.backend == "aot" else None

    def load_artifacts(self) -> dict[str, str]:
        """``compile="aot"``: load every artifact this decoder's calls use now (else each loads at its first
        use); returns :meth:`artifact_status`."""
        if self.backend == "aot":
            plan = self._plan(self.chunk_frames) if self.chunk_frames else None
            for single in (True, False):
                self._runner(None, None, single=single)
                for position in POSITIONS if plan else ():
                    self._runner(plan, position, single=single)
        return self.artifact_status()

    def artifact_status(self) -> dict[str, str]:
        """``compile="aot"``: what each artifact used so far is doing ("loaded ...", "no entry", "rejected: ...")."""
        def name(chunk_frames, position, single):
            what = "one pass" if position is None else f"chunk {position} ({chunk_frames} frames)"
            return what + (", B = 1" if single else "")
        return {name(*key): runner.status for key, runner in self._runners.items()}

    @property
    def artifacts_loaded(self) -> bool:
        """``compile="aot"``: whether every artifact used so far (each one after :meth:`load_artifacts`) is
        loaded, so that those calls run compiled."""
        return bool(self._runners) and all(r.artifact is not None for r in self._runners.values())

    def wait_for_artifacts(self, timeout: float | None = None) -> bool:
        """``compile="aot"``: wait for the background build this decoder started (if one runs); returns
        whether the cache now holds every artifact this decoder uses (later calls switch to them). For
        scripts that want the artifacts in place before timing or exiting."""
        if self.backend != "aot":
            return False
        if self._builds.process is not None:
            self._builds.process.wait(timeout)
        return all(artifacts.is_cached(r) for r in self._builds.recipes)

    def start_artifact_build(self) -> subprocess.Popen | None:
        """``compile="aot"``: start building, now, every artifact this decoder uses that the cache lacks (those
        its calls missed first), in one detached, low-priority background process, as a miss does unless
        ``background_build=False``; for a decoder made with ``background_build=False`` so that no build
        competes with calls being timed, once they are done. Returns the build process (None: nothing to
        build, one of them failed before, or not ``"aot"``); :meth:`wait_for_artifacts` waits for it."""
        if self.backend != "aot":
            return None
        return self._builds.start([r.recipe for r in self._runners.values() if r.artifact is None])

    def _runner(self, plan: ChunkPlan | None, position: str | None, *, single: bool) -> artifacts.ArtifactRunner:
        """The artifact runner of one-pass calls (``position`` None) or of a chunk position, for B = 1 or any B."""
        key = (plan.chunk_frames if plan else None, position, single)
        if key not in self._runners:
            recipe = self.aot_recipe(position, key[0], single=single)
            if recipe not in self._builds.recipes:  # stream() with another chunk_frames
                self._builds.recipes.append(recipe)
            tolerance = artifacts.VALIDATION_TOLERANCE.get(self.dtype, 3e-2)
            if position is None:  # a probe of a few frames: cheap, so it is run against eager at load
                probe = torch.randn(1 if single else 2, self._aot_min_frames + 1, self.decoder.config.dimension,
                                    generator=torch.Generator().manual_seed(0))
                runner = artifacts.ArtifactRunner(recipe, self, self._decode, (probe.to(self.device),), tolerance,
                                                  background=self._background_build, builds=self._builds)
            else:  # no probe: a chunk window is hundreds of frames, and every build already checked the artifact
                step = self._make_step(plan, position)
                runner = artifacts.ArtifactRunner(recipe, step, step, None, tolerance,
                                                  background=self._background_build, builds=self._builds)
            self._runners[key] = runner
        return self._runners[key]

    def _aot_accepts(self, latents: torch.Tensor) -> bool:
        B, T, _ = latents.shape
        return (latents.dtype != torch.float64 and B <= AOT_MAX_BATCH
                and self._aot_min_frames <= T <= AOT_MAX_FRAMES)

    @property
    def hop_length(self) -> int:
        return self.decoder.hop_length

    @property
    def sample_rate(self) -> int:
        return self.decoder.sample_rate

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        x = denormalize_transpose(latents, self.mean, self.std, dtype=self.dtype, channels_last=self.channels_last)
        return self.decoder(x).float()

    def _plan(self, chunk_frames: int) -> ChunkPlan:
        return chunk_plan(self.decoder, chunk_frames)

    def chunk_step(self, position: str, chunk_frames: int | None = None) -> LatentChunkStep:
        """The per-chunk function of :meth:`stream` at ``position`` ("first", "middle" or "last"), eager:
        ``(latents window [B, W, D], h, c) -> (audio, h, c)``. For ahead-of-time compilation; the window
        lengths are ``chunk_plan(...).window_frames(position)`` (``last``: any length > ``left``)."""
        if position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
        return self._make_step(self._plan(chunk_frames or self.chunk_frames or DEFAULT_CHUNK_FRAMES), position)

    def _make_step(self, plan: ChunkPlan, position: str) -> nn.Module:
        return LatentChunkStep(self, plan, position)

    def _compiled_step(self, plan: ChunkPlan, position: str):
        key = (plan.chunk_frames, position)
        if key not in self._steps:
            module = self._make_step(plan, position)
            self._steps[key] = module if self.backend != "torch.compile" else \
                torch.compile(module, **self._compile_kwargs)
        return self._steps[key]

    def _check_latents(self, latents: torch.Tensor) -> None:
        dim = self.decoder.config.dimension
        if latents.dim() != 3 or latents.shape[2] != dim:
            raise ValueError(f"latents must be [B, T, {dim}], got {list(latents.shape)}")
        if not latents.is_floating_point():
            raise TypeError(f"latents must be floating point, got {latents.dtype}")

    def _whole(self, latents: torch.Tensor) -> torch.Tensor:
        """One pass over all of ``latents`` (already checked)."""
        if latents.shape[0] == 0:
            return latents.new_zeros(0, self.decoder.channels, latents.shape[1] * self.hop_length, dtype=torch.float32)
        latents = to_device(latents, self.device)  # through pinned memory, non-blocking, to a GPU
        if self.backend == "torch.compile" and latents.shape[1] > 1:
            torch._dynamo.mark_dynamic(latents, 1)  # one graph for every length
        with torch.inference_mode():
            if self.backend == "aot" and self._aot_accepts(latents):
                # the artifact was traced from contiguous float32 latents (the op computes in float32 for
                # float32/16 and bfloat16 latents alike, so the cast changes nothing)
                runner = self._runner(None, None, single=latents.shape[0] == 1)
                return runner(latents.to(torch.float32).contiguous())
            return self._run(latents)

    def stream(self, latents: torch.Tensor | Iterable[torch.Tensor], *,
               chunk_frames: int | None = None) -> Iterator[torch.Tensor]:
        """Decode chunk by chunk, yielding float32 audio [B, C, n] pieces in order, each as soon as it is final.

        Args:
            latents: a [B, T, D] tensor, or an iterable of [B, t, D] pieces (any t, as they are produced;
                a piece is read, not copied, so do not modify it after handing it over).
            chunk_frames: latent frames per chunk (default: this decoder's ``chunk_frames``, else
                :data:`DEFAULT_CHUNK_FRAMES`); at least the decoder's left context.
        The pieces concatenate to what one pass gives: each chunk reads its neighbours' frames as context,
        carries the LSTM state, and applies the configured padding only at the true start and end. A
        piece is yielded once ``right`` (4 for EnCodec 32 kHz) frames after it have arrived; input
        shorter than ``chunk_frames + right`` frames comes out as one piece at the end. Decoders that
        cannot be chunked (``time_group_norm``, ``circular`` padding) also yield one piece at the end.
        Compiled, each position is one graph or artifact (``last``: dynamic length), reused by every chunk
        and call (torch.compile: of the same batch size; artifacts: of any batch size).
        """
        if isinstance(latents, torch.Tensor):
            self._check_latents(latents)
            pieces: Iterable[torch.Tensor] = (latents,)
        elif isinstance(latents, Iterable) and not isinstance(latents, (str, bytes)):
            pieces = latents
        else:
            raise TypeError(f"latents must be a tensor or an iterable of tensors, got {type(latents).__name__}")
        if chunk_frames is None:
            chunk_frames = self.chunk_frames or DEFAULT_CHUNK_FRAMES
        if why_not_chunkable(self.decoder) is not None:
            return self._stream_whole(pieces)
        plan = self._plan(chunk_frames)
        return self._stream(pieces, plan)

    def _checked_pieces(self, pieces: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        for piece in pieces:
            if not isinstance(piece, torch.Tensor):
                raise TypeError(f"each chunk of latents must be a tensor, got {type(piece).__name__}")
            self._check_latents(piece)
            yield to_device(piece, self.device)

    def _stream_whole(self, pieces: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        parts = list(self._checked_pieces(pieces))
        if not parts or sum(p.shape[1] for p in parts) == 0:
            raise ValueError("latents need at least one frame (T >= 1)")
        yield self._whole(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])

    def _deferred_builds(self):
        return self._builds.deferred() if self.backend == "aot" else contextlib.nullcontext()

    def _stream(self, pieces: Iterable[torch.Tensor], plan: ChunkPlan) -> Iterator[torch.Tensor]:
        with self._deferred_builds():  # a background build starts once the stream ends
            yield from self._chunks(pieces, plan)

    def _chunks(self, pieces: Iterable[torch.Tensor], plan: ChunkPlan) -> Iterator[torch.Tensor]:
        def initial_state(batch: int):
            zeros = torch.zeros(_state_shape(self.decoder, batch), dtype=self.dtype, device=self.device)
            return zeros, zeros.clone()

        def step(position: str, window: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
            if window.shape[0] == 0:
                return window.new_zeros(0, self.decoder.channels, self._committed(plan, position, window) *
                                        self.hop_length, dtype=torch.float32), h, c
            window = window.contiguous()  # the same strides for every input length: no recompilation
            with torch.inference_mode():
                if self.backend == "aot":
                    if window.shape[0] > AOT_MAX_BATCH or window.dtype == torch.float64:
                        return self._compiled_step(plan, position)(window, h, c)  # eager
                    # traced from float32 windows, like the one-pass artifact
                    runner = self._runner(plan, position, single=window.shape[0] == 1)
                    return runner(window.to(torch.float32), h, c)
                if self.backend == "torch.compile" and position == "last":
                    torch._dynamo.mark_dynamic(window, 1)  # one graph for every length of the last chunk
                return self._compiled_step(plan, position)(window, h, c)

        return run_chunks(self._checked_pieces(pieces), plan, step, self._whole, initial_state)

    @staticmethod
    def _committed(plan: ChunkPlan, position: str, window: torch.Tensor) -> int:
        return plan.chunk_frames if position != "last" else window.shape[1] - plan.left

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        # Checked here, before the compiled graph (where an error would arrive wrapped in a dynamo exception):
        # the decoder's D, at least one frame (the graph is traced with T dynamic), a floating-point input.
        # The op and the decoder hold their own rules (csrc/denorm_transpose.h, SEANetDecoder.forward).
        if not isinstance(latents, torch.Tensor):
            raise TypeError(f"latents must be a tensor, got {type(latents).__name__}")
        self._check_latents(latents)
        T = latents.shape[1]
        if T < 1:
            raise ValueError("latents need at least one frame (T >= 1)")
        try:
            with self._deferred_builds():  # a background build starts after this call, not during it
                return self._decode_checked(latents)
        except RuntimeError as exc:  # torch.OutOfMemoryError is one too
            if not is_out_of_memory(exc):
                raise
            raise decoding_out_of_memory(exc, latents.shape[0], T, self.decoder.config.frame_rate,
                                         self.device, self.dtype) from exc

    def _decode_checked(self, latents: torch.Tensor) -> torch.Tensor:
        T = latents.shape[1]
        if self.chunk_frames is None or T < self._plan(self.chunk_frames).min_chunked_frames:
            return self._whole(latents)
        # chunk by chunk into the output, so only one window's activations are alive at a time
        out = torch.empty(latents.shape[0], self.decoder.channels, T * self.hop_length, dtype=torch.float32,
                          device=self.device)
        at = 0
        for piece in LatentDecoder.stream(self, latents):  # frames-major input, also in CodeDecoder
            out[..., at:at + piece.shape[-1]] = piece
            at += piece.shape[-1]
        return out


# --------------------------------------------------------------------------------------------------
# Codes: RVQ decode (fused op) + the same decoder, chunking and streaming.
# Internally codes travel frames-major, as [B, T, K] views of the caller's [B, K, T], so the streaming
# runner (frames on dim 1) cuts them like latents: codes -> latents is per frame.


class CodeChunkStep(nn.Module):
    """One chunk of :meth:`CodeDecoder.stream` at one position: ``(codes window [B, W, K], h, c) ->
    (audio [B, C, n * hop] float32, h, c)``; the fused RVQ decode followed by :class:`ChunkStep`."""

    def __init__(self, owner: "CodeDecoder", plan: ChunkPlan, position: str):
        super().__init__()
        self.step = ChunkStep(owner.decoder, plan, position)
        self.codebooks = owner.codebooks  # shared with the owner, not a copy
        self.dtype, self.channels_last = owner.dtype, owner.channels_last

    def forward(self, window: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        x = codes_to_latents(window.transpose(1, 2), self.codebooks, dtype=self.dtype,
                             channels_last=self.channels_last)
        audio, h, c = self.step(x, h, c)
        return audio.float(), h, c


class CodeDecoder(LatentDecoder):
    """EnCodec codes [B, K, T] -> audio [B, C, T * hop] (float32), as EnCodec's ``decode`` computes it
    (transformers' ``EncodecModel.decode``, MusicGen's and AudioGen's ``generate_audio``).

    One pass of the fused ``codes_to_latents`` op (gather and sum the first K codebooks' rows, cast to
    ``dtype``, write channels-last), then the decoder exactly as :class:`LatentDecoder` runs it: compiled,
    chunked for long inputs, streamable with :meth:`stream` (a tensor or an iterable of [B, K, t] pieces).
    No mean/std: EnCodec's decoder reads the quantizer's output as it is. K may be smaller than the
    quantizer's number of codebooks (lower bandwidths); each K compiles its own graph.

    Args:
        decoder: a :class:`SEANetDecoder`; quantizer: a :class:`Quantizer` whose D is the decoder's (both copied).
        compile, channels_last, dtype, compile_mode, chunk_frames, recurrent_dtype: as for :class:`LatentDecoder`.
    :meth:`chunk_step` windows are codes frames-major, [B, W, K] (``codes.transpose(1, 2)``).
    """

    def __init__(self, decoder: SEANetDecoder, quantizer: Quantizer, *, compile: bool = True, channels_last: bool = True,
                 dtype: torch.dtype | str | None = None, compile_mode: str | None = None,
                 chunk_frames: int | None = DEFAULT_CHUNK_FRAMES, recurrent_dtype: torch.dtype | str | None = None):
        if not isinstance(quantizer, Quantizer):
            raise TypeError(f"quantizer must be a jasco_fast.Quantizer, got {type(quantizer).__name__}")
        if compile == "aot":
            raise ValueError("compile='aot' is not available for CodeDecoder yet (its artifact recipe covers latents "
                             "only); use compile=True (torch.compile) or False")
        if isinstance(decoder, SEANetDecoder) and quantizer.dimension != decoder.config.dimension:
            raise ValueError(f"the quantizer's codebooks have D = {quantizer.dimension}, the decoder reads "
                             f"D = {decoder.config.dimension}")
        super().__init__(decoder, 0.0, 1.0, compile=compile, channels_last=channels_last, dtype=dtype,
                         compile_mode=compile_mode, chunk_frames=chunk_frames, recurrent_dtype=recurrent_dtype)
        # the op sums in float32 (float64 codebooks: float64) and casts once to `dtype`
        self.register_buffer("codebooks", quantizer.codebooks.detach().clone().to(self.device))

    def _aot_by_default(self, compile_mode, device: torch.device) -> bool:
        return False  # no artifact recipe for codes yet: compile=True is torch.compile

    @property
    def num_codebooks(self) -> int:
        return self.codebooks.shape[0]

    @property
    def codebook_size(self) -> int:
        return self.codebooks.shape[1]

    def _decode(self, codes_t: torch.Tensor) -> torch.Tensor:
        x = codes_to_latents(codes_t.transpose(1, 2), self.codebooks, dtype=self.dtype,
                             channels_last=self.channels_last)
        return self.decoder(x).float()

    def _make_step(self, plan: ChunkPlan, position: str) -> nn.Module:
        return CodeChunkStep(self, plan, position)

    def _frames_major(self, codes) -> torch.Tensor:
        """Caller's codes [B, K, T] -> checked int64/int32 [B, T, K] view."""
        codes = as_codes(codes)
        if codes.dim() != 3:
            raise ValueError(f"codes must be [B, K, T], got shape {list(codes.shape)}")
        return codes.transpose(1, 2)

    def _check_latents(self, codes_t: torch.Tensor) -> None:
        # called on frames-major [B, T, K] views: messages speak of the caller's [B, K, T]
        if codes_t.dim() != 3:
            raise ValueError(f"codes must be [B, K, T], got shape {list(codes_t.shape)}")
        if codes_t.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"codes must be integers, got {codes_t.dtype}")
        N, S = self.num_codebooks, self.codebook_size
        K = codes_t.shape[2]
        if not 1 <= K <= N:
            raise ValueError(f"codes [B, K, T] = {list(codes_t.transpose(1, 2).shape)} have K = {K} codebooks; "
                             f"this quantizer has {N} (1 <= K <= {N}; the first K are used)")
        bad = (codes_t < 0) | (codes_t >= S)
        if codes_t.numel() and bool(bad.any()):
            b, t, k = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"code {int(codes_t[b, t, k])} at [b={b}, k={k}, t={t}] is out of range: codes must "
                             f"lie in [0, {S}) (the codebook size)")

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, K, T] (any integer dtype) -> audio [B, C, T * hop], float32."""
        return super().forward(self._frames_major(codes))

    def stream(self, codes: torch.Tensor | Iterable[torch.Tensor], *,
               chunk_frames: int | None = None) -> Iterator[torch.Tensor]:
        """As :meth:`LatentDecoder.stream`, for codes: a [B, K, T] tensor or an iterable of [B, K, t] pieces."""
        if isinstance(codes, torch.Tensor):
            return super().stream(self._frames_major(codes), chunk_frames=chunk_frames)
        if isinstance(codes, Iterable) and not isinstance(codes, (str, bytes)):
            return super().stream((self._frames_major(p) for p in codes), chunk_frames=chunk_frames)
        raise TypeError(f"codes must be a tensor or an iterable of tensors, got {type(codes).__name__}")


def _state_shape(decoder: SEANetDecoder, batch: int) -> tuple[int, ...]:
    """The LSTM state a chunk hands on, [num_layers, B, H]; (0,) for a decoder without an LSTM."""
    lstm = next((m for m in decoder.layers if hasattr(m, "flat_weights")), None)
    return (lstm.num_layers, batch, lstm.weight_hh_l0.shape[1]) if lstm is not None else (0,)


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


def _program_owner(config: dict, dtype: str, channels_last: bool, statistics_shape: list,
                   recurrent_dtype: str | None, chunk_frames: int | None = None) -> LatentDecoder:
    # random weights: an artifact takes the real ones at load
    mean_shape, std_shape = statistics_shape
    return LatentDecoder(SEANetDecoder(DecoderConfig(**config)), torch.zeros(mean_shape), torch.ones(std_shape),
                         compile=False, channels_last=channels_last, dtype=getattr(torch, dtype),
                         chunk_frames=chunk_frames,
                         recurrent_dtype=None if recurrent_dtype is None else getattr(torch, recurrent_dtype))


def _recurrent_dtype(recurrent_dtype, dtype: torch.dtype) -> torch.dtype | None:
    """The LSTM's recurrent format, None when it is the compute dtype itself."""
    if not (recurrent_dtype is None or isinstance(recurrent_dtype, torch.dtype)) \
            or not recurrent_format_supported(recurrent_dtype, dtype):
        raise ValueError(f"recurrent_dtype must be None, torch.int8, or torch.bfloat16 with a float32 dtype; got "
                         f"{recurrent_dtype!r} with dtype {dtype}")
    return None if recurrent_dtype == dtype else recurrent_dtype


def latent_decoder_program(config: dict, dtype: str, channels_last: bool, statistics_shape: list,
                           recurrent_dtype: str | None, single: bool) -> artifacts.Program:
    """The recipe factory of LatentDecoder's one-pass artifact: ``_decode`` of a LatentDecoder of this
    architecture, dynamic in T, and in B unless ``single`` (B = 1)."""
    from torch.export import Dim

    owner = _program_owner(config, dtype, channels_last, statistics_shape, recurrent_dtype)
    min_frames = aot_min_frames(owner.decoder)
    # build() moves it to the device; a dynamic batch needs an example of 2 or more (export specialises 1)
    example = torch.randn(1 if single else 2, max(min_frames + 1, 50), owner.decoder.dimension)
    dims = {1: Dim("frames", min=min_frames, max=AOT_MAX_FRAMES)}
    if not single:
        dims[0] = Dim("batch", min=1, max=AOT_MAX_BATCH)
    return artifacts.Program(owner, (example,), (dims,), method="_decode",
                             tolerance=artifacts.VALIDATION_TOLERANCE[owner.dtype])


def latent_chunk_step_program(config: dict, dtype: str, channels_last: bool, statistics_shape: list,
                              recurrent_dtype: str | None, single: bool, chunk_frames: int,
                              position: str) -> artifacts.Program:
    """The recipe factory of LatentDecoder's chunk-step artifacts: :meth:`LatentDecoder.chunk_step` at
    ``position``, dynamic in B unless ``single`` (B = 1), and in the window's length for ``last``."""
    from torch.export import Dim

    owner = _program_owner(config, dtype, channels_last, statistics_shape, recurrent_dtype, chunk_frames)
    plan = owner._plan(chunk_frames)
    step = owner.chunk_step(position, chunk_frames)
    batch = None if single else Dim("batch", min=1, max=AOT_MAX_BATCH)
    window = {} if single else {0: batch}
    frames = plan.window_frames(position)
    if frames is None:  # the last chunk: at least one committed frame, fewer than a full chunk's window
        frames = plan.left + max(1, plan.chunk_frames // 2)
        window[1] = Dim("frames", min=plan.left + 1, max=plan.left + plan.chunk_frames + plan.right - 1)
    items = 1 if single else 2
    example = torch.randn(items, frames, owner.decoder.dimension)
    shape = _state_shape(owner.decoder, items)
    state_dims = {1: batch} if len(shape) == 3 and not single else None
    # a non-zero state, as a middle or last chunk receives it
    h, c = ((0.1 * torch.randn(shape)).to(owner.dtype) for _ in range(2))
    return artifacts.Program(step, (example, h, c), (window, state_dims, state_dims),
                             tolerance=artifacts.VALIDATION_TOLERANCE[owner.dtype])
