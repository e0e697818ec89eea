"""LatentDecoder: JASCO latents [B, T, D] -> audio [B, C, T * hop], the fast path end to end."""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from jasco_fast.decoder import SEANetDecoder
from jasco_fast.errors import decoding_out_of_memory, is_out_of_memory
from jasco_fast.ops import JASCO_LATENT_MEAN, JASCO_LATENT_STD, denormalize_transpose
from jasco_fast.overlap import to_device

__all__ = ["LatentDecoder", "DTYPES"]


# The compute dtypes LatentDecoder is tested with, by the names the CLI and the benchmarks take.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _compile_options(mode: str | None) -> dict:
    """Inductor options for ``mode`` with freezing kept on: torch.compile takes ``mode`` or ``options``, not
    both, so the mode's own options (``torch._inductor.list_mode_options``) are merged with freezing here."""
    from torch._inductor import list_mode_options

    try:
        options = dict(list_mode_options(mode)) if mode else {}
    except RuntimeError as exc:  # an unknown mode
        raise ValueError(f"compile_mode: {exc}") from None
    return {**options, "freezing": True}


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


class LatentDecoder(nn.Module):
    """Latents [B, T, D] -> audio [B, C, T * hop] (float32), as JASCO's ``generate_audio`` computes it.

    One pass of the fused ``denorm_transpose`` op (scale, shift, transpose and cast to ``dtype``) writes
    the latents channels-last, and the decoder reads them there, with its weights channels-last too,
    compiled with ``torch.compile`` (weights frozen into the graph, so oneDNN/cuDNN get prepacked
    weights; change the decoder afterwards and build a new LatentDecoder). T is marked dynamic: new
    lengths reuse the compiled graph instead of recompiling.

    Args:
        decoder: a :class:`SEANetDecoder` (e.g. from ``load_decoder``); it is copied, not modified.
        mean, std: the latent statistics, scalars or one per channel (JASCO: -0.0074, 4.0102).
        compile: ``False`` runs the same path eagerly.
        channels_last: ``False`` feeds the decoder a contiguous [B, D, T] instead (for comparison).
        dtype: the decoder's compute dtype (e.g. ``torch.bfloat16`` on GPUs); default: the decoder's.
        compile_mode: a ``torch.compile`` mode (e.g. ``"reduce-overhead"`` for CUDA graphs when every call
            has the same shape); its options are applied with freezing still on.
    """

    def __init__(self, decoder: SEANetDecoder, mean=JASCO_LATENT_MEAN, std=JASCO_LATENT_STD, *, compile: bool = True,
                 channels_last: bool = True, dtype: torch.dtype | None = None, compile_mode: str | None = None):
        super().__init__()
        if not isinstance(decoder, SEANetDecoder):
            raise TypeError(f"decoder must be a jasco_fast.SEANetDecoder, got {type(decoder).__name__}")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        param = next(decoder.parameters())
        self.dtype = dtype or param.dtype
        self.decoder = copy.deepcopy(decoder).to(dtype=self.dtype).eval().requires_grad_(False)
        self.channels_last = channels_last
        if channels_last:
            self.decoder.to_channels_last()
        dim = decoder.config.dimension
        self.register_buffer("mean", _statistic(mean, "mean", dim).to(param.device))
        self.register_buffer("std", _statistic(std, "std", dim).to(param.device))
        self.is_compiled = bool(compile)
        self._run = torch.compile(self._decode, dynamic=False, options=_compile_options(compile_mode)) \
            if compile else self._decode

    @property
    def compiled(self) -> bool:
        """Deprecated (removed in 0.3): :attr:`is_compiled`."""
        warnings.warn("LatentDecoder.compiled is deprecated and will be removed in jasco_fast 0.3; use "
                      "LatentDecoder.is_compiled", DeprecationWarning, stacklevel=2)
        return self.is_compiled

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

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        # Checked here, before the compiled graph (where an error would arrive wrapped in a dynamo exception):
        # the decoder's D, at least one frame (the graph is traced with T dynamic), a floating-point input.
        # The op and the decoder hold their own rules (csrc/denorm_transpose.h, SEANetDecoder.forward).
        if not isinstance(latents, torch.Tensor):
            raise TypeError(f"latents must be a tensor, got {type(latents).__name__}")
        dim = self.decoder.config.dimension
        if latents.dim() != 3 or latents.shape[2] != dim:
            raise ValueError(f"latents must be [B, T, {dim}], got {list(latents.shape)}")
        if not latents.is_floating_point():
            raise TypeError(f"latents must be floating point, got {latents.dtype}")
        if latents.shape[1] < 1:
            raise ValueError("latents need at least one frame (T >= 1)")
        if latents.shape[0] == 0:
            return latents.new_zeros(0, self.decoder.channels, latents.shape[1] * self.hop_length, dtype=torch.float32)
        latents = to_device(latents, self.device)  # through pinned memory, non-blocking, to a GPU
        if self.is_compiled and latents.shape[1] > 1:
            torch._dynamo.mark_dynamic(latents, 1)  # one graph for every length
        with torch.inference_mode():
            try:
                return self._run(latents)
            except RuntimeError as exc:  # torch.OutOfMemoryError is one too
                if not is_out_of_memory(exc):
                    raise
                raise decoding_out_of_memory(exc, latents.shape[0], latents.shape[1], self.decoder.config.frame_rate,
                                             self.device, self.dtype) from exc
