"""The EnCodec (SEANet) decoder: latents [B, D, T] -> audio [B, C, T * hop].

Mathematically the decoder of audiocraft's ``SEANetDecoder`` and of transformers' ``EncodecDecoder``;
computationally laid out for speed:

* weight norm / spectral norm are folded into plain weights once, at load (see ``jasco_fast.loading``);
* every convolution is a ``conv2d`` over ``[B, C, 1, T]`` in ``torch.channels_last`` (NHWC), the layout
  oneDNN and cuDNN run natively, so a ``[B, T, C]`` buffer (what ``denorm_transpose(...,
  channels_last=True)`` writes) flows through the whole network without a transposing copy;
* padding is built from slices (reflect = flipped slices) so torch.compile fuses it with the
  activations instead of materialising padded copies;
* the LSTM reads the same ``[B, T, C]`` memory with ``batch_first=True``, through the op
  ``jasco_fast::lstm_skip``, which also takes and returns a state (for chunked decoding);
* on the CPU, the long narrow end of the network (the residual blocks of up to
  ``FUSED_RESBLOCK_MAX_CHANNELS`` channels, the activation + upsampling layers of up to
  ``FUSED_CONV_TRANSPOSE_MAX_CHANNELS``, and the final activation + convolution) runs as the ops
  ``jasco_fast::elu_resblock`` / ``jasco_fast::elu_conv_transpose`` / ``jasco_fast::elu_conv``, which take each
  tile of time steps through the whole block while it is in cache, instead of one pass over memory per layer.
  :meth:`SEANetDecoder.fuse` swaps those modules in, once; a decoder that is not fused runs layer by layer
  (forward hooks fire on every layer: what the reference and fidelity calibration use).

Every layer reports which input samples its outputs depend on (``input_span``; :func:`receptive_field`
turns a stack of layers into a :class:`Context`), so ``jasco_fast.streaming`` computes the overlap of
chunked decoding from the network itself.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from jasco_fast import extension
from jasco_fast.ops import (
    elu_conv,
    elu_conv_transpose,
    elu_conv_transpose_int12,
    elu_resblock,
    elu_resblock_int12,
    lstm_pack,
    lstm_skip,
    pack_int12,
)

PAD_MODES = ("constant", "reflect", "replicate", "circular")
NORMS = ("none", "weight_norm", "spectral_norm", "time_group_norm")


@dataclass(frozen=True)
class DecoderConfig:
    """Architecture of a SEANet decoder (names follow audiocraft's ``seanet`` config).

    The defaults are EnCodec 32 kHz (``facebook/encodec_32khz``), the model JASCO decodes with.
    ``norm`` only says how the checkpoint stores its weights, except ``time_group_norm``, which adds
    a GroupNorm(1, C) after each convolution.
    """

    dimension: int = 128
    channels: int = 1
    n_filters: int = 64
    ratios: tuple[int, ...] = (8, 5, 4, 4)
    n_residual_layers: int = 1
    lstm: int = 2
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    dilation_base: int = 2
    compress: int = 2
    true_skip: bool = True
    pad_mode: str = "reflect"
    causal: bool = False
    trim_right_ratio: float = 1.0
    activation: str = "ELU"
    activation_params: dict = field(default_factory=lambda: {"alpha": 1.0})
    final_activation: str | None = None
    final_activation_params: dict | None = None
    norm: str = "weight_norm"
    norm_params: dict = field(default_factory=dict)
    disable_norm_outer_blocks: int = 0
    sample_rate: int = 32000

    def __post_init__(self):
        # Values may come from untrusted config files: wrong types are refused, never coerced.
        ratios = self.ratios
        if not isinstance(ratios, (list, tuple)) or not all(_is_int(r) for r in ratios):
            raise ValueError(f"invalid decoder config: ratios must be a list of positive integers, got {ratios!r}")
        object.__setattr__(self, "ratios", tuple(int(r) for r in ratios))
        problems = []
        for name in (
            "dimension",
            "channels",
            "n_filters",
            "kernel_size",
            "last_kernel_size",
            "residual_kernel_size",
            "dilation_base",
            "compress",
            "sample_rate",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        for name in ("n_residual_layers", "lstm", "disable_norm_outer_blocks"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                problems.append(f"{name} must be a non-negative integer, got {value!r}")
        if not self.ratios or any(r < 1 for r in self.ratios):
            problems.append(f"ratios must be a non-empty list of positive integers, got {list(self.ratios)}")
        if (
            isinstance(self.n_filters, int)
            and self.n_filters > 0
            and isinstance(self.compress, int)
            and self.compress > 0
            and self.n_filters // self.compress < 1
        ):
            problems.append(f"compress={self.compress} leaves no hidden channels for n_filters={self.n_filters}")
        if self.pad_mode not in PAD_MODES:
            problems.append(f"pad_mode must be one of {PAD_MODES}, got {self.pad_mode!r}")
        if self.norm not in NORMS:
            problems.append(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.norm == "time_group_norm" and self.causal:
            problems.append("time_group_norm cannot be causal")
        for name in ("true_skip", "causal"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("activation_params", "final_activation_params", "norm_params"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, dict) and all(isinstance(k, str) for k in value)):
                problems.append(f"{name} must be a mapping of keyword arguments, got {value!r}")
        if not isinstance(self.trim_right_ratio, (int, float)) or isinstance(self.trim_right_ratio, bool):
            problems.append(f"trim_right_ratio must be a number, got {self.trim_right_ratio!r}")
        elif not 0.0 <= float(self.trim_right_ratio) <= 1.0:
            problems.append(f"trim_right_ratio must lie in [0, 1], got {self.trim_right_ratio}")
        elif not self.causal and float(self.trim_right_ratio) != 1.0:
            problems.append("trim_right_ratio != 1 only makes sense for a causal decoder")
        if isinstance(self.disable_norm_outer_blocks, int) and self.disable_norm_outer_blocks > len(self.ratios) + 2:
            problems.append(f"disable_norm_outer_blocks must be <= {len(self.ratios) + 2} (the number of blocks)")
        for name in ("activation", "final_activation"):
            value = getattr(self, name)
            if value is not None and not (
                isinstance(value, str)
                and isinstance(getattr(nn, value, None), type)
                and issubclass(getattr(nn, value), nn.Module)
            ):
                problems.append(f"{name} must name a torch.nn activation, got {value!r}")
        if problems:
            raise ValueError("invalid decoder config: " + "; ".join(problems))

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    def block_norm(self, block: int) -> str:
        """The norm of block ``block`` (0: first conv, 1..len(ratios): upsampling stages, last: final
        conv); audiocraft's ``disable_norm_outer_blocks`` switches it off for the last N blocks."""
        n_blocks = len(self.ratios) + 2
        return "none" if self.disable_norm_outer_blocks >= n_blocks - block else self.norm


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


Span = tuple  # (first, last) input index, inclusive; None where unbounded


@dataclass(frozen=True)
class Context:
    """Which input frames of a layer (or a stack of layers) the output samples of one frame depend on.

    A layer that upsamples by ``upsample`` turns input frame j into output samples [j * u, (j + 1) * u);
    those samples together depend on input frames ``[j - left, j + right]``. ``left=None``: every earlier
    frame (the LSTM, whose memory a chunked decode carries as state); ``left=right=None``: the whole
    sequence (GroupNorm over time).
    """

    left: int | None
    right: int | None
    upsample: int = 1

    @property
    def bounded(self) -> bool:
        return self.left is not None and self.right is not None


def layer_upsample(layer: nn.Module) -> int:
    if isinstance(layer, nn.Sequential):
        return math.prod(layer_upsample(m) for m in layer)
    return getattr(layer, "upsample", 1)


def input_span(layer: nn.Module, first: int | None, last: int | None) -> Span:
    """The input indices output samples ``first..last`` of ``layer`` depend on, exactly (sample by sample:
    composing per-frame worst cases would overestimate). Activations and identities are pointwise."""
    if hasattr(layer, "input_span"):
        return layer.input_span(first, last)
    if isinstance(layer, nn.Sequential):
        return stack_span(list(layer), first, last)
    if isinstance(layer, nn.Identity) or type(layer).__module__ == "torch.nn.modules.activation":
        return first, last
    raise TypeError(f"no receptive field known for {type(layer).__name__}")


def stack_span(layers, first: int | None, last: int | None) -> Span:
    for layer in reversed(list(layers)):
        first, last = input_span(layer, first, last)
    return first, last


def receptive_field(layers) -> Context:
    """The :class:`Context` of layers applied in turn (pointwise when there are none)."""
    layers = list(layers)
    up = math.prod(layer_upsample(m) for m in layers)
    frame = 1 << 20  # any frame far from 0: the layers are shift-equivariant
    first, last = stack_span(layers, frame * up, frame * up + up - 1)
    return Context(None if first is None else frame - first, None if last is None else last - frame, up)


def layer_context(layer: nn.Module) -> Context:
    """One layer's :class:`Context` (activations: pointwise)."""
    return receptive_field([layer])


def _activation(name: str, params: dict | None) -> nn.Module:
    return getattr(nn, name)(**(params or {}))


def _pad_time(x: torch.Tensor, left: int, right: int, mode: str) -> torch.Tensor:
    """Pad the last (time) dim of [B, C, 1, T], keeping x's memory format.

    Reflect on an input no longer than the pad first zero-extends it on the right (as upstream) so the
    reflection is defined, then drops that extension.
    """
    if left == 0 and right == 0:
        return x
    if mode == "constant":
        return F.pad(x, (left, right))
    length = x.shape[-1]
    if mode == "circular" and length < max(left, right):
        raise ValueError(f"circular padding of {max(left, right)} needs at least that many samples, got {length}")
    extra = 0
    if mode == "reflect" and length <= max(left, right):
        extra = max(left, right) - length + 1
        x = F.pad(x, (0, extra))
        length += extra
    if mode == "reflect":
        head = x[..., 1 : left + 1].flip(-1)
        tail = x[..., length - 1 - right : length - 1].flip(-1)
    elif mode == "replicate":
        head = x[..., :1].expand(*x.shape[:-1], left)
        tail = x[..., -1:].expand(*x.shape[:-1], right)
    else:  # circular
        head = x[..., length - left :]
        tail = x[..., :right]
    out = torch.cat([head, x, tail], dim=-1)
    return out[..., : out.shape[-1] - extra] if extra else out


# The widest layers (by activation dtype) fuse() runs as the CPU ops; measured in docs/design/decode-cpu.md
# ("Where the fused CPU ops are chosen"). Residual blocks of at most this many channels: jasco_fast::elu_resblock.
FUSED_RESBLOCK_MAX_CHANNELS = {torch.float32: 256, torch.bfloat16: 512}
# ELU + transposed convolution of at most this many input channels: jasco_fast::elu_conv_transpose.
FUSED_CONV_TRANSPOSE_MAX_CHANNELS = {torch.float32: 256}
# ELU + convolution of at most this many output channels (the final one: audio channels): jasco_fast::elu_conv.
FUSED_CONV_MAX_OUT_CHANNELS = 8
FUSED_DTYPES = (torch.float32, torch.bfloat16)  # the activation dtypes the CPU tail ops take
# The convolution formats fuse() takes: None (the compute dtype's arithmetic) or "int12" (float32 decoders: every
# residual block and transposed convolution as the 12-bit integer ops, jasco_fast.ops.elu_resblock_int12).
CONV_FORMATS = (None, "int12")


def _needs_grad(x: torch.Tensor, params) -> bool:
    """Whether autograd would record this call: the tail ops have no autograd formula."""
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))


class Conv(nn.Module):
    """Stride-1 SEANet convolution on [B, C, 1, T]: 'same' padding (causal: all on the left).

    The decoder's convolutions never stride, so the extra right padding upstream adds to complete the
    last frame is always zero.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        dilation: int = 1,
        *,
        causal: bool = False,
        pad_mode: str = "reflect",
        group_norm: bool = False,
        norm_params: dict | None = None,
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 1, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.dilation = dilation
        total = (kernel_size - 1) * dilation
        self.pad_left, self.pad_right = (total, 0) if causal else (total - total // 2, total // 2)
        self.pad_mode = pad_mode
        self.norm = nn.GroupNorm(1, out_channels, **(norm_params or {})) if group_norm else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        nn.init.uniform_(self.bias, -1 / math.sqrt(in_channels * kernel_size), 1 / math.sqrt(in_channels * kernel_size))

    def input_span(self, first, last) -> Span:
        if self.norm is not None:  # GroupNorm normalises over the whole sequence
            return None, None
        return (None if first is None else first - self.pad_left), (None if last is None else last + self.pad_right)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _pad_time(x, self.pad_left, self.pad_right, self.pad_mode)
        y = F.conv2d(x, self.weight, self.bias, dilation=(1, self.dilation))
        return y if self.norm is None else self.norm(y)


# Transposed convolutions with at least this many input channels run as a GEMM plus a shifted sum
# (ConvTranspose._as_gemm) when their weights are bfloat16 on a CPU with AMX. Measured on an AMX CPU (Xeon):
# oneDNN's bfloat16 deconvolution took 2-3x the GEMM form's time for the 1024- and 512-channel stages, but
# less than it for the 256- and 128-channel ones. Without AMX (AMD EPYC Zen 5, AVX512-BF16) oneDNN's
# deconvolution won at every stage (1024: 12.2 against 14.1 ms, 512: 11.5 against 16.3, 128: 24 against 87;
# docs/design/decode-cpu.md). In float32 the direct deconvolution won everywhere on AVX-512 CPUs; float16
# was not measured and keeps it.
GEMM_TRANSPOSED_CONV_MIN_CHANNELS = 512


@functools.cache
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (oneDNN then runs bfloat16 GEMMs on them)."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check()) if check is not None else False


# float32 transposed convolutions with at least this many input channels take the GEMM form on AVX2-class CPUs.
# AMD EPYC Zen 4 as an AVX2 CPU (tools/cpuid-as avx2), 2 threads, compiled: 1024 -> 512 channels 47 ms against
# oneDNN's 64 (the whole decode 0.94x with the prepacked form); 512 -> 256 54-59 against 53-54, so it keeps oneDNN.
# With AVX-512 (the same CPU unmasked) oneDNN won at 1024 too: 43 against 50 ms.
GEMM_TRANSPOSED_CONV_MIN_CHANNELS_AVX2_FLOAT32 = 1024


@functools.cache
def cpu_is_avx2_class() -> bool:
    """Whether this CPU (after the instruction-set caps) is AVX2-class: AVX2 without AVX-512 (jasco_fast.modes)."""
    from jasco_fast.modes import cpu_class

    return cpu_class() == "avx2"


def _gemm_transposed_conv(device: torch.device, weight: torch.Tensor) -> bool:
    """Whether a transposed convolution with ``weight`` takes the GEMM form for an input on ``device``."""
    if device.type != "cpu" or weight.device.type != "cpu":
        return False
    if weight.dtype == torch.bfloat16:
        return weight.shape[0] >= GEMM_TRANSPOSED_CONV_MIN_CHANNELS and cpu_has_amx()
    return (
        weight.dtype == torch.float32
        and weight.shape[0] >= GEMM_TRANSPOSED_CONV_MIN_CHANNELS_AVX2_FLOAT32
        and cpu_is_avx2_class()
    )


class _PacksAgain(nn.Module):
    """A module that keeps a pack of its weights in the non-persistent buffer named ``_pack``: once packed, it
    packs again (``prepack()``) when ``.to()`` and friends or ``load_state_dict`` change the weights."""

    _pack: str

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if getattr(self, self._pack) is not None:  # the weights may have a new dtype or device
            self.prepack()
        return self

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        if getattr(self, self._pack) is not None:
            self.prepack()


class ConvTranspose(_PacksAgain):
    """SEANet transposed convolution (kernel 2r, stride r) on [B, C, 1, T], trimmed to T * r."""

    _pack = "gemm_weight"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        *,
        causal: bool = False,
        trim_right_ratio: float = 1.0,
        group_norm: bool = False,
        norm_params: dict | None = None,
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_channels, out_channels, 1, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.register_buffer("gemm_weight", None, persistent=False)
        self.stride = stride
        self.kernel_size = kernel_size
        total = kernel_size - stride
        right = math.ceil(total * trim_right_ratio) if causal else total // 2
        self.trim_left, self.trim_right = total - right, right
        self.norm = nn.GroupNorm(1, out_channels, **(norm_params or {})) if group_norm else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        nn.init.uniform_(
            self.bias, -1 / math.sqrt(out_channels * kernel_size), 1 / math.sqrt(out_channels * kernel_size)
        )

    @property
    def upsample(self) -> int:
        return self.stride

    def input_span(self, first, last) -> Span:
        if self.norm is not None:
            return None, None
        # output sample i (untrimmed position p = i + trim_left) sums input frames j with 0 <= p - j * stride < k
        k, r, t = self.kernel_size, self.stride, self.trim_left
        return (None if first is None else -((k - 1 - first - t) // r)), (None if last is None else (last + t) // r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is None and _gemm_transposed_conv(x.device, self.weight):
            return self._as_gemm(x)
        y = F.conv_transpose2d(x, self.weight, self.bias, stride=(1, self.stride))
        if self.norm is not None:  # upstream normalises before trimming
            y = self.norm(y)
        return y[..., self.trim_left : y.shape[-1] - self.trim_right]

    def prepack(self) -> ConvTranspose:
        """Keep the GEMM form's weight matrix (:meth:`_as_gemm`) in the non-persistent buffer ``gemm_weight`` where
        this layer takes that form, so no call rearranges the weight (torch.compile and the ahead-of-time artifacts
        read it as a constant); None elsewhere. ``.to()`` and friends and ``load_state_dict`` pack again; a weight
        changed in place afterwards needs ``prepack()`` again (as :meth:`LSTM.prepack`). Returns self."""
        gemm = self.norm is None and _gemm_transposed_conv(self.weight.device, self.weight)
        with torch.no_grad():
            self.gemm_weight = self._gemm_matrix() if gemm else None
        return self

    def _gemm_matrix(self) -> torch.Tensor:
        """[m * C_in, stride * C_out] with m = ceil(k / stride): row block i holds taps i * stride ... i * stride +
        stride - 1 (zero past k), each tap a C_out-wide column block."""
        C_in, C_out, _, k = self.weight.shape
        r = self.stride
        m = -(-k // r)
        w = F.pad(self.weight.squeeze(2), (0, m * r - k)).view(C_in, C_out, m, r)
        return w.permute(2, 0, 3, 1).reshape(m * C_in, r * C_out)

    def _as_gemm(self, x: torch.Tensor) -> torch.Tensor:
        """The same transposed convolution as one GEMM whose output is the channels-last result: output frame f
        (``stride`` samples) sums input frames f, f - 1, ..., f - m + 1 through the taps of block 0, 1, ..., so the
        GEMM's input row f is those m frames side by side. Nothing is summed or moved after the GEMM."""
        B, C_in, _, T = x.shape
        _, C_out, _, k = self.weight.shape
        r = self.stride
        m = -(-k // r)
        w = self.gemm_weight
        stale = w is None or w.dtype != self.weight.dtype or w.device != x.device
        if stale or (torch.is_grad_enabled() and self.weight.requires_grad):  # the pack carries no gradient
            w = self._gemm_matrix()
        seq = x.squeeze(2).transpose(1, 2)  # [B, T, C_in]: a view when x is channels-last
        rows = torch.cat([F.pad(seq, (0, 0, i, m - 1 - i)) for i in range(m)], dim=2) if m > 1 else seq
        y = torch.addmm(self.bias.repeat(r), rows.reshape(B * (T + m - 1), m * C_in), w)
        y = y.view(B, (T + m - 1) * r, C_out)[:, self.trim_left : (T - 1) * r + k - self.trim_right]
        return y.transpose(1, 2).unsqueeze(2)  # [B, C_out, 1, T'] over [B, T', C_out] memory: channels-last


class LSTM(_PacksAgain):
    """Multi-layer LSTM over time with the SEANet skip (y = lstm(x) + x), on [B, C, 1, T].

    Holds nn.LSTM's parameters under nn.LSTM's names (weight_ih_l0, ...) and runs them through
    :func:`jasco_fast.ops.lstm_skip`. ``recurrent_dtype`` (None, ``torch.bfloat16``, ``torch.int8``) is the
    format the op streams the recurrent matrices in (see there); None: the parameters' own dtype.

    :meth:`prepack` packs the recurrent matrices once (:func:`jasco_fast.ops.lstm_pack`) into the
    non-persistent buffer ``packed_recurrent``, which every later call uses instead of packing per call.
    Setting ``recurrent_dtype``, ``.to()`` / ``.float()`` and friends, and ``load_state_dict`` pack again;
    a weight changed IN PLACE afterwards (``w.copy_``, ``.data``) needs ``prepack()`` again (the weights stay
    ordinary mutable parameters, as torch's prepacked modules keep theirs).
    """

    _pack = "packed_recurrent"

    def __init__(self, dim: int, num_layers: int, recurrent_dtype: torch.dtype | None = None):
        super().__init__()
        self.num_layers = num_layers
        self.register_buffer("packed_recurrent", None, persistent=False)
        self.recurrent_dtype = recurrent_dtype
        bound = 1 / math.sqrt(dim)
        for k in range(num_layers):
            for name, shape in (
                (f"weight_ih_l{k}", (4 * dim, dim)),
                (f"weight_hh_l{k}", (4 * dim, dim)),
                (f"bias_ih_l{k}", (4 * dim,)),
                (f"bias_hh_l{k}", (4 * dim,)),
            ):
                self.register_parameter(name, nn.Parameter(torch.empty(shape).uniform_(-bound, bound)))

    @property
    def recurrent_dtype(self) -> torch.dtype | None:
        return self._recurrent_dtype

    @recurrent_dtype.setter
    def recurrent_dtype(self, value: torch.dtype | None) -> None:
        self._recurrent_dtype = value
        if self.packed_recurrent is not None:
            self.prepack()

    def prepack(self) -> LSTM:
        """Pack the recurrent matrices for this CPU and ``recurrent_dtype`` into ``packed_recurrent``; a no-op
        (the buffer stays None) where the op's CPU kernel cannot read them: other devices, other dtypes, no compiled
        extension."""
        w_hh = [getattr(self, f"weight_hh_l{k}") for k in range(self.num_layers)]
        if extension.STATUS.loaded and all(
            w.device.type == "cpu" and w.dtype in (torch.float32, torch.bfloat16) for w in w_hh
        ):
            with torch.no_grad():
                self.packed_recurrent = lstm_pack(w_hh, self.recurrent_dtype)
        else:
            self.packed_recurrent = None
        return self

    def flat_weights(self) -> list[torch.Tensor]:
        return [
            getattr(self, f"{kind}_l{k}")
            for k in range(self.num_layers)
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        ]

    def input_span(self, first, last) -> Span:
        return None, last  # causal: every earlier frame, through the state

    def forward_with_state(
        self,
        x: torch.Tensor,
        h: torch.Tensor | None = None,
        c: torch.Tensor | None = None,
        state_frames: int | None = None,
    ):
        """(y, h, c): y as :meth:`forward` from state (h, c) ([num_layers, B, C], default zeros), and the
        state after the first ``state_frames`` frames (default: all)."""
        seq = x.squeeze(2).transpose(1, 2)  # [B, T, C]: a view when x is channels-last
        y, h, c = lstm_skip(
            seq, self.flat_weights(), self.num_layers, h, c, state_frames, self.recurrent_dtype, self.packed_recurrent
        )
        return y.transpose(1, 2).unsqueeze(2), h, c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_state(x)[0]


class ResBlock(nn.Module):
    """SEANet residual block: act, conv(k, dilation) to dim/compress, act, conv(1) back, plus shortcut."""

    def __init__(self, dim: int, dilation: int, cfg: DecoderConfig, norm: str):
        super().__init__()
        hidden = dim // cfg.compress
        gn = norm == "time_group_norm"
        kw = dict(causal=cfg.causal, pad_mode=cfg.pad_mode, group_norm=gn, norm_params=cfg.norm_params)
        self.act1 = _activation(cfg.activation, cfg.activation_params)
        self.conv1 = Conv(dim, hidden, cfg.residual_kernel_size, dilation, **kw)
        self.act2 = _activation(cfg.activation, cfg.activation_params)
        self.conv2 = Conv(hidden, dim, 1, **kw)
        self.shortcut = nn.Identity() if cfg.true_skip else Conv(dim, dim, 1, **kw)

    def input_span(self, first, last) -> Span:
        a = stack_span([self.act1, self.conv1, self.act2, self.conv2], first, last)
        b = input_span(self.shortcut, first, last)
        return (None if None in (a[0], b[0]) else min(a[0], b[0])), (None if None in (a[1], b[1]) else max(a[1], b[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.conv2(self.act2(self.conv1(self.act1(x))))


# --------------------------------------------------------------------------------------------------
# Fusion: SEANetDecoder.fuse() swaps these in where the CPU tail ops apply. Each holds the very parameters (and
# submodules) of the layers it replaces under the same names, so the state_dict is unchanged.


def _adopt(fused: nn.Module, module: nn.Module) -> None:
    """Initialise ``fused`` (an instance of a subclass of ``type(module)``) as ``module``: the same parameters,
    buffers, submodules and attributes, the same objects (nothing is copied; a fused decoder trains and loads
    as the unfused one)."""
    nn.Module.__init__(fused)
    for name, param in module._parameters.items():
        fused.register_parameter(name, param)
    for name, buffer in module._buffers.items():
        fused.register_buffer(name, buffer, persistent=name not in module._non_persistent_buffers_set)
    for name, child in module._modules.items():
        fused.add_module(name, child)
    for name, value in vars(module).items():
        if not name.startswith("_"):
            setattr(fused, name, value)


class _RunsFusedKernel:
    """What each fused module checks per call before running its op, so that a fused decoder moved to another
    device or dtype, or asked for gradients, runs the layers' own math instead of a kernel that does not apply
    there (the op was chosen for ``kernel_dtype`` on the CPU)."""

    kernel_dtype: torch.dtype

    def _kernel_applies(self, x: torch.Tensor) -> bool:
        return x.device.type == "cpu" and x.dtype == self.kernel_dtype and not _needs_grad(x, self.parameters())


class ActivationInNextLayer(nn.Identity):
    """Where :meth:`SEANetDecoder.fuse` moved an activation into the fused layer after it (keeping the layer
    list's indices keeps the state_dict keys)."""


class FusedResBlock(_RunsFusedKernel, ResBlock):
    """A :class:`ResBlock` run as ``jasco_fast::elu_resblock`` (its two ELUs, both convolutions and the skip)."""

    def __init__(self, block: ResBlock, kernel_dtype: torch.dtype):
        _adopt(self, block)
        self.kernel_dtype = kernel_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._kernel_applies(x):
            return super().forward(x)
        c1, c2 = self.conv1, self.conv2
        return elu_resblock(
            x,
            c1.weight,
            c1.bias,
            c2.weight,
            c2.bias,
            c1.dilation,
            c1.pad_left,
            c1.pad_right,
            c1.pad_mode,
            self.act1.alpha,
        )


class _ActivationThenLayer(_RunsFusedKernel):
    """A layer fused with the ELU (``activation``) before it: the layer's own parameters, and the ELU's alpha."""

    def __init__(self, activation: nn.ELU, layer: nn.Module, kernel_dtype: torch.dtype):
        _adopt(self, layer)
        self.activation = activation
        self.kernel_dtype = kernel_dtype


class FusedEluConv(_ActivationThenLayer, Conv):
    """An ELU (``activation``) and the :class:`Conv` after it, run as ``jasco_fast::elu_conv``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._kernel_applies(x):
            return super().forward(self.activation(x))
        return elu_conv(
            x,
            self.weight,
            self.bias,
            self.dilation,
            self.pad_left,
            self.pad_right,
            self.pad_mode,
            self.activation.alpha,
        )


class FusedEluConvTranspose(_ActivationThenLayer, ConvTranspose):
    """An ELU (``activation``) and the :class:`ConvTranspose` after it, run as ``jasco_fast::elu_conv_transpose``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._kernel_applies(x):
            return super().forward(self.activation(x))
        return elu_conv_transpose(
            x, self.weight, self.bias, self.stride, self.trim_left, self.trim_right, self.activation.alpha
        )


def _prepack_after_load(module: nn.Module, incompatible_keys) -> None:
    module.prepack()


def _int12_packable(weight: torch.Tensor) -> bool:
    return weight.device.type == "cpu" and weight.dtype in FUSED_DTYPES


class _Int12Packs:
    """The int12 modules' packs follow their weights: ``.to()`` and friends pack again (None where the weights
    are not on the CPU in float32 or bfloat16: the layers' own math runs there), as does ``load_state_dict``."""

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.prepack()
        return self

    def _packed(self, x: torch.Tensor) -> bool:
        return self._kernel_applies(x) and getattr(self, self._pack) is not None


class FusedResBlockInt12(_Int12Packs, FusedResBlock):
    """A :class:`ResBlock` run as ``jasco_fast::elu_resblock_int12``: both convolutions with 12-bit weights (packed
    once, :meth:`prepack`) and 12-bit inputs per time tile, int32 sums (the ``"int12"`` convolution format)."""

    _pack = "w1_int12"

    def __init__(self, block: ResBlock):
        FusedResBlock.__init__(self, block, torch.float32)
        for name in ("w1_int12", "s1_int12", "w2_int12", "s2_int12"):
            self.register_buffer(name, None, persistent=False)
        # the weights are the convolutions', loaded after this module's own entries: pack once they are in
        self.register_load_state_dict_post_hook(_prepack_after_load)
        self.prepack()

    def prepack(self) -> FusedResBlockInt12:
        """Pack both convolutions' weights (:func:`jasco_fast.ops.pack_int12`) into the non-persistent buffers; a
        weight changed in place afterwards needs ``prepack()`` again. Returns self."""
        if not (_int12_packable(self.conv1.weight) and _int12_packable(self.conv2.weight)):
            self.w1_int12 = self.s1_int12 = self.w2_int12 = self.s2_int12 = None
            return self
        with torch.no_grad():
            self.w1_int12, self.s1_int12 = pack_int12(self.conv1.weight)
            self.w2_int12, self.s2_int12 = pack_int12(self.conv2.weight)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._packed(x):
            return ResBlock.forward(self, x)
        c1, c2 = self.conv1, self.conv2
        return elu_resblock_int12(
            x,
            self.w1_int12,
            self.s1_int12,
            c1.bias,
            self.w2_int12,
            self.s2_int12,
            c2.bias,
            c1.dilation,
            c1.pad_left,
            c1.pad_right,
            c1.pad_mode,
            self.act1.alpha,
        )


class FusedEluConvTransposeInt12(_Int12Packs, FusedEluConvTranspose):
    """An ELU and the :class:`ConvTranspose` after it, run as ``jasco_fast::elu_conv_transpose_int12`` (the
    ``"int12"`` convolution format; weights packed once, :meth:`prepack`)."""

    _pack = "w_int12"

    def __init__(self, activation: nn.ELU, layer: ConvTranspose):
        FusedEluConvTranspose.__init__(self, activation, layer, torch.float32)
        self.gemm_weight = None  # the float GEMM form is not used
        for name in ("w_int12", "s_int12"):
            self.register_buffer(name, None, persistent=False)
        self.prepack()

    def prepack(self) -> FusedEluConvTransposeInt12:
        """Pack the weight (:func:`jasco_fast.ops.pack_int12`) into the non-persistent buffers. Returns self."""
        if not _int12_packable(self.weight):
            self.w_int12 = self.s_int12 = None
            return self
        with torch.no_grad():
            self.w_int12, self.s_int12 = pack_int12(self.weight, self.stride)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._packed(x):
            return ConvTranspose.forward(self, self.activation(x))
        return elu_conv_transpose_int12(
            x,
            self.w_int12,
            self.s_int12,
            self.bias,
            self.stride,
            self.kernel_size,
            self.trim_left,
            self.trim_right,
            self.activation.alpha,
        )


def _fusable_resblock(block: nn.Module, dtype: torch.dtype, int12: bool = False) -> bool:
    """int12: as elu_resblock_int12 (any width, even channel counts)."""
    if type(block) is not ResBlock:  # (a FusedResBlock is fused already)
        return False
    c1, c2 = block.conv1, block.conv2
    widths = (
        c1.weight.shape[1] % 2 == 0 and c1.weight.shape[0] % 2 == 0
        if int12
        else c1.weight.shape[1] <= FUSED_RESBLOCK_MAX_CHANNELS.get(dtype, 0)
    )
    return (
        type(block.act1) is nn.ELU
        and type(block.act2) is nn.ELU
        and block.act1.alpha == block.act2.alpha
        and isinstance(block.shortcut, nn.Identity)
        and c1.norm is None
        and c2.norm is None
        and c2.weight.shape[-1] == 1
        and widths
    )


def _fusable_activation_conv(act: nn.Module, conv: nn.Module) -> bool:
    return (
        type(act) is nn.ELU
        and type(conv) is Conv
        and conv.norm is None
        and conv.weight.shape[0] <= FUSED_CONV_MAX_OUT_CHANNELS
    )


def _fusable_activation_conv_transpose(
    act: nn.Module, conv: nn.Module, dtype: torch.dtype, int12: bool = False
) -> bool:
    """int12: as elu_conv_transpose_int12 (any width, an even number of input channels)."""
    if type(act) is not nn.ELU or type(conv) is not ConvTranspose or conv.norm is not None:
        return False
    channels = conv.weight.shape[0]
    return channels % 2 == 0 if int12 else channels <= FUSED_CONV_TRANSPOSE_MAX_CHANNELS.get(dtype, 0)


class DecoderLayers(nn.Sequential):
    """The decoder's layers in order (an ``nn.Sequential``: its state-dict keys), run one after the other."""

    def fuse(self, conv_format: str | None = None) -> DecoderLayers:
        """Swap in the fused modules (:class:`FusedResBlock`, :class:`FusedEluConv`, :class:`FusedEluConvTranspose`;
        with ``conv_format="int12"`` on float32 layers, :class:`FusedResBlockInt12` and
        :class:`FusedEluConvTransposeInt12` for every residual block and transposed convolution) where their CPU ops
        apply to these layers' device and dtype (their parameters') and the compiled extension is loaded; in place,
        once (a second call changes nothing). Returns self."""
        if conv_format not in CONV_FORMATS:
            raise ValueError(f"conv_format must be None or 'int12', got {conv_format!r}")
        param = next(self.parameters(), None)
        if (
            param is None
            or param.device.type != "cpu"
            or param.dtype not in FUSED_DTYPES
            or not extension.STATUS.loaded
        ):
            return self
        dtype = param.dtype
        int12 = conv_format == "int12" and dtype == torch.float32
        i = 0
        while i < len(self):
            layer, after = self[i], (self[i + 1] if i + 1 < len(self) else None)
            if int12 and _fusable_resblock(layer, dtype, int12=True):
                self[i] = FusedResBlockInt12(layer)
            elif _fusable_resblock(layer, dtype):
                self[i] = FusedResBlock(layer, dtype)
            elif _fusable_activation_conv(layer, after):
                self[i], self[i + 1] = ActivationInNextLayer(), FusedEluConv(layer, after, dtype)
                i += 1
            elif int12 and _fusable_activation_conv_transpose(layer, after, dtype, int12=True):
                self[i], self[i + 1] = ActivationInNextLayer(), FusedEluConvTransposeInt12(layer, after)
                i += 1
            elif _fusable_activation_conv_transpose(layer, after, dtype):
                self[i], self[i + 1] = ActivationInNextLayer(), FusedEluConvTranspose(layer, after, dtype)
                i += 1
            i += 1
        return self


class SEANetDecoder(nn.Module):
    """SEANet decoder: [B, dimension, T] -> [B, channels, T * hop_length], any T >= 1.

    Runs in whatever dtype/device its parameters are in. Input of any strides is accepted; input laid
    out channels-last (strides (T*D, 1, D), as ``denorm_transpose(..., channels_last=True)`` writes it)
    is read without a copy. Call :meth:`to_channels_last` once to put the weights in the same layout.
    """

    def __init__(self, config: DecoderConfig | None = None):
        super().__init__()
        cfg = config or DecoderConfig()
        self.config = cfg
        act = lambda: _activation(cfg.activation, cfg.activation_params)  # noqa: E731
        mult = 2 ** len(cfg.ratios)
        layers: list[nn.Module] = [
            Conv(
                cfg.dimension,
                mult * cfg.n_filters,
                cfg.kernel_size,
                causal=cfg.causal,
                pad_mode=cfg.pad_mode,
                group_norm=cfg.block_norm(0) == "time_group_norm",
                norm_params=cfg.norm_params,
            )
        ]
        if cfg.lstm:
            layers.append(LSTM(mult * cfg.n_filters, cfg.lstm))
        for i, ratio in enumerate(cfg.ratios):
            norm = cfg.block_norm(i + 1)
            dim = mult * cfg.n_filters // 2
            layers += [
                act(),
                ConvTranspose(
                    mult * cfg.n_filters,
                    dim,
                    2 * ratio,
                    ratio,
                    causal=cfg.causal,
                    trim_right_ratio=cfg.trim_right_ratio,
                    group_norm=norm == "time_group_norm",
                    norm_params=cfg.norm_params,
                ),
            ]
            layers += [ResBlock(dim, cfg.dilation_base**j, cfg, norm) for j in range(cfg.n_residual_layers)]
            mult //= 2
        layers += [
            act(),
            Conv(
                cfg.n_filters,
                cfg.channels,
                cfg.last_kernel_size,
                causal=cfg.causal,
                pad_mode=cfg.pad_mode,
                norm_params=cfg.norm_params,
                group_norm=cfg.block_norm(len(cfg.ratios) + 1) == "time_group_norm",
            ),
        ]
        if cfg.final_activation is not None:
            layers.append(_activation(cfg.final_activation, cfg.final_activation_params))
        self.layers = DecoderLayers(*layers)

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def channels(self) -> int:
        return self.config.channels

    @property
    def dimension(self) -> int:
        return self.config.dimension

    def receptive_field(self) -> Context:
        """The whole network's :class:`Context` in latent frames (left is None when it has an LSTM)."""
        return receptive_field(self.layers)

    def to_channels_last(self) -> SEANetDecoder:
        """Store the convolution weights NHWC, the layout the channels-last kernels read directly."""
        for module in self.modules():
            if isinstance(module, (Conv, ConvTranspose)):
                module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last)
        return self

    def fuse(self, conv_format: str | None = None) -> SEANetDecoder:
        """Swap in the fused CPU modules where their ops apply to this decoder's device and dtype; in place, once.
        ``conv_format="int12"`` (float32 on the CPU): the residual blocks and transposed convolutions take 12-bit
        integer products (:data:`CONV_FORMATS`; see :meth:`DecoderLayers.fuse`).

        Decided from the parameters (where and in what dtype the decoder runs), so call it after moving the
        decoder there: ``decoder.to(dtype).to_channels_last().fuse()``. The state_dict (keys and tensors) does
        not change: load checkpoints before or after. A fused decoder moved to another device or dtype, or asked
        for gradients, runs its layers' own math where the op does not apply. Also packs the LSTM's recurrent
        matrices (:meth:`LSTM.prepack`) and the transposed convolutions' GEMM-form weights (:meth:`ConvTranspose.prepack`).
        Returns self.
        """
        self.layers.fuse(conv_format)
        for module in self.modules():
            if isinstance(module, LSTM) or type(module) is ConvTranspose:  # (a fused one runs the tail op)
                module.prepack()
        return self

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.dim() != 3 or latents.shape[1] != self.config.dimension:
            raise ValueError(f"SEANetDecoder expects [B, {self.config.dimension}, T], got {list(latents.shape)}")
        if latents.shape[-1] < 1:
            raise ValueError("SEANetDecoder needs at least one frame (T >= 1)")
        y = self.layers(latents.unsqueeze(2))
        return y.squeeze(2).contiguous()
