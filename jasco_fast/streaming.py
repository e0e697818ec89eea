"""Exact chunked decoding: the chunk planner and the stateful runner, over any SEANet :class:`SEANetDecoder`.

Every layer of the decoder is a finite-window convolution except the LSTM, which is causal. So the
decoder splits into three stages: the layers before the LSTM (``pre``, the first convolution), the LSTM,
and the layers after it (``post``: upsampling stages and the last convolution). A chunk that commits
latent frames ``[s, e)`` (audio samples ``[s * hop, e * hop)``) needs

* the LSTM's outputs for frames ``[s - post.left, e + post.right)``, so the LSTM runs over those frames
  from its state at frame ``s - post.left``;
* the LSTM's inputs for the same frames, so ``pre`` runs over latent frames
  ``[s - left, e + right)`` with ``left = pre.left + post.left``, ``right = pre.right + post.right``.

Each stage pads its window as usual and the runner crops what the padding touched, except at the true
start and end of the sequence, where the padding is the real one. The LSTM state handed to the next
chunk is the state at frame ``e - post.left``, where the next chunk's LSTM starts: the chunk's
look-ahead frames after it are recomputed by the next chunk from that state. The contexts come from the
network (:meth:`SEANetDecoder.receptive_field` and friends), never from constants.

Three positions, each a fixed computation (static crops, so a compiled chunk function never recompiles
per chunk): ``first`` (window ``[0, C + right)``), ``middle`` (window ``C + left + right`` frames), and
``last`` (window ``[s - left, T)``, of varying length). A sequence shorter than ``C + right`` frames is
decoded in one pass.

Not chunkable (decoded in one pass instead): ``time_group_norm`` (GroupNorm over the whole sequence)
and ``circular`` padding (the first samples depend on the last frames, through the LSTM state too).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from jasco_fast.decoder import LSTM, DecoderLayers, SEANetDecoder, receptive_field

__all__ = ["POSITIONS", "ChunkPlan", "ChunkStep", "chunk_plan", "why_not_chunkable", "run_chunks"]

POSITIONS = ("first", "middle", "last")


def _split(decoder: SEANetDecoder) -> tuple[list[nn.Module], LSTM | None, list[nn.Module]]:
    layers = list(decoder.layers)
    where = [i for i, layer in enumerate(layers) if isinstance(layer, LSTM)]
    if len(where) > 1:
        raise ValueError("chunked decoding supports at most one LSTM")
    if not where:
        return layers, None, []
    i = where[0]
    return layers[:i], layers[i], layers[i + 1 :]


def why_not_chunkable(decoder: SEANetDecoder) -> str | None:
    """Why ``decoder`` cannot be decoded chunk by chunk exactly, or None when it can."""
    if decoder.config.pad_mode == "circular":
        return "circular padding makes the first samples depend on the last frames"
    pre, lstm, post = _split(decoder)
    pre_ctx, post_ctx = receptive_field(pre), receptive_field(post)
    if not (pre_ctx.bounded and post_ctx.bounded):
        return "a layer (time_group_norm) depends on the whole sequence"
    if lstm is not None and pre_ctx.upsample != 1:
        return "the layers before the LSTM upsample"
    return None


@dataclass(frozen=True)
class ChunkPlan:
    """How a decoder is cut into chunks of ``chunk_frames`` latent frames (see the module docstring).

    ``pre_*``: context of the layers before the LSTM, in latent frames; ``post_*``: context of the layers
    after it, in LSTM frames (the same rate). Without an LSTM every layer is ``pre`` and ``post_*`` is 0.
    """

    chunk_frames: int
    pre_left: int
    pre_right: int
    post_left: int
    post_right: int
    pre_upsample: int
    hop: int
    has_state: bool

    @property
    def left(self) -> int:
        """Latent frames of context a chunk reads before its first committed frame."""
        return self.pre_left + self.post_left

    @property
    def right(self) -> int:
        """Latent frames of look-ahead a chunk reads after its last committed frame."""
        return self.pre_right + self.post_right

    @property
    def min_chunked_frames(self) -> int:
        """Shorter sequences are decoded in one pass (a single chunk would cover them anyway)."""
        return self.chunk_frames + self.right

    def window_frames(self, position: str) -> int | None:
        """The window length of a position (None for ``last``, whose length varies)."""
        return {
            "first": self.chunk_frames + self.right,
            "middle": self.chunk_frames + self.left + self.right,
            "last": None,
        }[position]

    def crops(self, position: str) -> tuple[int, int, int, int, int]:
        """(pre_left, pre_right, post_left, post_right, state_frames) of a position: frames cropped after
        each stage (what padding at a window edge that is not the sequence's edge touched) and the LSTM
        frames after which the state is handed on."""
        C = self.chunk_frames
        if position == "first":
            return 0, self.pre_right, 0, self.post_right, C - self.post_left
        if position == "middle":
            return self.pre_left, self.pre_right, self.post_left, self.post_right, C
        if position == "last":
            return self.pre_left, 0, self.post_left, 0, 0
        raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")


def chunk_plan(decoder: SEANetDecoder, chunk_frames: int) -> ChunkPlan:
    """The :class:`ChunkPlan` of ``decoder`` for chunks of ``chunk_frames`` latent frames.

    Raises ValueError when the decoder is not chunkable or the chunk is shorter than the left context.
    """
    if not isinstance(decoder, SEANetDecoder):
        raise TypeError(f"decoder must be a jasco_fast.SEANetDecoder, got {type(decoder).__name__}")
    if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 1:
        raise ValueError(f"chunk_frames must be a positive integer, got {chunk_frames!r}")
    reason = why_not_chunkable(decoder)
    if reason is not None:
        raise ValueError(f"this decoder cannot be decoded chunk by chunk: {reason}")
    pre, lstm, post = _split(decoder)
    pre_ctx, post_ctx = receptive_field(pre), receptive_field(post)
    plan = ChunkPlan(
        chunk_frames,
        pre_ctx.left,
        pre_ctx.right,
        post_ctx.left,
        post_ctx.right,
        pre_ctx.upsample,
        decoder.hop_length,
        lstm is not None,
    )
    if chunk_frames < max(plan.left, 1):
        raise ValueError(
            f"chunk_frames must be at least {plan.left} (the decoder's left context in frames), got {chunk_frames}"
        )
    return plan


class ChunkStep(nn.Module):
    """The work of one chunk at one position: ``(x, h, c) -> (audio, h, c)``, tensors only.

    ``x``: the decoder's input window [B, D, W] (any strides; channels-last read without a copy);
    ``h``, ``c``: the LSTM state at the window's first LSTM frame, [num_layers, B, H] (zeros for the
    first chunk; empty tensors for decoders without an LSTM, returned as given). Returns the committed
    audio [B, C, n * hop] in the decoder's dtype and the state to hand to the next chunk. The position's
    crops are static attributes, so each position is one fixed graph under torch.compile / torch.export.
    The decoder is shared, not copied.
    """

    def __init__(self, decoder: SEANetDecoder, plan: ChunkPlan, position: str):
        super().__init__()
        pre, lstm, post = _split(decoder)
        self.pre = DecoderLayers(*pre)
        self.lstm = lstm
        self.post = DecoderLayers(*post)
        self.position = position
        self.pre_left, self.pre_right, self.post_left, self.post_right, self.state_frames = plan.crops(position)
        self.pre_upsample = plan.pre_upsample
        self.post_upsample = plan.hop // plan.pre_upsample

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        y = self.pre(x.unsqueeze(2))
        u = self.pre_upsample
        y = y[..., self.pre_left * u : y.shape[-1] - self.pre_right * u]
        if self.lstm is not None:
            y, h, c = self.lstm.forward_with_state(y, h, c, self.state_frames)
        y = self.post(y)
        u = self.post_upsample
        y = y[..., self.post_left * u : y.shape[-1] - self.post_right * u]
        return y.squeeze(2).contiguous(), h, c


def _kind(piece) -> tuple:
    """What every piece of one sequence must share: batch size, trailing dims, dtype, device."""
    if not isinstance(piece, torch.Tensor):
        raise TypeError(f"each chunk of latents must be a tensor, got {type(piece).__name__}")
    if piece.dim() < 2:
        raise ValueError(f"each chunk of latents must be [B, t, ...], got shape {list(piece.shape)}")
    return piece.shape[0], tuple(piece.shape[2:]), piece.dtype, piece.device


def run_chunks(
    pieces: Iterable[torch.Tensor],
    plan: ChunkPlan,
    step: Callable[[str, torch.Tensor, torch.Tensor, torch.Tensor], tuple],
    whole: Callable[[torch.Tensor], torch.Tensor],
    initial_state: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
) -> Iterator[torch.Tensor]:
    """Decode a sequence arriving as pieces [B, t, ...] (frames on dim 1, ragged t) chunk by chunk.

    ``step(position, window, h, c) -> (audio, h, c)`` decodes one window (frames on dim 1);
    ``whole(frames) -> audio`` decodes a sequence too short to chunk; ``initial_state(B) -> (h, c)``
    gives the first chunk's state. Yields each chunk's audio as soon as its window has arrived. Holds
    at most ``left + chunk_frames + right`` frames of input plus the newest piece.
    """
    C, L, R = plan.chunk_frames, plan.left, plan.right
    buffer: torch.Tensor | None = None  # input frames [start, total)
    start = total = 0
    committed = 0  # the next chunk commits frames [committed, committed + C)
    state = None
    kind = None
    for piece in pieces:
        kind = kind or _kind(piece)
        if _kind(piece) != kind:
            raise ValueError(
                f"chunks of latents must agree in B, trailing dims, dtype and device: got "
                f"{list(piece.shape)} {piece.dtype} {piece.device} after {kind}"
            )
        if piece.shape[1] == 0:
            continue
        buffer = piece if buffer is None else torch.cat([buffer, piece], dim=1)
        total += piece.shape[1]
        while True:
            if committed == 0 and total >= C + R:
                state = initial_state(buffer.shape[0])
                audio, *state = step("first", buffer[:, : C + R], *state)
            elif committed > 0 and total >= committed + C + R:
                lo = committed - L - start
                audio, *state = step("middle", buffer[:, lo : lo + L + C + R], *state)
            else:
                break
            committed += C
            yield audio
            buffer, start = buffer[:, committed - L - start :], committed - L  # drop what no chunk needs
    if total == 0:
        raise ValueError("latents need at least one frame (T >= 1)")
    if committed == 0:
        yield whole(buffer)
    elif committed < total:
        audio, *_ = step("last", buffer[:, committed - L - start :], *state)
        yield audio
