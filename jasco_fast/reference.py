"""The pure-PyTorch reference every fast path of jasco_fast is tested against: JASCO's own arithmetic."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from jasco_fast.ops import JASCO_LATENT_MEAN, JASCO_LATENT_STD, int8_rows

__all__ = [
    "denormalize_transpose",
    "decode",
    "ReferenceDecoder",
    "codes_to_latents",
    "INT8_MATVEC_H_LEVELS",
    "int8_recurrent_rows",
]


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


# h's fixed point in the int8 recurrent format's integer matvec, by torch.ops.jasco_fast.lstm_int8_matvec()
# (csrc/cpu/lstm_recurrence.cpp): each h is multiplied as round(L h) / L; "float32": h as it is.
INT8_MATVEC_H_LEVELS = {"avx512_vnni": 127 * 254, "avx2_u7": 63, "float32": None}


def int8_recurrent_rows(w: torch.Tensor) -> torch.Tensor:
    """W_hh as the int8 recurrent format stores it, dequantised (float64): per row scale = max |w| / 127 (1 for a
    zero row), q = round-half-even(w / scale) clamped to +-127, in float32 as ``jasco_fast::lstm_pack`` computes."""
    q, scale = int8_rows(w)
    return q.double() * scale.double()


class _EagerInt8LSTM(nn.Module):
    """lstm(x) + x with the int8 recurrent format's arithmetic, in float64: W_hh as stored, h rounded to the
    matvec's fixed point before each step's product (h_levels; None: not rounded)."""

    def __init__(self, lstm, h_levels: int | None):
        super().__init__()
        self.weights = [
            [
                getattr(lstm, f"{name}_l{k}").detach().double()
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            ]
            for k in range(lstm.num_layers)
        ]
        for layer in self.weights:
            layer[1] = int8_recurrent_rows(layer[1])
        self.h_levels = h_levels

    def forward(self, x):
        seq = x.permute(2, 0, 1)  # [T, B, C]
        y = seq.double()
        for w_ih, w_hh, b_ih, b_hh in self.weights:
            xp = y @ w_ih.T + (b_ih + b_hh)
            h = torch.zeros(seq.shape[1], w_hh.shape[1], dtype=torch.float64, device=x.device)
            c = torch.zeros_like(h)
            steps = []
            for t in range(seq.shape[0]):
                hq = h if self.h_levels is None else (h * self.h_levels).round() / self.h_levels
                i, f, g, o = (xp[t] + hq @ w_hh.T).chunk(4, dim=-1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                steps.append(h)
            y = torch.stack(steps)
        return (y + seq.double()).to(x.dtype).permute(1, 2, 0)


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
    decoder's device and dtype. ``int8_matvec`` (a name of :data:`INT8_MATVEC_H_LEVELS`, what
    ``torch.ops.jasco_fast.lstm_int8_matvec()`` says this CPU runs): the LSTM with the int8 recurrent format's
    arithmetic instead, in float64 (W_hh as stored, h at that matvec's fixed point): the oracle of
    ``recurrent_dtype=torch.int8``.
    """

    def __init__(self, decoder, int8_matvec: str | None = None):
        super().__init__()
        from jasco_fast.decoder import LSTM, Conv, ConvTranspose, FusedEluConv, FusedEluConvTranspose, ResBlock

        if int8_matvec is not None and int8_matvec not in INT8_MATVEC_H_LEVELS:
            raise ValueError(
                f"ReferenceDecoder: int8_matvec must be one of {sorted(INT8_MATVEC_H_LEVELS)}, not {int8_matvec!r}"
            )
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
            elif isinstance(layer, LSTM) and int8_matvec is not None:
                layers.append(_EagerInt8LSTM(layer, INT8_MATVEC_H_LEVELS[int8_matvec]))
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
