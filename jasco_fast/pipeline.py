"""LatentDecoder: JASCO latents [B, T, D] -> audio [B, C, T * hop], the fast path end to end.
CodeDecoder: EnCodec codes [B, K, T] (MusicGen / AudioGen tokens) -> audio, the same path after the RVQ decode.

Both are thin modules over two parts: a backend (:mod:`jasco_fast.backends`: eager, torch.compile, or
ahead-of-time artifacts) that turns one window of input into audio, and the chunk runner
(:mod:`jasco_fast.runner`) that drives it over a whole input or a stream. They differ only in their front-end
op, ``denorm_transpose`` (with the latent statistics) or ``codes_to_latents`` (with the quantizer's codebooks).
"""

from __future__ import annotations

import copy
import dataclasses
import subprocess
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from jasco_fast import artifacts, ops
from jasco_fast.backends import (
    AOT_MAX_BATCH,
    AOT_MAX_FRAMES,
    AotBackend,
    Backend,
    aot_min_frames,
    make_backend,
    resolve_backend,
)
from jasco_fast.decoder import CONV_FORMATS, LSTM, DecoderConfig, SEANetDecoder
from jasco_fast.modes import resolve_mode, warn_if_emulated
from jasco_fast.ops import (
    JASCO_LATENT_MEAN,
    JASCO_LATENT_STD,
    codes_to_latents,
    denormalize_transpose,
    recurrent_format_supported,
)
from jasco_fast.quantizer import Quantizer, as_codes
from jasco_fast.runner import DEFAULT_CHUNK_FRAMES, ChunkRunner, _state_shape, usable_chunk_frames
from jasco_fast.streaming import POSITIONS, ChunkPlan, ChunkStep, chunk_plan

__all__ = [
    "LatentDecoder",
    "CodeDecoder",
    "DTYPES",
    "DEFAULT_CHUNK_FRAMES",
    "AOT_MAX_BATCH",
    "AOT_MAX_FRAMES",
    "aot_min_frames",
]


# The compute dtypes LatentDecoder is tested with, by the names the CLI and the benchmarks take.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _statistic(value, name: str, dim: int) -> torch.Tensor:
    # Checked at construction (the op sees the statistics only at the first call) and for finiteness,
    # which the op does not require.
    t = torch.as_tensor(value, dtype=torch.float32).detach().clone()
    if t.dim() > 1 or t.numel() not in (1, dim):
        raise ValueError(
            f"{name} must be a scalar or have {dim} values (one per latent channel), got shape {list(t.shape)}"
        )
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite")
    return t.reshape(()) if t.numel() == 1 else t


def _stand_in(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t``, or on another ``device`` a tensor with its shape and dtype there without memory (an expanded
    scalar): what an op's rule function reads of a decoder's own tensor when it checks an input that is not on
    the decoder's device yet."""
    return t if t.device == device else torch.empty((), dtype=t.dtype, device=device).expand(t.shape)


class LatentChunkStep(nn.Module):
    """One chunk of :meth:`LatentDecoder.stream` at one position, tensors in and out:
    ``(latents window [B, W, D], h, c) -> (audio [B, C, n * hop] float32, h, c)``.

    The fused op (denormalise, transpose, cast, channels-last) followed by :class:`ChunkStep`; this is the
    function a compiled or exported chunk decoder compiles, one per position ("first", "middle", "last").
    """

    def __init__(self, owner: LatentDecoder, plan: ChunkPlan, position: str):
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


class _FrontEndDecoder(nn.Module):
    """What LatentDecoder and CodeDecoder share: the decoder copy in its compute dtype and layout, a backend
    and a chunk runner. A subclass supplies its front-end op: ``_decode`` (one pass), ``_make_step`` (one chunk
    position), ``_check_input`` (a frames-major input or piece), ``device`` and ``input_name``."""

    input_name = "latents"

    def _setup(self, decoder: SEANetDecoder, *, channels_last: bool, dtype, recurrent_dtype, conv_format) -> None:
        """The decoder, copied, cast to the compute dtype and laid out; before the subclass's tensors."""
        if not isinstance(decoder, SEANetDecoder):
            raise TypeError(f"decoder must be a jasco_fast.SEANetDecoder, got {type(decoder).__name__}")
        param = next(decoder.parameters())
        if dtype is not None and dtype != "auto" and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating-point torch.dtype or 'auto', got {dtype!r}")
        if not (recurrent_dtype is None or recurrent_dtype == "auto" or isinstance(recurrent_dtype, torch.dtype)):
            raise ValueError(f"recurrent_dtype must be None, a torch.dtype or 'auto', got {recurrent_dtype!r}")
        if conv_format not in (*CONV_FORMATS, "auto"):
            raise ValueError(f"conv_format must be None, 'int12' or 'auto', got {conv_format!r}")
        dtype, recurrent_dtype, conv_format = resolve_mode(
            dtype, recurrent_dtype, param.device, param.dtype, conv_format
        )
        if conv_format is not None and (dtype != torch.float32 or param.device.type != "cpu"):
            raise ValueError(
                f"conv_format={conv_format!r} needs a float32 decoder on the CPU, got {dtype} on {param.device.type}"
            )
        warn_if_emulated(dtype, param.device, stacklevel=4)  # the line that built the decoder
        self.dtype = dtype
        self.conv_format = conv_format
        self.decoder = copy.deepcopy(decoder).to(dtype=self.dtype).eval().requires_grad_(False)
        self.recurrent_dtype = _recurrent_dtype(recurrent_dtype, self.dtype)
        for module in self.decoder.modules():
            if isinstance(module, LSTM):
                module.recurrent_dtype = self.recurrent_dtype
        self.channels_last = channels_last
        if channels_last:
            self.decoder.to_channels_last()
        # after the dtype and the layout: fused CPU modules and the weight packs, held, not per call
        self.decoder.fuse(self.conv_format)

    def _attach(
        self,
        backend: str | None,
        mode: str | None,
        chunk_frames: int | None,
        *,
        aot: bool,
        background_build: bool | None = None,
    ) -> None:
        """The backend and the chunk runner; after the subclass's tensors (the backend reads them)."""
        name = resolve_backend(backend, mode, self.device, aot=aot)
        # latent frames per chunk of long inputs; None: every call takes one pass
        self.chunk_frames = usable_chunk_frames(self.decoder, chunk_frames)  # validates it
        self._backend: Backend = make_backend(name, self, mode=mode, background_build=background_build)
        self._runner = ChunkRunner(self, self._backend)

    @property
    def backend(self) -> str:
        """The backend that runs the calls: "eager", "inductor" (torch.compile) or "aot" (artifacts)."""
        return self._backend.name

    @property
    def is_compiled(self) -> bool:
        return self.backend != "eager"

    @property
    def hop_length(self) -> int:
        return self.decoder.hop_length

    @property
    def sample_rate(self) -> int:
        return self.decoder.sample_rate

    def _forward_frames_major(self, x: torch.Tensor) -> torch.Tensor:
        # Checked here, before the compiled graph (where an error would arrive wrapped in a dynamo exception).
        self._check_input(x)
        if x.shape[1] < 1:
            raise ValueError(f"{self.input_name} need at least one frame (T >= 1)")
        return self._runner.decode(x)

    def _stream_frames_major(self, pieces, chunk_frames: int | None) -> Iterator[torch.Tensor]:
        if isinstance(pieces, torch.Tensor):
            self._check_input(pieces)
            pieces = (pieces,)
        elif not isinstance(pieces, Iterable) or isinstance(pieces, (str, bytes)):
            raise TypeError(
                f"{self.input_name} must be a tensor or an iterable of tensors, got {type(pieces).__name__}"
            )
        return self._runner.stream(pieces, chunk_frames)

    def _plan(self, chunk_frames: int) -> ChunkPlan:
        return chunk_plan(self.decoder, chunk_frames)

    def chunk_step(self, position: str, chunk_frames: int | None = None) -> nn.Module:
        """The per-chunk function of :meth:`stream` at ``position`` ("first", "middle" or "last"), eager:
        ``(window [B, W, ...], h, c) -> (audio, h, c)``. For ahead-of-time compilation; the window
        lengths are ``chunk_plan(...).window_frames(position)`` (``last``: any length > ``left``)."""
        if position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
        return self._make_step(self._plan(chunk_frames or self.chunk_frames or DEFAULT_CHUNK_FRAMES), position)

    # --- the ahead-of-time artifacts of the "aot" backend (no-ops for the others)

    def _aot_backend(self) -> AotBackend | None:
        return self._backend if isinstance(self._backend, AotBackend) else None

    @property
    def aot(self) -> artifacts.ArtifactRunner | None:
        """The runner of the one-pass artifact for any B (``backend="aot"``; None otherwise), loaded at first use."""
        aot = self._aot_backend()
        return aot.runner(None, None, single=False) if aot else None

    def load_artifacts(self) -> dict[str, str]:
        """``backend="aot"``: load every artifact this decoder's calls use now (else each loads at its first
        use); returns :meth:`artifact_status`."""
        aot = self._aot_backend()
        if aot:
            aot.load_all(self._plan(self.chunk_frames) if self.chunk_frames else None)
        return self.artifact_status()

    def artifact_status(self) -> dict[str, str]:
        """``backend="aot"``: what each artifact used so far is doing ("loaded ...", "no entry", "rejected: ...")."""

        def name(chunk_frames, position, single):
            what = "one pass" if position is None else f"chunk {position} ({chunk_frames} frames)"
            return what + (", B = 1" if single else "")

        aot = self._aot_backend()
        return {name(*key): runner.status for key, runner in aot.runners.items()} if aot else {}

    @property
    def artifacts_loaded(self) -> bool:
        """``backend="aot"``: whether every artifact used so far (each one after :meth:`load_artifacts`) is
        loaded, so that those calls run compiled."""
        aot = self._aot_backend()
        return bool(aot and aot.runners) and all(r.artifact is not None for r in aot.runners.values())

    def wait_for_artifacts(self, timeout: float | None = None) -> bool:
        """``backend="aot"``: wait for the background build this decoder started (if one runs), at most
        ``timeout`` seconds; returns whether the cache now holds every artifact this decoder uses (later calls
        switch to them); False at a timeout, the build going on. For scripts that want the artifacts in place
        before timing or exiting."""
        aot = self._aot_backend()
        return aot.wait(timeout) if aot else False

    def start_artifact_build(self) -> subprocess.Popen | None:
        """``backend="aot"``: start building, now, every artifact this decoder uses that the cache lacks (those
        its calls missed first), in one detached, low-priority background process, as a miss does unless
        ``background_build=False``; for a decoder made with ``background_build=False`` so that no build
        competes with calls being timed, once they are done. Returns the build process (None: nothing to
        build, one of them failed before, or not ``"aot"``); :meth:`wait_for_artifacts` waits for it."""
        aot = self._aot_backend()
        return aot.start_build() if aot else None


class LatentDecoder(_FrontEndDecoder):
    """Latents [B, T, D] -> audio [B, C, T * hop] (float32), as JASCO's ``generate_audio`` computes it.

    One pass of the fused ``denorm_transpose`` op (scale, shift, transpose and cast to ``dtype``) writes the
    latents channels-last, and the decoder (copied, weights channels-last too) reads them there. Inputs of at
    least ``chunk_frames + right`` frames are decoded chunk by chunk in bounded memory, with the same result as
    one pass (docs/long-audio.md gives the memory measured); :meth:`stream` yields the chunks as they are final.
    The decoder is copied: change it afterwards and build a new LatentDecoder.

    Args:
        decoder: a :class:`SEANetDecoder` (e.g. from ``load_decoder``); it is copied, not modified.
        mean, std: the latent statistics, scalars or one per channel (JASCO: -0.0074, 4.0102).
        backend: ``None`` (the device's default: ``"aot"`` on the CPU, ``"inductor"`` elsewhere or with a
            ``mode``), ``"eager"``, ``"inductor"`` (torch.compile in this process; T is dynamic, a new batch
            size compiles) or ``"aot"`` (ahead-of-time artifacts from the cache, docs/artifact-cache.md: on a
            miss calls run eagerly while one background process builds them; ``1 <= B <= AOT_MAX_BATCH`` and,
            in one pass, ``aot_min_frames(decoder) <= T <= AOT_MAX_FRAMES``; other calls run eagerly).
        mode: a ``torch.compile`` mode (e.g. ``"reduce-overhead"`` for CUDA graphs when every call has the same
            shape); only with the ``"inductor"`` backend.
        channels_last: ``False`` feeds the decoder a contiguous [B, D, T] instead (for comparison).
        dtype: the decoder's compute dtype (e.g. ``torch.bfloat16`` on GPUs); default: the decoder's.
            ``"auto"``: the fastest mode measured on this device and CPU class with a worst-case SNR of at
            least 40 dB (:data:`jasco_fast.modes.AUTO_MODES`), recurrent format included; the choice is
            visible as :attr:`dtype`, :attr:`recurrent_dtype` and :attr:`conv_format`. A reduced precision that this CPU only
            emulates warns once (:class:`jasco_fast.PerformanceWarning`).
        chunk_frames: latent frames per chunk for long inputs (default :data:`DEFAULT_CHUNK_FRAMES`);
            ``None``: every call takes one pass, whatever its length (memory grows with T). Decoders that
            cannot be chunked exactly (``time_group_norm``, ``circular`` padding) always take one pass.
        background_build: ``"aot"`` only: on an artifact cache miss, build the artifacts in a background
            process, announced once per process (default: unless the environment sets
            ``JASCO_FAST_BACKGROUND_BUILD=0``).
        recurrent_dtype: how the LSTM's recurrent matrices are streamed each step: ``None``, the compute
            dtype; ``torch.int8``, 8-bit with a float32 scale per row; ``torch.bfloat16`` with float32
            ``dtype``; ``"auto"``: the automatic mode's format for ``dtype``. The LSTM's state and arithmetic
            stay float32 (see :func:`jasco_fast.ops.lstm_skip`).
        conv_format: ``None``, the compute dtype's arithmetic; ``"int12"`` (float32 on the CPU): the residual
            blocks and transposed convolutions multiply 12-bit weights (per output channel) by 12-bit inputs
            (per time tile) into int32 sums (:func:`jasco_fast.ops.elu_resblock_int12`); ``"auto"``: the
            automatic mode's format for ``dtype``.
    """

    def __init__(
        self,
        decoder: SEANetDecoder,
        mean=JASCO_LATENT_MEAN,
        std=JASCO_LATENT_STD,
        *,
        backend: str | None = None,
        mode: str | None = None,
        channels_last: bool = True,
        dtype: torch.dtype | str | None = None,
        chunk_frames: int | None = DEFAULT_CHUNK_FRAMES,
        background_build: bool | None = None,
        recurrent_dtype: torch.dtype | str | None = None,
        conv_format: str | None = None,
    ):
        super().__init__()
        self._setup(
            decoder, channels_last=channels_last, dtype=dtype, recurrent_dtype=recurrent_dtype, conv_format=conv_format
        )
        dim, device = decoder.config.dimension, next(decoder.parameters()).device
        self.register_buffer("mean", _statistic(mean, "mean", dim).to(device))
        self.register_buffer("std", _statistic(std, "std", dim).to(device))
        self._attach(backend, mode, chunk_frames, aot=True, background_build=background_build)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        x = denormalize_transpose(latents, self.mean, self.std, dtype=self.dtype, channels_last=self.channels_last)
        return self.decoder(x).float()

    def _make_step(self, plan: ChunkPlan, position: str) -> nn.Module:
        return LatentChunkStep(self, plan, position)

    def _check_input(self, latents: torch.Tensor) -> None:
        dim = self.decoder.config.dimension
        if latents.dim() != 3 or latents.shape[2] != dim:  # the decoder's rule
            raise ValueError(f"latents must be [B, T, {dim}], got {list(latents.shape)}")
        # the op's rules, on the latents' device: the runner moves them to the decoder's afterwards
        ops.check_denorm_transpose(
            latents, _stand_in(self.mean, latents.device), _stand_in(self.std, latents.device), self.dtype
        )

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, T, D] -> audio [B, C, T * hop], float32."""
        if not isinstance(latents, torch.Tensor):
            raise TypeError(f"latents must be a tensor, got {type(latents).__name__}")
        return self._forward_frames_major(latents)

    def stream(
        self, latents: torch.Tensor | Iterable[torch.Tensor], *, chunk_frames: int | None = None
    ) -> Iterator[torch.Tensor]:
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
        return self._stream_frames_major(latents, chunk_frames)

    def _recipe_params(self) -> dict:
        return {
            "config": dataclasses.asdict(self.decoder.config),
            "dtype": str(self.dtype).replace("torch.", ""),
            "channels_last": self.channels_last,
            "statistics_shape": [list(self.mean.shape), list(self.std.shape)],
            "recurrent_dtype": None
            if self.recurrent_dtype is None
            else str(self.recurrent_dtype).replace("torch.", ""),
            "conv_format": self.conv_format,
        }

    def aot_recipe(
        self, position: str | None = None, chunk_frames: int | None = None, *, single: bool = False
    ) -> artifacts.Recipe:
        """The recipe of an ahead-of-time artifact of this decoder (architecture, dtype, layout, device):
        one-pass decoding (``position`` None), or the chunk step at ``position`` for chunks of
        ``chunk_frames`` (default: this decoder's); ``single``: specialised to B = 1 (else any B)."""
        params = {**self._recipe_params(), "single": single}
        if position is None:
            return artifacts.Recipe(
                "latent_decoder", "jasco_fast.pipeline:latent_decoder_program", params, device=self.device.type
            )
        if position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
        params.update(
            position=position,
            chunk_frames=self._plan(chunk_frames or self.chunk_frames or DEFAULT_CHUNK_FRAMES).chunk_frames,
        )
        return artifacts.Recipe(
            "latent_chunk_step", "jasco_fast.pipeline:latent_chunk_step_program", params, device=self.device.type
        )

    def aot_recipes(self) -> list[artifacts.Recipe]:
        """Every artifact this decoder's calls use: one-pass, and each chunk position when it chunks; each
        for B = 1 and for any B. (A batch dimension of one, known when compiled, measured 7 % faster at
        B = 1 than the same code for any B; torch.compile specialises on B the same way.)"""
        positions = [None, "first", "last", "middle"] if self.chunk_frames else [None]
        return [self.aot_recipe(p, single=single) for p in positions for single in (True, False)]


# --------------------------------------------------------------------------------------------------
# Codes: RVQ decode (fused op) + the same decoder, chunking and streaming.
# Internally codes travel frames-major, as [B, T, K] views of the caller's [B, K, T], so the streaming
# runner (frames on dim 1) cuts them like latents: codes -> latents is per frame.


class CodeChunkStep(nn.Module):
    """One chunk of :meth:`CodeDecoder.stream` at one position: ``(codes window [B, W, K], h, c) ->
    (audio [B, C, n * hop] float32, h, c)``; the fused RVQ decode followed by :class:`ChunkStep`."""

    def __init__(self, owner: CodeDecoder, plan: ChunkPlan, position: str):
        super().__init__()
        self.step = ChunkStep(owner.decoder, plan, position)
        self.codebooks = owner.codebooks  # shared with the owner, not a copy
        self.dtype, self.channels_last = owner.dtype, owner.channels_last

    def forward(self, window: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        x = codes_to_latents(window.transpose(1, 2), self.codebooks, dtype=self.dtype, channels_last=self.channels_last)
        audio, h, c = self.step(x, h, c)
        return audio.float(), h, c


class CodeDecoder(_FrontEndDecoder):
    """EnCodec codes [B, K, T] -> audio [B, C, T * hop] (float32), as EnCodec's ``decode`` computes it
    (transformers' ``EncodecModel.decode``, MusicGen's and AudioGen's ``generate_audio``).

    One pass of the fused ``codes_to_latents`` op (gather and sum the first K codebooks' rows, cast to
    ``dtype``, write channels-last), then the decoder exactly as :class:`LatentDecoder` runs it: compiled,
    chunked for long inputs, streamable with :meth:`stream` (a tensor or an iterable of [B, K, t] pieces).
    No mean/std: EnCodec's decoder reads the quantizer's output as it is. K may be smaller than the
    quantizer's number of codebooks (lower bandwidths); each K compiles its own graph.

    Args:
        decoder: a :class:`SEANetDecoder`; quantizer: a :class:`Quantizer` whose D is the decoder's (both copied).
        backend: ``None`` (``"inductor"``: no artifact recipe covers codes yet), ``"eager"`` or ``"inductor"``.
        mode, channels_last, dtype, chunk_frames, recurrent_dtype, conv_format: as for :class:`LatentDecoder`.
    :meth:`chunk_step` windows are codes frames-major, [B, W, K] (``codes.transpose(1, 2)``).
    """

    input_name = "codes"

    def __init__(
        self,
        decoder: SEANetDecoder,
        quantizer: Quantizer,
        *,
        backend: str | None = None,
        mode: str | None = None,
        channels_last: bool = True,
        dtype: torch.dtype | str | None = None,
        chunk_frames: int | None = DEFAULT_CHUNK_FRAMES,
        recurrent_dtype: torch.dtype | str | None = None,
        conv_format: str | None = None,
    ):
        super().__init__()
        if not isinstance(quantizer, Quantizer):
            raise TypeError(f"quantizer must be a jasco_fast.Quantizer, got {type(quantizer).__name__}")
        if isinstance(decoder, SEANetDecoder) and quantizer.dimension != decoder.config.dimension:
            raise ValueError(
                f"the quantizer's codebooks have D = {quantizer.dimension}, the decoder reads "
                f"D = {decoder.config.dimension}"
            )
        self._setup(
            decoder, channels_last=channels_last, dtype=dtype, recurrent_dtype=recurrent_dtype, conv_format=conv_format
        )
        # the op sums in float32 (float64 codebooks: float64) and casts once to `dtype`
        device = next(decoder.parameters()).device
        self.register_buffer("codebooks", quantizer.codebooks.detach().clone().to(device))
        self._attach(backend, mode, chunk_frames, aot=False)

    @property
    def device(self) -> torch.device:
        return self.codebooks.device

    @property
    def num_codebooks(self) -> int:
        return self.codebooks.shape[0]

    @property
    def codebook_size(self) -> int:
        return self.codebooks.shape[1]

    def _decode(self, codes_t: torch.Tensor) -> torch.Tensor:
        x = codes_to_latents(
            codes_t.transpose(1, 2), self.codebooks, dtype=self.dtype, channels_last=self.channels_last
        )
        return self.decoder(x).float()

    def _make_step(self, plan: ChunkPlan, position: str) -> nn.Module:
        return CodeChunkStep(self, plan, position)

    @staticmethod
    def _frames_major(codes) -> torch.Tensor:
        """Caller's codes [B, K, T] -> checked int64/int32 [B, T, K] view."""
        codes = as_codes(codes)
        if codes.dim() != 3:
            raise ValueError(f"codes must be [B, K, T], got shape {list(codes.shape)}")
        return codes.transpose(1, 2)

    def _check_input(self, codes_t: torch.Tensor) -> None:
        # called on frames-major [B, T, K] views; the op's own rules on the caller's [B, K, T], on the codes'
        # device (the runner moves them to the decoder's afterwards)
        codes = codes_t.transpose(1, 2) if codes_t.dim() == 3 else codes_t
        ops.check_codes_to_latents(codes, _stand_in(self.codebooks, codes.device), self.dtype)
        # data-dependent, so checked by the kernels rather than the op's rules: here before a compiled graph
        S = self.codebook_size
        bad = (codes_t < 0) | (codes_t >= S)
        if codes_t.numel() and bool(bad.any()):
            b, t, k = (int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"code {int(codes_t[b, t, k])} at [b={b}, k={k}, t={t}] is out of range: codes must "
                f"lie in [0, {S}) (the codebook size)"
            )

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, K, T] (any integer dtype) -> audio [B, C, T * hop], float32."""
        return self._forward_frames_major(self._frames_major(codes))

    def stream(
        self, codes: torch.Tensor | Iterable[torch.Tensor], *, chunk_frames: int | None = None
    ) -> Iterator[torch.Tensor]:
        """As :meth:`LatentDecoder.stream`, for codes: a [B, K, T] tensor or an iterable of [B, K, t] pieces."""
        if isinstance(codes, torch.Tensor):
            return self._stream_frames_major(self._frames_major(codes), chunk_frames)
        if isinstance(codes, Iterable) and not isinstance(codes, (str, bytes)):
            return self._stream_frames_major((self._frames_major(p) for p in codes), chunk_frames)
        raise TypeError(f"codes must be a tensor or an iterable of tensors, got {type(codes).__name__}")


def _program_owner(
    config: dict,
    dtype: str,
    channels_last: bool,
    statistics_shape: list,
    recurrent_dtype: str | None,
    conv_format: str | None,
    chunk_frames: int | None = None,
) -> LatentDecoder:
    # random weights: an artifact takes the real ones at load
    mean_shape, std_shape = statistics_shape
    return LatentDecoder(
        SEANetDecoder(DecoderConfig(**config)),
        torch.zeros(mean_shape),
        torch.ones(std_shape),
        backend="eager",
        channels_last=channels_last,
        dtype=getattr(torch, dtype),
        chunk_frames=chunk_frames,
        recurrent_dtype=None if recurrent_dtype is None else getattr(torch, recurrent_dtype),
        conv_format=conv_format,
    )


def _recurrent_dtype(recurrent_dtype, dtype: torch.dtype) -> torch.dtype | None:
    """The LSTM's recurrent format, None when it is the compute dtype itself."""
    if not (recurrent_dtype is None or isinstance(recurrent_dtype, torch.dtype)) or not recurrent_format_supported(
        recurrent_dtype, dtype
    ):
        raise ValueError(
            f"recurrent_dtype must be None, torch.int8, or torch.bfloat16 with a float32 dtype; got "
            f"{recurrent_dtype!r} with dtype {dtype}"
        )
    return None if recurrent_dtype == dtype else recurrent_dtype


def latent_decoder_program(
    config: dict,
    dtype: str,
    channels_last: bool,
    statistics_shape: list,
    recurrent_dtype: str | None,
    single: bool,
    conv_format: str | None = None,
) -> artifacts.Program:
    """The recipe factory of LatentDecoder's one-pass artifact: ``_decode`` of a LatentDecoder of this
    architecture, dynamic in T, and in B unless ``single`` (B = 1)."""
    from torch.export import Dim

    owner = _program_owner(config, dtype, channels_last, statistics_shape, recurrent_dtype, conv_format)
    min_frames = aot_min_frames(owner.decoder)
    # build() moves it to the device; a dynamic batch needs an example of 2 or more (export specialises 1)
    example = torch.randn(1 if single else 2, max(min_frames + 1, 50), owner.decoder.dimension)
    dims = {1: Dim("frames", min=min_frames, max=AOT_MAX_FRAMES)}
    if not single:
        dims[0] = Dim("batch", min=1, max=AOT_MAX_BATCH)
    return artifacts.Program(
        owner, (example,), (dims,), method="_decode", tolerance=artifacts.VALIDATION_TOLERANCE[owner.dtype]
    )


def latent_chunk_step_program(
    config: dict,
    dtype: str,
    channels_last: bool,
    statistics_shape: list,
    recurrent_dtype: str | None,
    single: bool,
    chunk_frames: int,
    position: str,
    conv_format: str | None = None,
) -> artifacts.Program:
    """The recipe factory of LatentDecoder's chunk-step artifacts: :meth:`LatentDecoder.chunk_step` at
    ``position``, dynamic in B unless ``single`` (B = 1), and in the window's length for ``last``."""
    from torch.export import Dim

    owner = _program_owner(config, dtype, channels_last, statistics_shape, recurrent_dtype, conv_format, chunk_frames)
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
    return artifacts.Program(
        step, (example, h, c), (window, state_dims, state_dims), tolerance=artifacts.VALIDATION_TOLERANCE[owner.dtype]
    )
