"""The pure-PyTorch reference every fast path of jasco_fast is tested against: JASCO's own arithmetic."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from jasco_fast.ops import JASCO_LATENT_MEAN, JASCO_LATENT_STD

__all__ = ["denormalize_transpose", "decode", "ReferenceDecoder", "codes_to_latents"]


def denormalize_transpose(
    latents: torch.Tensor, mean, std, *, dtype: torch.dtype | None = None, channels_last: bool = False
) -> torch.Tensor:
    """`(latents * std + mean).permute(0, 2, 1)` as JASCO writes it, then the cast and the layout of
    `jasco_fast.denormalize_transpose` (same signature): [B, T, D] -> [B, D, T]."""
    out = (latents * std + mean).permute(0, 2, 1).to(dtype or latents.dtype)
    if channels_last:
        return out.transpose(1, 2).contiguous().transpose(1, 2)
    return out.contiguous()


# ---------------------------------------------------------------------------------------------------
# The decoder as JASCO runs it upstream: the oracle for jasco_fast.SEANetDecoder / LatentDecoder.


def _upstream_pad(x: torch.Tensor, left: int, right: int, mode: str) -> torch.Tensor:
    # upstream's pad1d: reflect on an input no longer than the pad zero-extends it first
    if mode != "reflect":
        return F.pad(x, (left, right), mode)
    extra = max(0, max(left, right) - x.shape[-1] + 1)
    padded = F.pad(F.pad(x, (0, extra)), (left, right), mode)
    return padded[..., : padded.shape[-1] - extra]


class _EagerConv(nn.Module):
    def __init__(self, conv, causal: bool, weight_norm: bool):
        super().__init__()
        out_ch, in_ch, _, k = conv.weight.shape
        self.conv = nn.Conv1d(in_ch, out_ch, k, dilation=conv.dilation)
        with torch.no_grad():
            self.conv.weight.copy_(conv.weight.squeeze(2))
            self.conv.bias.copy_(conv.bias)
        if weight_norm:  # recomputed on every call, as upstream runs it
            nn.utils.parametrizations.weight_norm(self.conv)
        self.norm = copy.deepcopy(conv.norm) if conv.norm is not None else nn.Identity()
        self.causal, self.pad_mode = causal, conv.pad_mode

    def forward(self, x):
        k = (self.conv.kernel_size[0] - 1) * self.conv.dilation[0] + 1
        stride = self.conv.stride[0]
        total = k - stride
        frames = math.ceil((x.shape[-1] - k + total) / stride + 1) - 1
        extra = frames * stride + k - total - x.shape[-1]
        left, right = (total, extra) if self.causal else (total - total // 2, total // 2 + extra)
        return self.norm(self.conv(_upstream_pad(x, left, right, self.pad_mode)))


class _EagerConvTranspose(nn.Module):
    def __init__(self, convtr, causal: bool, trim_right_ratio: float, weight_norm: bool):
        super().__init__()
        in_ch, out_ch, _, k = convtr.weight.shape
        self.convtr = nn.ConvTranspose1d(in_ch, out_ch, k, convtr.stride)
        with torch.no_grad():
            self.convtr.weight.copy_(convtr.weight.squeeze(2))
            self.convtr.bias.copy_(convtr.bias)
        if weight_norm:
            nn.utils.parametrizations.weight_norm(self.convtr)
        self.norm = copy.deepcopy(convtr.norm) if convtr.norm is not None else nn.Identity()
        self.causal, self.trim_right_ratio = causal, trim_right_ratio

    def forward(self, x):
        total = self.convtr.kernel_size[0] - self.convtr.stride[0]
        right = math.ceil(total * self.trim_right_ratio) if self.causal else total // 2
        y = self.norm(self.convtr(x))
        return y[..., total - right : y.shape[-1] - right]


class _EagerLSTM(nn.Module):
    def __init__(self, lstm):
        super().__init__()
        dim = lstm.weight_ih_l0.shape[1]
        self.lstm = nn.LSTM(dim, dim, lstm.num_layers)
        self.lstm.load_state_dict({k: v.detach() for k, v in lstm.named_parameters()})

    def forward(self, x):
        seq = x.permute(2, 0, 1)  # [T, B, C]
        return (self.lstm(seq)[0] + seq).permute(1, 2, 0)


class _EagerResBlock(nn.Module):
    def __init__(self, block, make_conv):
        super().__init__()
        self.block = nn.Sequential(
            copy.deepcopy(block.act1), make_conv(block.conv1), copy.deepcopy(block.act2), make_conv(block.conv2)
        )
        self.shortcut = nn.Identity() if isinstance(block.shortcut, nn.Identity) else make_conv(block.shortcut)

    def forward(self, x):
        return self.shortcut(x) + self.block(x)


class ReferenceDecoder(nn.Module):
    """The oracle for :class:`jasco_fast.SEANetDecoder`: the decoder as upstream runs it ([B, C, T] layout,
    conv1d, weight norm recomputed every call). Slow on purpose; tests and benchmarks compare with it.

    Built from a :class:`jasco_fast.SEANetDecoder` (its weights re-parametrised as g * v / ||v||), on the
    decoder's device and dtype.
    """

    def __init__(self, decoder):
        super().__init__()
        from jasco_fast.decoder import LSTM, Conv, ConvTranspose, FusedEluConv, FusedEluConvTranspose, ResBlock

        cfg = decoder.config
        # weight norm changes the cost, not the values (g = ||w||, v = w); upstream recomputes it per call
        weight_norm = cfg.norm == "weight_norm"
        make_conv = lambda c: _EagerConv(c, cfg.causal, weight_norm)  # noqa: E731
        layers = []
        for layer in decoder.layers:
            if isinstance(layer, (FusedEluConv, FusedEluConvTranspose)):  # a fused decoder: the activation it holds
                layers.append(copy.deepcopy(layer.activation))
            if isinstance(layer, Conv):
                layers.append(make_conv(layer))
            elif isinstance(layer, ConvTranspose):
                layers.append(_EagerConvTranspose(layer, cfg.causal, cfg.trim_right_ratio, weight_norm))
            elif isinstance(layer, ResBlock):
                layers.append(_EagerResBlock(layer, make_conv))
            elif isinstance(layer, LSTM):
                layers.append(_EagerLSTM(layer))
            else:  # activations
                layers.append(copy.deepcopy(layer))
        self.model = nn.Sequential(*layers)
        self.config = cfg
        param = next(decoder.parameters())
        self.to(device=param.device, dtype=param.dtype).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def decode(decoder_or_path, latents: torch.Tensor, mean=JASCO_LATENT_MEAN, std=JASCO_LATENT_STD) -> torch.Tensor:
    """JASCO's ``generate_audio``, eagerly: latents [B, T, D] -> audio [B, C, T * hop].

    ``decoder_or_path``: a :class:`ReferenceDecoder`, a :class:`jasco_fast.SEANetDecoder`, or a checkpoint path.
    """
    from jasco_fast.decoder import SEANetDecoder
    from jasco_fast.loading import load_decoder

    if isinstance(decoder_or_path, ReferenceDecoder):
        eager = decoder_or_path
    elif isinstance(decoder_or_path, SEANetDecoder):
        eager = ReferenceDecoder(decoder_or_path)
    else:
        eager = ReferenceDecoder(load_decoder(decoder_or_path))
    with torch.no_grad():
        return eager((latents * std + mean).permute(0, 2, 1))


# ---------------------------------------------------------------------------------------------------
# Residual vector quantisation: the oracle for jasco_fast.codes_to_latents / Quantizer.decode.


def codes_to_latents(
    codes: torch.Tensor, codebooks: torch.Tensor, *, dtype: torch.dtype | None = None, channels_last: bool = False
) -> torch.Tensor:
    """EnCodec's RVQ decode as transformers and audiocraft write it (``0 + q_0 + q_1 + ...`` with
    ``q_k = embedding(codes[:, k], codebooks[k])``), in float32 (float64 for float64 codebooks or output),
    then the cast and the layout of ``jasco_fast.codes_to_latents`` (same signature): [B, K, T] -> [B, D, T]."""
    if codes.shape[1] == 0:
        raise ValueError("codes need K >= 1 codebooks")
    out_dtype = dtype or codebooks.dtype
    wide = torch.float64 if torch.float64 in (codebooks.dtype, out_dtype) else torch.float32
    total = torch.zeros((), dtype=wide, device=codes.device)
    for k in range(codes.shape[1]):
        total = total + F.embedding(codes[:, k].long(), codebooks[k].to(wide))  # [B, T, D]
    out = total.permute(0, 2, 1).to(out_dtype)
    if channels_last:
        return out.transpose(1, 2).contiguous().transpose(1, 2)
    return out.contiguous()
