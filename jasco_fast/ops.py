"""The ops of jasco_fast (``torch.ops.jasco_fast.*``) and their Python faces, fake kernels and autograd.

The schemas live in ``csrc/registration.cpp``, the kernels in ``csrc/``.

``lstm_skip(seq [B, T, C], weights, num_layers, h0=None, c0=None, state_frames=None) -> (y, h, c)``: the
SEANet LSTM block ``y = lstm(seq) + seq`` (ATen's LSTM, any device), from state ``(h0, c0)``, returning the
state after the first ``state_frames`` frames; what chunked decoding carries from chunk to chunk.
Inference only (no autograd formula).


``denorm_transpose(latents [B, T, D], mean, std, dtype=None, channels_last=False) -> [B, D, T]`` computes
``(latents * std + mean).permute(0, 2, 1)`` (and the cast to ``dtype``) in one pass over memory. The
arithmetic is float32 (float64 when latents or the output are float64), rounded once to the output dtype.
The kernels live in ``csrc/``; this module adds the fake (meta) kernel that lets torch.compile trace
through the op, and the autograd formula.

``codes_to_latents(codes [B, K, T], codebooks [N, S, D], dtype=None, channels_last=False) -> [B, D, T]``:
residual vector quantisation decode (the sum of K codebook rows per frame), cast and laid out for the decoder,
in one pass (EnCodec codes: MusicGen / AudioGen tokens).
"""
from __future__ import annotations

import torch

from jasco_fast import _C  # noqa: F401  (loading the extension registers the op)

__all__ = ["JASCO_LATENT_MEAN", "JASCO_LATENT_STD", "denormalize_transpose", "lstm_skip", "codes_to_latents"]

# JASCO's latent statistics (its checkpoint config: compression_model_latent_mean / _std).
JASCO_LATENT_MEAN = -0.0074
JASCO_LATENT_STD = 4.0102

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check(latents: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, dtype) -> torch.dtype:
    """The op's argument rules (the C++ kernels enforce the same); returns the output dtype."""
    if latents.dim() != 3:
        raise ValueError(f"denormalize_transpose: latents must be 3-D [B, T, D], got {latents.dim()}-D "
                         f"with shape {list(latents.shape)}")
    if latents.dtype not in _FLOATS:
        raise TypeError(f"denormalize_transpose: latents must be float32/float64/float16/bfloat16, got {latents.dtype}")
    D = latents.shape[2]
    if D <= 0:
        raise ValueError(f"denormalize_transpose: latents need D > 0 channels, got shape {list(latents.shape)}")
    for name, s in (("mean", mean), ("std", std)):
        if s.device != latents.device:
            raise ValueError(f"denormalize_transpose: {name} is on {s.device} but latents are on {latents.device}; "
                             f"put them on the same device")
        if s.dtype not in _FLOATS:
            raise TypeError(f"denormalize_transpose: {name} must be a floating-point tensor, got {s.dtype}")
        if s.dim() > 1 or s.numel() not in (1, D):
            raise ValueError(f"denormalize_transpose: {name} must be a scalar (0-d or 1 element) or have "
                             f"D = {D} elements, got shape {list(s.shape)}")
    if dtype is not None and dtype not in _FLOATS:
        raise TypeError(f"denormalize_transpose: dtype must be float32/float64/float16/bfloat16, got {dtype}")
    return dtype or latents.dtype


def _as_statistic(value, latents: torch.Tensor, name: str, dtype) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"denormalize_transpose: {name} must be a float or a tensor, got {type(value).__name__}")
    # the op's compute type: float64 when latents or the output are float64, else float32
    wide = torch.float64 if torch.float64 in (latents.dtype, dtype) else torch.float32
    return torch.tensor(float(value), dtype=wide, device=latents.device)


def denormalize_transpose(latents: torch.Tensor, mean, std, *, dtype: torch.dtype | None = None,
                          channels_last: bool = False) -> torch.Tensor:
    """``(latents * std + mean).permute(0, 2, 1)`` in one pass: [B, T, D] -> [B, D, T].

    Args:
        latents: [B, T, D], float32/float64/float16/bfloat16, any strides.
        mean, std: floats, 0-d tensors, or [D] tensors (per-channel statistics), on latents' device.
        dtype: output dtype (the cast is fused); default: latents' dtype.
        channels_last: ``False`` returns a contiguous [B, D, T]; ``True`` returns [B, D, T] with strides
            (T*D, 1, D), i.e. [B, T, D] in memory, the layout a channels-last decoder reads without a copy.
    """
    if not isinstance(latents, torch.Tensor):
        raise TypeError(f"denormalize_transpose: latents must be a tensor, got {type(latents).__name__}")
    mean = _as_statistic(mean, latents, "mean", dtype)
    std = _as_statistic(std, latents, "std", dtype)
    _check(latents, mean, std, dtype)
    return torch.ops.jasco_fast.denorm_transpose.default(latents, mean, std, dtype, bool(channels_last))


@torch.library.register_fake("jasco_fast::denorm_transpose")
def _(latents, mean, std, dtype=None, channels_last=False):
    out_dtype = _check(latents, mean, std, dtype)
    B, T, D = latents.shape
    if channels_last:
        return latents.new_empty((B, T, D), dtype=out_dtype).transpose(1, 2)
    return latents.new_empty((B, D, T), dtype=out_dtype)


def _setup_context(ctx, inputs, output):
    latents, mean, std, _, _ = inputs
    ctx.save_for_backward(latents if ctx.needs_input_grad[2] else None, std if ctx.needs_input_grad[0] else None)
    ctx.meta = (latents.dtype, mean.shape, mean.dtype, std.shape, std.dtype)


def _reduce_to(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum a [B, T, D] gradient down to a statistic's shape (scalar, [1] or [D])."""
    return grad.sum(dim=(0, 1)).reshape(shape) if shape.numel() > 1 else grad.sum().reshape(shape)


def _backward(ctx, grad):
    latents, std = ctx.saved_tensors
    latent_dtype, mean_shape, mean_dtype, std_shape, std_dtype = ctx.meta
    wide = torch.float64 if torch.float64 in (grad.dtype, latent_dtype) else torch.float32
    g = grad.transpose(1, 2).to(wide)  # back to [B, T, D]
    grad_latents = (g * std.to(wide)).to(latent_dtype) if ctx.needs_input_grad[0] else None
    grad_mean = _reduce_to(g, mean_shape).to(mean_dtype) if ctx.needs_input_grad[1] else None
    grad_std = _reduce_to(g * latents.to(wide), std_shape).to(std_dtype) if ctx.needs_input_grad[2] else None
    return grad_latents, grad_mean, grad_std, None, None


torch.library.register_autograd("jasco_fast::denorm_transpose", _backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------------
# lstm_skip


def lstm_skip(seq: torch.Tensor, weights: list[torch.Tensor], num_layers: int, h0: torch.Tensor | None = None,
              c0: torch.Tensor | None = None, state_frames: int | None = None):
    """``lstm(seq) + seq`` for a batch-first, unidirectional LSTM with biases, from state ``(h0, c0)``.

    Args:
        seq: [B, T, C], any strides (read contiguously: the oneDNN LSTM is ~10x slower on strided views).
        weights: ``w_ih, w_hh, b_ih, b_hh`` of each layer in turn (``nn.LSTM``'s flat weights), C -> C.
        num_layers: the number of stacked layers.
        h0, c0: the initial state, [num_layers, B, C] each (both or neither; default zeros).
        state_frames: return the state after this many frames (default: all T). Frames after it are
            look-ahead: a chunked decode recomputes them in the next chunk from the returned state.
    Returns:
        (y [B, T, C] contiguous, h [num_layers, B, C], c [num_layers, B, C]).

    Opaque to torch.compile (dynamo cannot trace an LSTM; a graph break there would split the decoder
    into small graphs with unfused activations).
    """
    return torch.ops.jasco_fast.lstm_skip.default(seq, weights, num_layers, h0, c0, state_frames)


@torch.library.register_fake("jasco_fast::lstm_skip")
def _(seq, weights, num_layers, h0=None, c0=None, state_frames=None):
    torch._check(seq.dim() == 3, lambda: f"lstm_skip: seq must be 3-D [B, T, C], got shape {list(seq.shape)}")
    torch._check(num_layers >= 1, lambda: f"lstm_skip: num_layers must be >= 1, got {num_layers}")
    torch._check(len(weights) == 4 * num_layers,
                 lambda: f"lstm_skip: expected 4 * num_layers = {4 * num_layers} weights, got {len(weights)}")
    torch._check((h0 is None) == (c0 is None), lambda: "lstm_skip: give both h0 and c0, or neither")
    B, T, C = seq.shape
    for name, s in (("h0", h0), ("c0", c0)):
        if s is not None:
            torch._check(s.dim() == 3 and s.shape[0] == num_layers and s.shape[1] == B and s.shape[2] == C,
                         lambda: f"lstm_skip: {name} must be [num_layers, B, C], got {list(s.shape)}")
            torch._check(s.dtype == seq.dtype, lambda: f"lstm_skip: {name} must have seq's dtype {seq.dtype}")
    if state_frames is not None:
        torch._check(0 <= state_frames, lambda: f"lstm_skip: state_frames must be >= 0, got {state_frames}")
        torch._check(state_frames <= T, lambda: f"lstm_skip: state_frames must be <= T, got {state_frames}")
    out = seq.new_empty((B, T, C))  # contiguous
    return out, seq.new_empty((num_layers, B, C)), seq.new_empty((num_layers, B, C))


# --------------------------------------------------------------------------------------------------
# codes_to_latents

_CODES = (torch.int64, torch.int32)


def _check_codes(codes: torch.Tensor, codebooks: torch.Tensor, dtype) -> torch.dtype:
    """The op's argument rules (the C++ kernels enforce the same); returns the output dtype."""
    if codes.dim() != 3:
        raise ValueError(f"codes_to_latents: codes must be 3-D [B, K, T], got {codes.dim()}-D with shape "
                         f"{list(codes.shape)}")
    if codes.dtype not in _CODES:
        raise TypeError(f"codes_to_latents: codes must be int64 or int32, got {codes.dtype}")
    if codebooks.dim() != 3:
        raise ValueError(f"codes_to_latents: codebooks must be 3-D [num_codebooks, codebook_size, D], got shape "
                         f"{list(codebooks.shape)}")
    if codebooks.dtype not in _FLOATS:
        raise TypeError(f"codes_to_latents: codebooks must be float32/float64/float16/bfloat16, got {codebooks.dtype}")
    if codebooks.device != codes.device:
        raise ValueError(f"codes_to_latents: codebooks are on {codebooks.device} but codes are on {codes.device}; "
                         f"put them on the same device")
    if codebooks.shape[1] <= 0 or codebooks.shape[2] <= 0:
        raise ValueError(f"codes_to_latents: codebooks need codebook_size > 0 and D > 0, got shape "
                         f"{list(codebooks.shape)}")
    K, N = codes.shape[1], codebooks.shape[0]
    if not 1 <= K <= N:
        raise ValueError(f"codes_to_latents: codes have K = {K} codebooks; this quantizer has {N} "
                         f"(K must lie in [1, {N}]; the first K codebooks are used)")
    if dtype is not None and dtype not in _FLOATS:
        raise TypeError(f"codes_to_latents: dtype must be float32/float64/float16/bfloat16, got {dtype}")
    return dtype or codebooks.dtype


def codes_to_latents(codes: torch.Tensor, codebooks: torch.Tensor, *, dtype: torch.dtype | None = None,
                     channels_last: bool = False) -> torch.Tensor:
    """Residual vector quantisation decode in one pass: codes [B, K, T] -> latents [B, D, T].

    ``out[b, :, t] = sum_{k < K} codebooks[k, codes[b, k, t], :]``, summed in codebook order in float32
    (float64 when the codebooks or the output are float64) and rounded once to ``dtype``: what EnCodec's
    quantizer decode computes (transformers' and audiocraft's), then the transpose, the cast and the layout
    the decoder reads.

    Args:
        codes: [B, K, T] int64/int32, any strides; every code in ``[0, codebook_size)`` (else RuntimeError
            naming the first bad one). K may be smaller than the number of codebooks: the first K are used
            (EnCodec's lower bandwidths).
        codebooks: [num_codebooks, codebook_size, D], float32/float64/float16/bfloat16, on codes' device.
        dtype: output dtype (the cast is fused); default: the codebooks' dtype.
        channels_last: ``False`` returns a contiguous [B, D, T]; ``True`` returns [B, D, T] with strides
            (T*D, 1, D), i.e. [B, T, D] in memory, the layout a channels-last decoder reads without a copy.

    On CUDA the range check reads a device flag back after the kernel (one sync); inside CUDA graph capture
    it is skipped and out-of-range codes add nothing. No autograd (codes are integers; codebooks are frozen).
    """
    if not isinstance(codes, torch.Tensor) or not isinstance(codebooks, torch.Tensor):
        raise TypeError(f"codes_to_latents: codes and codebooks must be tensors, got {type(codes).__name__} "
                        f"and {type(codebooks).__name__}")
    _check_codes(codes, codebooks, dtype)
    return torch.ops.jasco_fast.codes_to_latents.default(codes, codebooks, dtype, bool(channels_last))


@torch.library.register_fake("jasco_fast::codes_to_latents")
def _(codes, codebooks, dtype=None, channels_last=False):
    out_dtype = _check_codes(codes, codebooks, dtype)
    B, _, T = codes.shape
    D = codebooks.shape[2]
    if channels_last:
        return codebooks.new_empty((B, T, D), dtype=out_dtype).transpose(1, 2)
    return codebooks.new_empty((B, D, T), dtype=out_dtype)
