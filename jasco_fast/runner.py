"""The chunk runner: drives any backend (:mod:`jasco_fast.backends`) over a whole input or a stream of pieces,
with :mod:`jasco_fast.streaming`'s planner. The one place that decides between one pass and chunks, moves
inputs to the device, handles empty batches, defers a background build to the end of a call, and turns an
allocation failure into an actionable error.

Inputs travel frames-major, [B, T, ...] (frames on dim 1: latents [B, T, D], codes as [B, T, K] views), so
the planner cuts latents and codes alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

from jasco_fast.backends import Backend
from jasco_fast.errors import decoding_out_of_memory, is_out_of_memory
from jasco_fast.overlap import to_device
from jasco_fast.streaming import ChunkPlan, chunk_plan, run_chunks, why_not_chunkable

__all__ = ["ChunkRunner", "DEFAULT_CHUNK_FRAMES", "usable_chunk_frames"]

# Latent frames per chunk when decoding long inputs (50 frames per second for JASCO): chosen by
# benchmarks/bench_long_audio.py (throughput against memory).
DEFAULT_CHUNK_FRAMES = 256


def usable_chunk_frames(decoder, chunk_frames: int | None) -> int | None:
    """``chunk_frames`` checked against ``decoder`` (ValueError if too short); None when the decoder takes one
    pass whatever the length (``chunk_frames`` None, or a decoder that cannot be chunked exactly)."""
    if chunk_frames is None or why_not_chunkable(decoder) is not None:
        return None
    return chunk_plan(decoder, chunk_frames).chunk_frames


def _state_shape(decoder, batch: int) -> tuple[int, ...]:
    """The LSTM state a chunk hands on, [num_layers, B, H]; (0,) for a decoder without an LSTM."""
    lstm = next((m for m in decoder.layers if hasattr(m, "flat_weights")), None)
    return (lstm.num_layers, batch, lstm.weight_hh_l0.shape[1]) if lstm is not None else (0,)


class ChunkRunner:
    """Runs ``backend`` for ``owner`` (a decoder module with ``decoder``, ``device``, ``dtype`` and
    ``_check_input(piece)``): inputs of at least ``chunk_frames + right`` frames chunk by chunk in bounded
    memory, shorter ones (and every input when the owner's ``chunk_frames`` is None) in one pass."""

    def __init__(self, owner: nn.Module, backend: Backend):
        self.owner, self.backend = owner, backend

    def plan(self, chunk_frames: int) -> ChunkPlan:
        return chunk_plan(self.owner.decoder, chunk_frames)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """A whole input [B, T, ...] (checked, T >= 1) -> float32 audio [B, C, T * hop]."""
        try:
            with self.backend.deferred():  # a background build starts after this call, not during it
                T = x.shape[1]
                if self.owner.chunk_frames is None or T < self.plan(self.owner.chunk_frames).min_chunked_frames:
                    return self._whole(x)
                # chunk by chunk into the output, so only one window's activations are alive at a time
                out = torch.empty(
                    x.shape[0],
                    self.owner.decoder.channels,
                    T * self.owner.hop_length,
                    dtype=torch.float32,
                    device=self.owner.device,
                )
                at = 0
                for piece in self._chunks(self._on_device((x,)), self.plan(self.owner.chunk_frames)):
                    out[..., at : at + piece.shape[-1]] = piece
                    at += piece.shape[-1]
                return out
        except RuntimeError as exc:  # torch.OutOfMemoryError is one too
            if not is_out_of_memory(exc):
                raise
            raise decoding_out_of_memory(
                exc, x.shape[0], x.shape[1], self.owner.decoder.config.frame_rate, self.owner.device, self.owner.dtype
            ) from exc

    def stream(self, pieces: Iterable[torch.Tensor], chunk_frames: int | None = None) -> Iterator[torch.Tensor]:
        """Pieces [B, t, ...] (each checked here) -> float32 audio pieces, each as soon as it is final."""
        if chunk_frames is None:
            chunk_frames = self.owner.chunk_frames or DEFAULT_CHUNK_FRAMES
        pieces = self._on_device(self._checked(pieces))
        if why_not_chunkable(self.owner.decoder) is not None:
            return self._one_piece(pieces)
        return self._stream(pieces, self.plan(chunk_frames))

    def _checked(self, pieces: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        for piece in pieces:
            if not isinstance(piece, torch.Tensor):
                raise TypeError(f"each chunk of {self.owner.input_name} must be a tensor, got {type(piece).__name__}")
            self.owner._check_input(piece)
            yield piece

    def _on_device(self, pieces: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        for piece in pieces:
            yield to_device(piece, self.owner.device)  # through pinned memory, non-blocking, to a GPU

    def _whole(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 0:
            return x.new_zeros(0, self.owner.decoder.channels, x.shape[1] * self.owner.hop_length, dtype=torch.float32)
        x = to_device(x, self.owner.device)
        with torch.inference_mode():
            return self.backend.whole(x)

    def _one_piece(self, pieces: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        parts = list(pieces)
        if not parts or sum(p.shape[1] for p in parts) == 0:
            raise ValueError(f"{self.owner.input_name} need at least one frame (T >= 1)")
        with self.backend.deferred():
            yield self._whole(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])

    def _stream(self, pieces: Iterator[torch.Tensor], plan: ChunkPlan) -> Iterator[torch.Tensor]:
        with self.backend.deferred():  # a background build starts once the stream ends
            yield from self._chunks(pieces, plan)

    def _chunks(self, pieces: Iterator[torch.Tensor], plan: ChunkPlan) -> Iterator[torch.Tensor]:
        owner = self.owner

        def initial_state(batch: int):
            zeros = torch.zeros(_state_shape(owner.decoder, batch), dtype=owner.dtype, device=owner.device)
            return zeros, zeros.clone()

        def step(position: str, window: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
            if window.shape[0] == 0:
                committed = plan.chunk_frames if position != "last" else window.shape[1] - plan.left
                return (
                    window.new_zeros(0, owner.decoder.channels, committed * owner.hop_length, dtype=torch.float32),
                    h,
                    c,
                )
            window = window.contiguous()  # the same strides for every input length: no recompilation
            with torch.inference_mode():
                return self.backend.step(plan, position, window, h, c)

        return run_chunks(pieces, plan, step, self._whole, initial_state)
