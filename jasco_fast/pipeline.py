"""LatentDecoder: JASCO latents [B, T, D] -> audio [B, C, T * hop], the fast path end to end."""
from __future__ import annotations

import copy
import dataclasses
import os

import torch
from torch import nn

from jasco_fast import artifacts
from jasco_fast.decoder import Conv, ConvTranspose, Decoder, DecoderConfig
from jasco_fast.ops import JASCO_LATENT_MEAN, JASCO_LATENT_STD, denormalize_transpose

__all__ = ["LatentDecoder", "AOT_MAX_BATCH", "AOT_MAX_FRAMES", "aot_min_frames"]

COMPILE_CHOICES = (True, False, "aot", "torch.compile")
# Bounds of the ahead-of-time artifact's dynamic dims; calls outside them run eagerly.
AOT_MAX_BATCH = 1024
AOT_MAX_FRAMES = 2 ** 17  # 43 minutes at 50 frames/s


def _statistic(value, name: str, dim: int) -> torch.Tensor:
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
    the latents channels-last, and the decoder reads them there, with its weights channels-last too.

    ``compile=True`` (or ``"aot"``): an ahead-of-time compiled artifact of this decode (AOTInductor, see
    :mod:`jasco_fast.artifacts`) from the on-disk cache, shared by every checkpoint of the architecture
    and serving every batch size and length within ``1 <= B <= AOT_MAX_BATCH``,
    ``aot_min_frames(decoder) <= T <= AOT_MAX_FRAMES`` without recompiling. With no artifact cached yet,
    calls run eagerly (nothing blocks on a compile) while a background process builds it, and switch to
    it once built (``background_build=False``, or ``JASCO_FAST_BACKGROUND_BUILD=0``, leaves building to
    ``jasco-fast compile``). ``compile="torch.compile"`` (also implied by ``compile_mode``): the
    ``torch.compile`` path (weights frozen into the graph; change the decoder afterwards and build a new
    LatentDecoder; T dynamic, a new batch size recompiles).

    Args:
        decoder: a :class:`Decoder` (e.g. from ``load_decoder``); it is copied, not modified.
        mean, std: the latent statistics, scalars or one per channel (JASCO: -0.0074, 4.0102).
        compile: ``True``/``"aot"``, ``"torch.compile"``, or ``False`` (the same path eagerly).
        channels_last: ``False`` feeds the decoder a contiguous [B, D, T] instead (for comparison).
        dtype: the decoder's compute dtype (e.g. ``torch.bfloat16`` on GPUs); default: the decoder's.
        compile_mode: passed to ``torch.compile`` (e.g. ``"reduce-overhead"`` for CUDA graphs when every
            call has the same shape).
        background_build: on an artifact cache miss, build it in a background process (default: unless
            the environment sets ``JASCO_FAST_BACKGROUND_BUILD=0``).
    """

    def __init__(self, decoder: Decoder, mean=JASCO_LATENT_MEAN, std=JASCO_LATENT_STD, *,
                 compile: bool | str = True, channels_last: bool = True, dtype: torch.dtype | None = None,
                 compile_mode: str | None = None, background_build: bool | None = None):
        super().__init__()
        if not isinstance(decoder, Decoder):
            raise TypeError(f"decoder must be a jasco_fast.Decoder, got {type(decoder).__name__}")
        if not any(compile is c for c in COMPILE_CHOICES[:2]) and compile not in COMPILE_CHOICES[2:]:
            raise ValueError(f"compile must be one of {COMPILE_CHOICES}, got {compile!r}")
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
        self.backend = "eager" if compile is False else "torch.compile" if compile == "torch.compile" or compile_mode \
            else "aot"
        self.compiled = self.backend == "torch.compile"
        self._run = torch.compile(self._decode, dynamic=False, mode=compile_mode,
                                  options=None if compile_mode else {"freezing": True}) if self.compiled else self._decode
        # --- ahead-of-time artifact of `_decode` (jasco_fast.artifacts): the one hook into that machinery
        self.aot: artifacts.ArtifactRunner | None = None
        if self.backend == "aot":
            if background_build is None:
                background_build = os.environ.get("JASCO_FAST_BACKGROUND_BUILD", "1") != "0"
            self._aot_min_frames = aot_min_frames(self.decoder)
            probe = torch.randn(2, self._aot_min_frames + 1, dim, generator=torch.Generator().manual_seed(0))
            self.aot = artifacts.ArtifactRunner(
                self.aot_recipe(), self, self._decode, (probe.to(param.device),),
                artifacts.VALIDATION_TOLERANCE.get(self.dtype, 3e-2), background=background_build)

    def aot_recipe(self) -> artifacts.Recipe:
        """The recipe of this decoder's ahead-of-time artifact: architecture, dtype, layout, device."""
        return artifacts.Recipe("latent_decoder", "jasco_fast.pipeline:latent_decoder_program", {
            "config": dataclasses.asdict(self.decoder.config), "dtype": str(self.dtype).replace("torch.", ""),
            "channels_last": self.channels_last, "statistics_shape": [list(self.mean.shape), list(self.std.shape)],
        }, device=self.device.type)

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
        latents = latents.to(self.device)
        if self.compiled and latents.shape[1] > 1:
            torch._dynamo.mark_dynamic(latents, 1)  # one graph for every length
        with torch.inference_mode():
            if self.aot is not None and self._aot_accepts(latents):
                # the artifact was traced from contiguous float32 latents (the op computes in float32 for
                # float32/16 and bfloat16 latents alike, so the cast changes nothing)
                return self.aot(latents.to(torch.float32).contiguous())
            return self._run(latents)

    def _aot_accepts(self, latents: torch.Tensor) -> bool:
        B, T, _ = latents.shape
        return (latents.dtype != torch.float64 and B <= AOT_MAX_BATCH
                and self._aot_min_frames <= T <= AOT_MAX_FRAMES)


def aot_min_frames(decoder: Decoder) -> int:
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


def latent_decoder_program(config: dict, dtype: str, channels_last: bool, statistics_shape: list) -> artifacts.Program:
    """The recipe factory of LatentDecoder's artifact: ``_decode`` of a LatentDecoder of this architecture
    (random weights: the artifact takes the real ones at load), dynamic in B and T."""
    from torch.export import Dim

    decoder = Decoder(DecoderConfig(**config))
    mean_shape, std_shape = statistics_shape
    owner = LatentDecoder(decoder, torch.zeros(mean_shape), torch.ones(std_shape), compile=False,
                          channels_last=channels_last, dtype=getattr(torch, dtype))
    min_frames = aot_min_frames(owner.decoder)
    example = torch.randn(2, max(min_frames + 1, 50), decoder.dimension)  # build() moves both to the device
    dims = {0: Dim("batch", min=1, max=AOT_MAX_BATCH), 1: Dim("frames", min=min_frames, max=AOT_MAX_FRAMES)}
    return artifacts.Program(owner, (example,), (dims,), method="_decode")
