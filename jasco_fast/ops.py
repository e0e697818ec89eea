"""The ops of jasco_fast (``torch.ops.jasco_fast.*``) and their Python faces, fake kernels and autograd.

The schemas live in ``jasco_fast/extension.py``, the kernels in ``csrc/``.

``lstm_skip(seq [B, T, C], weights, num_layers, h0=None, c0=None, state_frames=None, recurrent_dtype=None,
packed=None) -> (y, h, c)``: the SEANet LSTM block ``y = lstm(seq) + seq`` from state ``(h0, c0)``, returning
the state after the first ``state_frames`` frames; what chunked decoding carries from chunk to chunk. On CPU
at B <= 8 a recurrence kernel of the extension (float32 state and arithmetic, the recurrent matrix streamed
in its own dtype, or as bfloat16 / int8 with ``recurrent_dtype``); otherwise ATen's LSTM. Inference only (no
autograd formula). ``lstm_pack(w_hh, recurrent_dtype=None)`` packs the recurrent matrices for that kernel
once (``packed``); without it each call packs them.


``denorm_transpose(latents [B, T, D], mean, std, dtype=None, channels_last=False) -> [B, D, T]`` computes
``(latents * std + mean).permute(0, 2, 1)`` (and the cast to ``dtype``) in one pass over memory. The
arithmetic is float32 (float64 when latents or the output are float64), rounded once to the output dtype.
The kernels live in ``csrc/``; this module adds the Python face (which turns float statistics into tensors),
the fake (meta) kernel that lets torch.compile trace through the op, the autograd formula, and the PyTorch
fallback that runs the op on devices the extension has no kernel for (see ``register_fallback``).

``codes_to_latents(codes [B, K, T], codebooks [N, S, D], dtype=None, channels_last=False) -> [B, D, T]``:
residual vector quantisation decode (the sum of K codebook rows per frame), cast and laid out for the decoder,
in one pass (EnCodec codes: MusicGen / AudioGen tokens).

``elu_resblock(x, w1, b1, w2, b2, ...)``, ``elu_conv(x, weight, bias, ...)`` and ``elu_conv_transpose(x, weight,
bias, ...)`` (CPU only): the decoder's residual block, its final activation + convolution and an activation +
upsampling layer, each tile of time steps taken through the whole block while it is in cache
(csrc/cpu/elu_conv.cpp); the decoder uses them where they measured faster. ``elu_resblock_int12`` and
``elu_conv_transpose_int12`` are their copies with 12-bit integer products (float32 x; weights rounded per output
column once by ``pack_int12``, inputs per tile), the decoder's ``"int12"`` convolution format.

Argument rules: each op has one function here, ``check_<op>``, that states the rules of its C++ checks (in
``csrc/``) in the same order and words, in one style: ``_check_value`` where C++ has ``JF_CHECK_VALUE``
(ValueError), ``_check_type`` where it has ``JF_CHECK_TYPE`` (TypeError; the compiled kernels, on the stable ABI,
can only raise ValueError for it: csrc/stable.h). It takes real, fake or symbolic tensors; the Python face (outside
torch.compile, whose tracing runs the fake kernel), the fake kernel and the PyTorch implementation call it. The C++
checks stay (the op can be called directly); tests/ops/test_registration.py feeds both the same bad arguments.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable

import torch

from jasco_fast import extension  # defines the ops' schemas, then loads their compiled kernels


def _check(error: type[Exception], cond, message: Callable[[], str]) -> None:
    """``torch._check_value`` / ``_check_type``'s contract: a plain bool is decided here, a symbolic one (a traced
    shape) by torch, whose checks import sympy at their first call (a quarter of a second of a cold start)."""
    if cond is True:
        return
    if cond is False:
        raise error(message())
    torch._check_with(error, cond, message)


_check_value = functools.partial(_check, ValueError)
_check_type = functools.partial(_check, TypeError)

__all__ = [
    "JASCO_LATENT_MEAN",
    "JASCO_LATENT_STD",
    "denormalize_transpose",
    "lstm_skip",
    "lstm_pack",
    "lstm_pack_bytes",
    "codes_to_latents",
    "elu_resblock",
    "elu_conv",
    "elu_conv_transpose",
    "pack_int12",
    "elu_resblock_int12",
    "elu_conv_transpose_int12",
    "FallbackWarning",
    "FALLBACKS",
    "register_fallback",
    "missing_kernel_hint",
    "denorm_transpose_fallback",
    "check_denorm_transpose",
    "check_lstm_skip",
    "check_lstm_pack",
    "check_codes_to_latents",
    "check_elu_resblock",
    "check_elu_conv",
    "check_elu_conv_transpose",
    "check_pack_int12",
    "check_elu_resblock_int12",
    "check_elu_conv_transpose_int12",
]

# JASCO's latent statistics (its checkpoint config: compression_model_latent_mean / _std).
JASCO_LATENT_MEAN = -0.0074
JASCO_LATENT_STD = 4.0102

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _as_statistic(value, latents: torch.Tensor, name: str, dtype) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"denormalize_transpose: {name} must be a float or a tensor, got {type(value).__name__}")
    # the op's compute type: float64 when latents or the output are float64, else float32
    wide = torch.float64 if torch.float64 in (latents.dtype, dtype) else torch.float32
    if torch.compiler.is_compiling():  # traced into the graph as a constant; a cache would hold fake tensors
        return torch.tensor(float(value), dtype=wide, device=latents.device)
    return _scalar_tensor(float(value).hex(), wide, latents.device)


@functools.lru_cache(maxsize=64)
def _scalar_tensor(value_hex: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A 0-d tensor per (value, dtype, device), made once: on CUDA a fresh one per call would be a
    host-to-device copy per call. Keyed by float.hex so -0.0 and NaN are keys like any other value; made
    outside inference mode so that autograd may save it. The op never writes to its inputs."""
    with torch.inference_mode(False):
        return torch.tensor(float.fromhex(value_hex), dtype=dtype, device=device)


def denormalize_transpose(
    latents: torch.Tensor, mean, std, *, dtype: torch.dtype | None = None, channels_last: bool = False
) -> torch.Tensor:
    """``(latents * std + mean).permute(0, 2, 1)`` in one pass: [B, T, D] -> [B, D, T].

    Args:
        latents: [B, T, D], float32/float64/float16/bfloat16, any strides.
        mean, std: floats, 0-d tensors, or [D] tensors (per-channel statistics), on latents' device.
        dtype: output dtype (the cast is fused); default: latents' dtype.
        channels_last: ``False`` returns a contiguous [B, D, T]; ``True`` returns [B, D, T] with strides
            (T*D, 1, D), i.e. [B, T, D] in memory, the layout a channels-last decoder reads without a copy.

    Raises:
        ValueError / TypeError: for arguments outside the rules above (:func:`check_denorm_transpose`).
    """
    if not isinstance(latents, torch.Tensor):
        raise TypeError(f"denormalize_transpose: latents must be a tensor, got {type(latents).__name__}")
    mean = _as_statistic(mean, latents, "mean", dtype)
    std = _as_statistic(std, latents, "std", dtype)
    if not torch.compiler.is_compiling():  # (traced, the fake kernel checks)
        check_denorm_transpose(latents, mean, std, dtype)
    return torch.ops.jasco_fast.denorm_transpose.default(latents, mean, std, dtype, bool(channels_last))


def check_denorm_transpose(latents, mean, std, dtype) -> torch.dtype:
    """denorm_transpose's argument rules (csrc/denorm_transpose.h: check_inputs); returns the output dtype."""
    _check_value(
        latents.dim() == 3,
        lambda: (
            f"denorm_transpose: latents must be 3-D [B, T, D], got {latents.dim()}-D with shape {list(latents.shape)}"
        ),
    )
    _check_type(
        latents.dtype in _FLOATS,
        lambda: f"denorm_transpose: latents must be float32/float64/float16/bfloat16, got {latents.dtype}",
    )
    B, T, D = latents.shape
    _check_value(D > 0, lambda: f"denorm_transpose: latents need D > 0 channels, got shape {list(latents.shape)}")
    for name, s in (("mean", mean), ("std", std)):
        _check_value(
            s.device == latents.device,
            lambda: (
                f"denorm_transpose: {name} is on {s.device} but "
                f"latents are on {latents.device}; put them on the same device"
            ),
        )
        _check_type(
            s.dtype in _FLOATS,
            lambda: (
                f"denorm_transpose: {name} must be a floating-point tensor "
                f"(float32/float64/float16/bfloat16), got {s.dtype}"
            ),
        )
        _check_value(
            s.dim() <= 1 and (s.numel() == 1 or s.numel() == D),
            lambda: (
                f"denorm_transpose: {name} must be a scalar (0-d or 1 element) or have D = {D} "
                f"elements, got shape {list(s.shape)}"
            ),
        )
    out_dtype = dtype or latents.dtype
    _check_type(
        out_dtype in _FLOATS,
        lambda: f"denorm_transpose: dtype must be float32/float64/float16/bfloat16, got {out_dtype}",
    )
    return out_dtype


@torch.library.register_fake("jasco_fast::denorm_transpose")
def _(latents, mean, std, dtype=None, channels_last=False):
    out_dtype = check_denorm_transpose(latents, mean, std, dtype)
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
# Devices without a compiled kernel (MPS, ROCm, CUDA built without nvcc, XLA, ...)


class FallbackWarning(UserWarning):
    """An op ran its PyTorch fallback because the extension has no kernel for the tensors' device."""


# op name -> its PyTorch implementation, for every op that has one registered (`jasco-fast info` lists them).
FALLBACKS: dict[str, Callable] = {}
_fallback_libraries: dict[str, torch.library.Library] = {}  # namespace -> the library owning its fallbacks
_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def _device_name(device: torch.device) -> str:
    return "cuda (ROCm)" if device.type == "cuda" and torch.version.hip else device.type


def missing_kernel_hint(device: torch.device) -> str:
    """What to do to get a compiled kernel for ``device`` (or why there is none)."""
    if not extension.STATUS.loaded:
        return f"the compiled extension is not loaded: {extension.STATUS.reason}"
    if device.type == "cuda" and torch.version.hip:
        return (
            "jasco_fast compiles no HIP kernels (a ROCm torch builds the CPU kernels only), so this "
            "fallback is the AMD GPU path"
        )
    if device.type == "cuda":
        return (
            f"the extension was built without its CUDA kernels (nvcc not found, or JASCO_FAST_NO_CUDA=1): "
            f"install the CUDA {torch.version.cuda} toolkit or set CUDA_HOME, then rebuild with "
            f"`pip install --no-build-isolation -e .`"
        )
    if device.type == "cpu":
        return "the extension was built without its CPU kernel: rebuild with `pip install --no-build-isolation -e .`"
    return f"jasco_fast has no {device.type} kernels, so this fallback is the {device.type} path"


def _warn_once(op: str, device: torch.device) -> None:
    if not extension.STATUS.loaded:  # extension.py warned once for every op
        return
    key = (op, _device_name(device))
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(
        f"{op} has no compiled kernel for {key[1]} tensors; running its PyTorch implementation "
        f"(same results, slower); {missing_kernel_hint(device)}. `jasco-fast info` lists the "
        f"compiled kernels.",
        FallbackWarning,
        stacklevel=3,
    )


def _device_of(args) -> torch.device:
    """The device of an op call: that of its first tensor (also inside a Tensor[] argument)."""
    for a in args:
        for t in a if isinstance(a, (list, tuple)) else (a,):
            if isinstance(t, torch.Tensor):
                return t.device
    return torch.device("cpu")


def _fallback_library(namespace: str) -> torch.library.Library:
    """The library that owns the PyTorch implementations registered for ``namespace``'s ops."""
    if namespace not in _fallback_libraries:
        _fallback_libraries[namespace] = torch.library.Library(namespace, "FRAGMENT")
    return _fallback_libraries[namespace]


def register_fallback(op: str):
    """Decorator: register ``function`` (same signature as ``op``'s schema, written in PyTorch ops) as the
    op's kernel on every device that has no compiled kernel.

    It goes in as the op's CompositeExplicitAutograd kernel: the dispatcher uses that for any backend
    without a kernel of its own, and keeps the compiled kernels (CPU, CUDA) where they exist. The op keeps
    its one schema, its fake kernel (so torch.compile traces it as one opaque call) and its autograd
    formula (which redispatches to whichever kernel runs). The first call on each device warns once per
    process (``FallbackWarning``). An op that already has a device-generic kernel (CompositeExplicit- or
    CompositeImplicitAutograd, e.g. one written in C++ over ATen ops) needs none and is left alone.
    """

    def register(function: Callable) -> Callable:
        if any(
            torch._C._dispatch_has_kernel_for_dispatch_key(op, key)
            for key in ("CompositeExplicitAutograd", "CompositeImplicitAutograd")
        ):
            return function

        def kernel(*args, **kwargs):
            _warn_once(op, _device_of(args))
            return FALLBACKS[op](*args, **kwargs)  # looked up per call: the registry says what runs

        namespace, name = op.split("::", 1)
        _fallback_library(namespace).impl(name, kernel, "CompositeExplicitAutograd")
        FALLBACKS[op] = function
        return function

    return register


if not extension.STATUS.loaded:  # the query ops answer for the kernels that are not there
    for _query in ("cpu_fast_path", "lstm_int8_matvec"):
        _fallback_library("jasco_fast").impl(_query, lambda: "none", "CompositeExplicitAutograd")


@register_fallback("jasco_fast::denorm_transpose")
def denorm_transpose_fallback(
    latents: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """The kernels' arithmetic in PyTorch ops: compute type float32 (float64 when latents or the output are
    float64), multiply then add (two roundings, no FMA: separate ops), one rounding to the output dtype, and
    the same output strides. Bit for bit the CPU kernel's result."""
    out_dtype = check_denorm_transpose(latents, mean, std, dtype)
    B, T, D = latents.shape
    out = (
        latents.new_empty((B, T, D), dtype=out_dtype).transpose(1, 2)
        if channels_last
        else latents.new_empty((B, D, T), dtype=out_dtype)
    )
    if out.numel() == 0:
        return out
    wide = torch.float64 if torch.float64 in (latents.dtype, out_dtype) else torch.float32
    scaled = latents.to(wide) * std.to(wide).reshape(-1)
    out.transpose(1, 2).copy_(scaled.add_(mean.to(wide).reshape(-1)))  # copy_ rounds once to out_dtype
    return out


# ---------------------------------------------------------------------------------------------------
# lstm_skip


def lstm_skip(
    seq: torch.Tensor,
    weights: list[torch.Tensor],
    num_layers: int,
    h0: torch.Tensor | None = None,
    c0: torch.Tensor | None = None,
    state_frames: int | None = None,
    recurrent_dtype: torch.dtype | None = None,
    packed: torch.Tensor | None = None,
):
    """``lstm(seq) + seq`` for a batch-first, unidirectional LSTM with biases, from state ``(h0, c0)``.

    Args:
        seq: [B, T, C], any strides (read contiguously: the oneDNN LSTM is ~10x slower on strided views).
        weights: ``w_ih, w_hh, b_ih, b_hh`` of each layer in turn (``nn.LSTM``'s flat weights), C -> C.
        num_layers: the number of stacked layers.
        h0, c0: the initial state, [num_layers, B, C] each (both or neither; default zeros).
        state_frames: return the state after this many frames (default: all T). Frames after it are
            look-ahead: a chunked decode recomputes them in the next chunk from the returned state.
        recurrent_dtype: None (or the weights' dtype): the recurrent matrices ``w_hh`` as given.
            ``torch.bfloat16`` (float32 weights): each ``w_hh`` rounded to bfloat16, half the bytes per step.
            ``torch.int8``: each ``w_hh`` quantised to symmetric int8 with a float32 scale per row
            (``max |row| / 127``, round half to even), a quarter of float32's bytes per step. The
            arithmetic stays float32. Devices and batches without the CPU kernel run ATen's LSTM with the
            stored values converted back to the weights' dtype.
        packed: ``lstm_pack([w_hh of each layer], recurrent_dtype)`` of these weights, made in this process;
            None: the call packs the recurrent matrices itself (milliseconds per layer: a T = 1 call costs
            several times more). A pack of other shapes, dtype, format or CPU layout is refused; a pack of
            other VALUES is not detected (whoever holds the pack rebuilds it when the weights change, as
            :class:`jasco_fast.decoder.LSTM` does).
    Returns:
        (y [B, T, C] contiguous, h [num_layers, B, C], c [num_layers, B, C]).

    On CPU at B <= 8 (float32 or bfloat16 seq and weights) the extension's recurrence kernel runs: the input
    projections of all frames in one GEMM, then per step ``W_hh h`` with W_hh packed (``packed``), the
    state and arithmetic in float32 (for bfloat16 too; the bfloat16 input GEMM rounds to bfloat16 as ATen's
    does), the output rounded once to seq's dtype. Larger batches and other devices run ATen's LSTM.

    Opaque to torch.compile (dynamo cannot trace an LSTM; a graph break there would split the decoder
    into small graphs with unfused activations).
    """
    if not torch.compiler.is_compiling():  # (traced, the fake kernel checks)
        check_lstm_skip(seq, weights, num_layers, h0, c0, state_frames, recurrent_dtype, packed)
    return torch.ops.jasco_fast.lstm_skip.default(
        seq, weights, num_layers, h0, c0, state_frames, recurrent_dtype, packed
    )


def lstm_pack(w_hh: list[torch.Tensor], recurrent_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The recurrent matrices ``w_hh`` (one [4C, C] float32 or bfloat16 CPU tensor per layer) packed for
    :func:`lstm_skip`'s CPU kernel in ``recurrent_dtype`` (as there): a 1-D uint8 tensor of
    :func:`lstm_pack_bytes` bytes, whose per-layer headers (layout, tile width of this CPU, shape, dtype)
    lstm_skip checks. Pass it as ``lstm_skip(..., packed=...)`` with the same weights and recurrent_dtype."""
    if not torch.compiler.is_compiling():  # (traced, the fake kernel checks)
        check_lstm_pack(w_hh, recurrent_dtype)
    return torch.ops.jasco_fast.lstm_pack.default(w_hh, recurrent_dtype)


def lstm_pack_bytes(C: int, weight_dtype: torch.dtype, recurrent_dtype: torch.dtype | None = None) -> int:
    """Bytes of one layer's segment of :func:`lstm_pack` (csrc/cpu/lstm_recurrence.cpp, segment_bytes: the
    same rule): a 64-byte header, then for int8 the row scales and sums, then the tiles of
    ``ceil(C / 16) * 64`` packed rows. The same on every CPU: the layout varies, not the size."""
    rows = (C + 15) // 16 * 64
    fmt = weight_dtype if recurrent_dtype is None else recurrent_dtype
    if fmt == torch.int8:
        return 64 + rows * 8 + rows * ((C + 3) // 4) * 4
    if fmt == torch.bfloat16:
        return 64 + rows * ((C + 1) // 2) * 4
    return 64 + rows * C * 4


def recurrent_format_supported(recurrent_dtype: torch.dtype | None, weight_dtype: torch.dtype) -> bool:
    """Whether lstm_skip streams ``weight_dtype`` recurrent matrices as ``recurrent_dtype`` (the C++ op's rule)."""
    return (
        recurrent_dtype is None
        or recurrent_dtype in (weight_dtype, torch.int8)
        or (recurrent_dtype == torch.bfloat16 and weight_dtype == torch.float32)
    )


def check_lstm_skip(
    seq, weights, num_layers, h0=None, c0=None, state_frames=None, recurrent_dtype=None, packed=None
) -> None:
    """lstm_skip's argument rules (csrc/lstm_skip.cpp: lstm_skip, check_state, recurrent_format; the packed tensor's
    type as csrc/cpu/lstm_recurrence.cpp's read_packs checks it)."""
    _check_value(seq.dim() == 3, lambda: f"lstm_skip: seq must be 3-D [B, T, C], got shape {list(seq.shape)}")
    _check_value(num_layers >= 1, lambda: f"lstm_skip: num_layers must be >= 1, got {num_layers}")
    _check_value(
        len(weights) == 4 * num_layers,
        lambda: (
            f"lstm_skip: expected 4 * num_layers = {4 * num_layers} weights (w_ih, w_hh, b_ih, "
            f"b_hh per layer), got {len(weights)}"
        ),
    )
    _check_value((h0 is None) == (c0 is None), lambda: "lstm_skip: give both h0 and c0, or neither")
    B, T, C = seq.shape
    for name, s in (("h0", h0), ("c0", c0)):
        if s is not None:
            _check_value(
                s.dim() == 3 and s.shape[0] == num_layers and s.shape[1] == B and s.shape[2] == C,
                lambda: f"lstm_skip: {name} must be [num_layers, B, C] = [{num_layers}, {B}, {C}], got {list(s.shape)}",
            )
            _check_type(
                s.dtype == seq.dtype and s.device == seq.device,
                lambda: (
                    f"lstm_skip: {name} must have seq's dtype and device ({seq.dtype}, "
                    f"{seq.device}), got {s.dtype}, {s.device}"
                ),
            )
    n = T if state_frames is None else state_frames
    _check_value(0 <= n and n <= T, lambda: f"lstm_skip: state_frames must lie in [0, T] = [0, {T}], got {n}")
    own = weights[1].dtype if len(weights) >= 2 else torch.float32
    _check_type(
        recurrent_format_supported(recurrent_dtype, own),
        lambda: (
            f"lstm_skip: recurrent_dtype must be None, the weights' dtype, torch.int8, or "
            f"torch.bfloat16 with float32 weights; got {recurrent_dtype} with {own} weights"
        ),
    )
    if packed is not None:  # its headers, and so its size, are the kernel's to check (read_segment)
        _check_type(
            packed.dtype == torch.uint8 and packed.dim() == 1,
            lambda: (
                f"lstm_skip: packed must be a contiguous 1-D uint8 CPU tensor from "
                f"jasco_fast::lstm_pack, got {packed.dtype} {list(packed.shape)} on {packed.device}"
            ),
        )


def check_lstm_pack(w_hh, recurrent_dtype=None) -> int:
    """lstm_pack's argument rules (csrc/cpu/lstm_recurrence.cpp: lstm_pack); returns the pack's size in bytes."""
    _check_value(len(w_hh) >= 1, lambda: "lstm_pack: w_hh must hold at least one matrix")
    total = 0
    for i, w in enumerate(w_hh):
        _check_value(
            w.dim() == 2 and w.shape[1] >= 1 and w.shape[0] == 4 * w.shape[1],
            lambda i=i, w=w: f"lstm_pack: w_hh[{i}] must be [4C, C] with C >= 1, got {list(w.shape)}",
        )
        _check_type(
            w.dtype in (torch.float32, torch.bfloat16) and w.device.type == "cpu",
            lambda i=i, w=w: (
                f"lstm_pack: w_hh[{i}] must be a float32 or bfloat16 CPU tensor (what the "
                f"CPU kernel reads), got {w.dtype} on {w.device}"
            ),
        )
        _check_type(
            recurrent_format_supported(recurrent_dtype, w.dtype),
            lambda w=w: (
                f"lstm_pack: recurrent_dtype must be None, the weights' dtype, torch.int8, or "
                f"torch.bfloat16 with float32 weights; got {recurrent_dtype} with {w.dtype} "
                f"weights"
            ),
        )
        total += lstm_pack_bytes(w.shape[1], w.dtype, recurrent_dtype)
    return total


@torch.library.register_fake("jasco_fast::lstm_pack")
def _(w_hh, recurrent_dtype=None):
    return w_hh[0].new_empty((check_lstm_pack(w_hh, recurrent_dtype),), dtype=torch.uint8)


@torch.library.register_fake("jasco_fast::lstm_skip")
def _(seq, weights, num_layers, h0=None, c0=None, state_frames=None, recurrent_dtype=None, packed=None):
    check_lstm_skip(seq, weights, num_layers, h0, c0, state_frames, recurrent_dtype, packed)
    B, T, C = seq.shape
    out = seq.new_empty((B, T, C))  # contiguous
    return out, seq.new_empty((num_layers, B, C)), seq.new_empty((num_layers, B, C))


def stored_recurrent(w_hh: torch.Tensor, recurrent_dtype: torch.dtype | None) -> torch.Tensor:
    """``w_hh`` as ``recurrent_dtype`` stores it, in w_hh's dtype: rounded to bfloat16, or int8 with a float32
    scale per row (``max |row| / 127``, 1 for a zero row; round half to even), the arithmetic of the CPU kernel's
    packing (csrc/lstm_skip.cpp, dequantized_int8_rows)."""
    if recurrent_dtype is None or recurrent_dtype == w_hh.dtype:
        return w_hh
    if recurrent_dtype == torch.bfloat16:
        return w_hh.to(torch.bfloat16).to(w_hh.dtype)
    q, scale = int8_rows(w_hh)
    return q.mul(scale).to(w_hh.dtype)


def int8_rows(w_hh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The int8 recurrent format of ``w_hh`` [rows, C]: (q, scale), float32, q integral in [-127, 127], one scale
    per row, as the CPU kernel packs them (:func:`stored_recurrent`)."""
    w = w_hh.float()
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return (w / scale).round().clamp(-127, 127), scale


@register_fallback("jasco_fast::lstm_skip")
def lstm_skip_fallback(
    seq, weights, num_layers, h0=None, c0=None, state_frames=None, recurrent_dtype=None, packed=None
):
    """ATen's LSTM (what the compiled op runs off its CPU kernel) with the stored recurrent values; ``packed`` is
    checked and not needed."""
    check_lstm_skip(seq, weights, num_layers, h0, c0, state_frames, recurrent_dtype, packed)
    B, T, C = seq.shape
    weights = list(weights)
    for layer in range(num_layers):
        weights[4 * layer + 1] = stored_recurrent(weights[4 * layer + 1], recurrent_dtype)
    h = seq.new_zeros((num_layers, B, C)) if h0 is None else h0
    c = seq.new_zeros((num_layers, B, C)) if c0 is None else c0
    n = T if state_frames is None else state_frames

    def run(piece, h, c):
        y, hy, cy = torch.lstm(piece.contiguous(), (h, c), weights, True, num_layers, 0.0, False, False, True)
        return torch.add(y, piece, out=torch.empty(piece.shape, dtype=piece.dtype, device=piece.device)), hy, cy

    if n == T:
        return run(seq, h, c)
    head, h_n, c_n = run(seq[:, :n], h, c) if n else (seq[:, :0], h.clone(), c.clone())
    tail, _, _ = run(seq[:, n:], h_n, c_n)
    return torch.cat([head, tail], dim=1), h_n, c_n


@register_fallback("jasco_fast::lstm_pack")
def lstm_pack_fallback(w_hh, recurrent_dtype=None):
    """A pack is the CPU kernel's own format: there is none to make without the kernel."""
    check_lstm_pack(w_hh, recurrent_dtype)
    raise NotImplementedError(
        f"lstm_pack packs the recurrent matrices for the compiled CPU LSTM kernel, which does not run here: "
        f"{missing_kernel_hint(w_hh[0].device)}. lstm_skip needs no pack (packed=None)."
    )


# --------------------------------------------------------------------------------------------------
# codes_to_latents

_CODES = (torch.int64, torch.int32)


def check_codes_to_latents(codes, codebooks, dtype) -> torch.dtype:
    """codes_to_latents's argument rules (csrc/codes_to_latents.h: check_code_inputs); returns the output dtype."""
    _check_value(
        codes.dim() == 3,
        lambda: f"codes_to_latents: codes must be 3-D [B, K, T], got {codes.dim()}-D with shape {list(codes.shape)}",
    )
    _check_type(codes.dtype in _CODES, lambda: f"codes_to_latents: codes must be int64 or int32, got {codes.dtype}")
    _check_value(
        codebooks.dim() == 3,
        lambda: (
            f"codes_to_latents: codebooks must be 3-D [num_codebooks, "
            f"codebook_size, D], got shape {list(codebooks.shape)}"
        ),
    )
    _check_type(
        codebooks.dtype in _FLOATS,
        lambda: f"codes_to_latents: codebooks must be float32/float64/float16/bfloat16, got {codebooks.dtype}",
    )
    _check_value(
        codebooks.device == codes.device,
        lambda: (
            f"codes_to_latents: codebooks are on {codebooks.device} but codes are on "
            f"{codes.device}; put them on the same device"
        ),
    )
    _check_value(
        codebooks.shape[1] > 0 and codebooks.shape[2] > 0,
        lambda: f"codes_to_latents: codebooks need codebook_size > 0 and D > 0, got shape {list(codebooks.shape)}",
    )
    K, N = codes.shape[1], codebooks.shape[0]
    _check_value(
        1 <= K and K <= N,
        lambda: (
            f"codes_to_latents: codes have K = {K} codebooks; this quantizer "
            f"has {N} (K must lie in [1, {N}]; the first K codebooks are used)"
        ),
    )
    out_dtype = dtype or codebooks.dtype
    _check_type(
        out_dtype in _FLOATS,
        lambda: f"codes_to_latents: dtype must be float32/float64/float16/bfloat16, got {out_dtype}",
    )
    return out_dtype


def codes_to_latents(
    codes: torch.Tensor, codebooks: torch.Tensor, *, dtype: torch.dtype | None = None, channels_last: bool = False
) -> torch.Tensor:
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
        raise TypeError(
            f"codes_to_latents: codes and codebooks must be tensors, got {type(codes).__name__} "
            f"and {type(codebooks).__name__}"
        )
    if not torch.compiler.is_compiling():  # (traced, the fake kernel checks)
        check_codes_to_latents(codes, codebooks, dtype)
    return torch.ops.jasco_fast.codes_to_latents.default(codes, codebooks, dtype, bool(channels_last))


@register_fallback("jasco_fast::codes_to_latents")
def codes_to_latents_fallback(codes, codebooks, dtype=None, channels_last=False):
    """The kernels' arithmetic in PyTorch ops: the sum in codebook order in float32 (float64 when the codebooks or
    the output are float64), one rounding to the output dtype, the same error for the first out-of-range code."""
    out_dtype = check_codes_to_latents(codes, codebooks, dtype)
    B, K, T = codes.shape
    S, D = codebooks.shape[1], codebooks.shape[2]
    bad = ((codes < 0) | (codes >= S)).flatten().nonzero()
    if bad.numel():
        i = int(bad[0])
        b, k, t = i // (K * T), i // T % K, i % T
        raise RuntimeError(
            f"codes_to_latents: code {int(codes[b, k, t])} at [b={b}, k={k}, t={t}] is out of range: codes must "
            f"lie in [0, {S}) (the codebook size)"
        )
    wide = torch.float64 if torch.float64 in (codebooks.dtype, out_dtype) else torch.float32
    acc = codebooks.new_zeros((B, T, D), dtype=wide)
    for k in range(K):
        acc += codebooks[k][codes[:, k].long()].to(wide)
    out = codebooks.new_empty((B, T, D), dtype=out_dtype).transpose(1, 2)
    if not channels_last:
        out = out.contiguous()
    return out.copy_(acc.transpose(1, 2))


@torch.library.register_fake("jasco_fast::codes_to_latents")
def _(codes, codebooks, dtype=None, channels_last=False):
    out_dtype = check_codes_to_latents(codes, codebooks, dtype)
    B, _, T = codes.shape
    D = codebooks.shape[2]
    if channels_last:
        return codebooks.new_empty((B, T, D), dtype=out_dtype).transpose(1, 2)
    return codebooks.new_empty((B, D, T), dtype=out_dtype)


# --------------------------------------------------------------------------------------------------
# elu_resblock, elu_conv: the decoder's tail on the CPU


def elu_resblock(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    dilation: int,
    pad_left: int,
    pad_right: int,
    pad_mode: str,
    alpha: float,
) -> torch.Tensor:
    """The SEANet residual block ``x + conv(elu(conv(elu(x), w1, b1)), w2, b2)`` in one pass over ``x`` (CPU).

    Args:
        x: [B, C, 1, T], float32 or bfloat16 (read channels-last; other layouts are copied first).
        w1, b1: the first convolution, [H, C, 1, k] and [H], dilated by ``dilation``; its input, ``elu(x)``, is
            padded by ``pad_left + pad_right == (k - 1) * dilation`` in ``pad_mode`` (constant, reflect,
            replicate, circular; reflect of an input no longer than the padding reflects a zero-extended copy,
            as SEANet's padding does).
        w2, b2: the 1x1 convolution back, [C, H, 1, 1] and [C].
        alpha: the ELU's alpha (both activations).
    Returns:
        [B, C, 1, T] channels-last, x's dtype. Arithmetic in float32 whatever the dtype. No autograd formula.
    """
    if not torch.compiler.is_compiling():  # (traced, the fake kernel checks)
        check_elu_resblock(x, w1, b1, w2, b2, dilation, pad_left, pad_right, pad_mode)
    return torch.ops.jasco_fast.elu_resblock.default(
        x, w1, b1, w2, b2, dilation, pad_left, pad_right, pad_mode, float(alpha)
    )


def elu_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    dilation: int,
    pad_left: int,
    pad_right: int,
    pad_mode: str,
    alpha: float,
) -> torch.Tensor:
    """``conv(elu(x), weight, bias)`` in one pass (CPU): x [B, C, 1, T] float32/bfloat16, weight [Cout, C, 1, k],
    padding as in :func:`elu_resblock`. Returns [B, Cout, 1, T] channels-last in x's dtype (float32 arithmetic).
    Meant for a narrow output (the decoder's last convolution): each output channel is a dot product per step."""
    if not torch.compiler.is_compiling():  # (traced, the fake kernel checks)
        check_elu_conv(x, weight, bias, dilation, pad_left, pad_right, pad_mode)
    return torch.ops.jasco_fast.elu_conv.default(x, weight, bias, dilation, pad_left, pad_right, pad_mode, float(alpha))


def elu_conv_transpose(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    stride: int,
    trim_left: int,
    trim_right: int,
    alpha: float,
) -> torch.Tensor:
    """``conv_transpose(elu(x), weight, bias, stride)`` with ``trim_left`` / ``trim_right`` output samples dropped at
    the ends, in one pass (CPU): a SEANet upsampling layer with its activation.

    Args:
        x: [B, C, 1, T], float32 or bfloat16 (read channels-last).
        weight, bias: [C, Cout, 1, k] (``ConvTranspose2d``'s layout) and [Cout], x's dtype.
    Returns:
        [B, Cout, 1, (T - 1) * stride + k - trim_left - trim_right] channels-last, x's dtype; float32 sums (bfloat16
        x: the activation rounded to bfloat16 before the products, as the unfused bfloat16 layers round it).
        No autograd formula.
    """
    if not torch.compiler.is_compiling():  # (traced, the fake kernel checks)
        check_elu_conv_transpose(x, weight, bias, stride, trim_left, trim_right)
    return torch.ops.jasco_fast.elu_conv_transpose.default(x, weight, bias, stride, trim_left, trim_right, float(alpha))


_TAIL_DTYPES = (torch.float32, torch.bfloat16)
_PAD_MODES = ("constant", "reflect", "replicate", "circular")


# The rules the three ops share (csrc/cpu/elu_conv.cpp: check_activations, check_conv_weight, check_padding,
# parse_pad_mode, make_pad_map).


def _check_activations(op: str, x, channels) -> None:
    _check_value(x.dim() == 4 and x.shape[2] == 1, lambda: f"{op}: x must be [B, C, 1, T], got shape {list(x.shape)}")
    _check_type(x.dtype in _TAIL_DTYPES, lambda: f"{op}: x must be float32 or bfloat16, got {x.dtype}")
    _check_value(x.shape[1] == channels, lambda: f"{op}: x has {x.shape[1]} channels, the weights expect {channels}")
    _check_value(x.shape[3] >= 1, lambda: f"{op}: x needs at least one time step")


def _check_conv_weight(op: str, name: str, w, b, in_channels, x) -> None:
    _check_value(
        w.dim() == 4 and w.shape[2] == 1 and w.shape[1] == in_channels,
        lambda: f"{op}: {name} must be [out, {in_channels}, 1, k], got shape {list(w.shape)}",
    )
    _check_value(
        b.dim() == 1 and b.shape[0] == w.shape[0],
        lambda: f"{op}: the bias of {name} must be [{w.shape[0]}], got shape {list(b.shape)}",
    )
    _check_type(
        w.dtype == x.dtype and b.dtype == x.dtype,
        lambda: f"{op}: {name} and its bias must have x's dtype {x.dtype}, got {w.dtype} and {b.dtype}",
    )
    _check_value(w.device == x.device and b.device == x.device, lambda: f"{op}: {name} must be on x's device")


def _check_padding(op: str, x, k, dilation, pad_left, pad_right, pad_mode) -> None:
    _check_value(dilation >= 1, lambda: f"{op}: dilation must be >= 1, got {dilation}")
    _check_value(
        pad_left >= 0 and pad_right >= 0 and pad_left + pad_right == (k - 1) * dilation,
        lambda: (
            f"{op}: pad_left + pad_right must equal (k - 1) * dilation = {(k - 1) * dilation} (the "
            f"output keeps the input's length), got {pad_left} + {pad_right}"
        ),
    )
    _check_value(
        pad_mode in _PAD_MODES, lambda: f"pad_mode must be constant, reflect, replicate or circular, got '{pad_mode}'"
    )
    pad, T = max(pad_left, pad_right), x.shape[3]
    _check_value(
        pad_mode != "circular" or T >= pad,
        lambda: f"{op}: circular padding of {pad} needs at least that many samples, got {T}",
    )


def check_elu_resblock(x, w1, b1, w2, b2, dilation, pad_left, pad_right, pad_mode) -> None:
    """elu_resblock's argument rules (csrc/cpu/elu_conv.cpp: elu_resblock)."""
    op = "elu_resblock"
    _check_value(w1.dim() == 4, lambda: f"{op}: w1 must be [H, C, 1, k], got shape {list(w1.shape)}")
    H, C, k = w1.shape[0], w1.shape[1], w1.shape[3]
    _check_activations(op, x, C)
    _check_conv_weight(op, "w1", w1, b1, C, x)
    _check_conv_weight(op, "w2", w2, b2, H, x)
    _check_value(
        w2.shape[0] == C and w2.shape[3] == 1, lambda: f"{op}: w2 must be [{C}, {H}, 1, 1], got shape {list(w2.shape)}"
    )
    _check_padding(op, x, k, dilation, pad_left, pad_right, pad_mode)


def check_elu_conv(x, weight, bias, dilation, pad_left, pad_right, pad_mode) -> None:
    """elu_conv's argument rules (csrc/cpu/elu_conv.cpp: elu_conv)."""
    op = "elu_conv"
    _check_value(weight.dim() == 4, lambda: f"{op}: weight must be [Cout, C, 1, k], got shape {list(weight.shape)}")
    _check_activations(op, x, weight.shape[1])
    _check_conv_weight(op, "weight", weight, bias, weight.shape[1], x)
    _check_padding(op, x, weight.shape[3], dilation, pad_left, pad_right, pad_mode)


def check_elu_conv_transpose(x, weight, bias, stride, trim_left, trim_right) -> int:
    """elu_conv_transpose's argument rules (csrc/cpu/elu_conv.cpp: elu_conv_transpose); returns the output length."""
    op = "elu_conv_transpose"
    _check_value(
        weight.dim() == 4 and weight.shape[2] == 1,
        lambda: f"{op}: weight must be [C, Cout, 1, k], got shape {list(weight.shape)}",
    )
    C, Cout, k = weight.shape[0], weight.shape[1], weight.shape[3]
    _check_activations(op, x, C)
    _check_value(
        Cout >= 1 and k >= 1,
        lambda: f"{op}: weight must have at least one output channel and one tap, got shape {list(weight.shape)}",
    )
    _check_value(
        bias.dim() == 1 and bias.shape[0] == Cout, lambda: f"{op}: bias must be [{Cout}], got shape {list(bias.shape)}"
    )
    _check_type(
        weight.dtype == x.dtype and bias.dtype == x.dtype,
        lambda: f"{op}: weight and bias must have x's dtype {x.dtype}, got {weight.dtype} and {bias.dtype}",
    )
    _check_value(
        weight.device == x.device and bias.device == x.device, lambda: f"{op}: weight and bias must be on x's device"
    )
    _check_value(stride >= 1, lambda: f"{op}: stride must be >= 1, got {stride}")
    return _trimmed_length(op, x.shape[3], stride, k, trim_left, trim_right)


def _trimmed_length(op: str, T, stride, k, trim_left, trim_right):
    """The output length of a transposed convolution of T inputs with trim_left / trim_right samples dropped,
    checked to leave at least one (csrc/cpu/elu_conv.cpp: trimmed_length)."""
    full = (T - 1) * stride + k
    _check_value(
        trim_left >= 0 and trim_right >= 0 and trim_left + trim_right < full,
        lambda: (
            f"{op}: trim_left and trim_right must be >= 0 and leave at least one of the {full} "
            f"output samples, got {trim_left} and {trim_right}"
        ),
    )
    return full - trim_left - trim_right


@torch.library.register_fake("jasco_fast::elu_resblock")
def _(x, w1, b1, w2, b2, dilation, pad_left, pad_right, pad_mode, alpha):
    check_elu_resblock(x, w1, b1, w2, b2, dilation, pad_left, pad_right, pad_mode)
    return torch.empty_like(x, memory_format=torch.channels_last)


@torch.library.register_fake("jasco_fast::elu_conv")
def _(x, weight, bias, dilation, pad_left, pad_right, pad_mode, alpha):
    check_elu_conv(x, weight, bias, dilation, pad_left, pad_right, pad_mode)
    B, _, _, T = x.shape
    return x.new_empty((B, weight.shape[0], 1, T)).contiguous(memory_format=torch.channels_last)


@torch.library.register_fake("jasco_fast::elu_conv_transpose")
def _(x, weight, bias, stride, trim_left, trim_right, alpha):
    length = check_elu_conv_transpose(x, weight, bias, stride, trim_left, trim_right)
    return x.new_empty((x.shape[0], weight.shape[1], 1, length)).contiguous(memory_format=torch.channels_last)


# The three tail ops in PyTorch ops: the layers' math with the kernels' float32 arithmetic and channels-last output.


def _activation(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return torch.nn.functional.elu(x.float(), alpha)


def _padded(x: torch.Tensor, pad_left: int, pad_right: int, pad_mode: str) -> torch.Tensor:
    from jasco_fast.decoder import _pad_time  # (decoder imports this module)

    return _pad_time(x, pad_left, pad_right, pad_mode)


@register_fallback("jasco_fast::elu_resblock")
def elu_resblock_fallback(x, w1, b1, w2, b2, dilation, pad_left, pad_right, pad_mode, alpha):
    check_elu_resblock(x, w1, b1, w2, b2, dilation, pad_left, pad_right, pad_mode)
    h = torch.nn.functional.conv2d(
        _padded(_activation(x, alpha), pad_left, pad_right, pad_mode), w1.float(), b1.float(), dilation=(1, dilation)
    )
    y = x.float() + torch.nn.functional.conv2d(_activation(h, alpha), w2.float(), b2.float())
    return y.to(x.dtype).contiguous(memory_format=torch.channels_last)


@register_fallback("jasco_fast::elu_conv")
def elu_conv_fallback(x, weight, bias, dilation, pad_left, pad_right, pad_mode, alpha):
    check_elu_conv(x, weight, bias, dilation, pad_left, pad_right, pad_mode)
    a = _padded(_activation(x, alpha), pad_left, pad_right, pad_mode)
    y = torch.nn.functional.conv2d(a, weight.float(), bias.float(), dilation=(1, dilation))
    return y.to(x.dtype).contiguous(memory_format=torch.channels_last)


@register_fallback("jasco_fast::elu_conv_transpose")
def elu_conv_transpose_fallback(x, weight, bias, stride, trim_left, trim_right, alpha):
    length = check_elu_conv_transpose(x, weight, bias, stride, trim_left, trim_right)
    a = _activation(x, alpha).to(x.dtype).float()  # bfloat16: rounded before the products, as the kernel does
    y = torch.nn.functional.conv_transpose2d(a, weight.float(), bias.float(), stride=(1, stride))
    return y[..., trim_left : trim_left + length].to(x.dtype).contiguous(memory_format=torch.channels_last)


# --------------------------------------------------------------------------------------------------
# pack_int12, elu_resblock_int12, elu_conv_transpose_int12: the tail's 12-bit integer copies on the CPU

_INT12_MAX = 2047  # levels -2047..2047: a pair of products stays far inside int16 x int16 -> int32
_INT12_PANEL = 16  # output columns per panel of pack_int12's layout


def pack_int12(weight: torch.Tensor, transposed_stride: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A convolution's weights as 12-bit integers per output column, packed for :func:`elu_resblock_int12` and
    :func:`elu_conv_transpose_int12` (CPU).

    Args:
        weight: float32 or bfloat16, [O, I, 1, k] (a convolution: ``transposed_stride`` 0) or [I, Cout, 1, k] (a
            transposed convolution with stride ``transposed_stride`` >= 1, packed as its convolution over input
            rows: N = stride * Cout columns, ceil(k / stride) taps; column ``p * Cout + o``, tap ``j`` holds kernel
            position ``(taps - 1 - j) * stride + p`` of output channel o, zero past k). I even and > 0.
    Returns:
        (pairs, scale): ``scale`` float32 [N], each column's largest |weight| / 2047 (float32 division);
        ``pairs`` int32 [ceil(N / 16), taps, I / 2, 16], panels of 16 columns (zeros past N), each lane the int16
        pair of inputs 2c (low half) and 2c + 1 (high half) of ``q = round_half_even(w * (1 / scale))`` clamped to
        +-2047 (0 in a column whose scale is 0).

    Raises:
        ValueError / TypeError: for arguments outside the rules above (:func:`check_pack_int12`); ValueError for a
        weight that holds a NaN or an infinity.
    """
    if not torch.compiler.is_compiling():  # (traced, the fake kernel checks)
        check_pack_int12(weight, transposed_stride)
    return torch.ops.jasco_fast.pack_int12.default(weight, int(transposed_stride))


def elu_resblock_int12(
    x: torch.Tensor,
    w1: torch.Tensor,
    s1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    s2: torch.Tensor,
    b2: torch.Tensor,
    dilation: int,
    pad_left: int,
    pad_right: int,
    pad_mode: str,
    alpha: float,
) -> torch.Tensor:
    """:func:`elu_resblock` with 12-bit integer products: ``x + conv(elu(conv(elu(x), w1, b1)), w2, b2)`` (CPU).

    Args:
        x: [B, C, 1, T] float32 (read channels-last).
        w1, s1: :func:`pack_int12` of the first convolution [H, C, 1, k] (dilated by ``dilation``, its input padded
            as in :func:`elu_resblock`); b1: its bias, float32 [H].
        w2, s2: :func:`pack_int12` of the 1x1 convolution back [C, H, 1, 1]; b2: its bias, float32 [C].
        alpha: the ELU's alpha (both activations).
    Returns:
        [B, C, 1, T] float32 channels-last. Per batch item and tile of ``tile = clamp(16384 // max(C, H), 12, 512)
        // 12 * 12`` output steps (t0 = 0, tile, ...; ``valid = min(tile, T - t0)``): the ELU of the padded rows
        the tile reads (its ``valid + (k - 1) * dilation`` rows, all C channels) is rounded to 12-bit integers with
        ONE scale ``s_a = max |value| / 2047``, ``q = round_half_even(v * (1 / s_a))`` clamped to +-2047; conv1 =
        b1[h] + (integer sums) * (s_a * s1[h]); its ELU over the tile's ``valid`` rows (all H channels) is rounded
        the same way with one scale, and the output is x + b2 + (integer sums) * (s_h * s2[c]). The sums are exact
        int32 sums, added to the float32 result at least every 256 input pairs (a fused multiply-add with the
        float32 product of the two scales). A tile whose rounded input holds a NaN or an infinity has NaN outputs.
        No autograd formula.
    """
    if not torch.compiler.is_compiling():  # (traced, the fake kernel checks)
        check_elu_resblock_int12(x, w1, s1, b1, w2, s2, b2, dilation, pad_left, pad_right, pad_mode)
    return torch.ops.jasco_fast.elu_resblock_int12.default(
        x, w1, s1, b1, w2, s2, b2, dilation, pad_left, pad_right, pad_mode, float(alpha)
    )


def elu_conv_transpose_int12(
    x: torch.Tensor,
    w: torch.Tensor,
    s: torch.Tensor,
    bias: torch.Tensor,
    stride: int,
    kernel_size: int,
    trim_left: int,
    trim_right: int,
    alpha: float,
) -> torch.Tensor:
    """:func:`elu_conv_transpose` with 12-bit integer products (CPU).

    Args:
        x: [B, C, 1, T] float32 (read channels-last).
        w, s: ``pack_int12(weight, stride)`` of the transposed convolution's weight [C, Cout, 1, kernel_size].
        bias: float32 [Cout].
    Returns:
        [B, Cout, 1, (T - 1) * stride + kernel_size - trim_left - trim_right] float32 channels-last. The transposed
        convolution runs as a convolution over input rows u in [0, T + taps - 1) (taps = ceil(kernel_size /
        stride); row u gives output samples [u * stride, u * stride + stride)), in tiles of ``tile = clamp(65536 //
        C, 12, 512) // 12 * 12`` rows: a tile's input, the ELU of x rows ``u0 - taps + 1 ... u0 + valid - 1`` (zeros
        outside [0, T)), is rounded to 12-bit integers with one scale over those rows and all C channels, as in
        :func:`elu_resblock_int12`; each output is bias + (exact int32 sums) * (s_a * s[n]), added at least every
        256 input pairs. A tile whose rounded input holds a NaN or an infinity has NaN outputs. No autograd formula.
    """
    if not torch.compiler.is_compiling():  # (traced, the fake kernel checks)
        check_elu_conv_transpose_int12(x, w, s, bias, stride, kernel_size, trim_left, trim_right)
    return torch.ops.jasco_fast.elu_conv_transpose_int12.default(
        x, w, s, bias, stride, kernel_size, trim_left, trim_right, float(alpha)
    )


# The rules (csrc/cpu/elu_conv.cpp: pack_int12, int12_weights, check_float_vector, elu_resblock_int12,
# elu_conv_transpose_int12).


def check_pack_int12(weight, transposed_stride=0) -> tuple:
    """pack_int12's argument rules (csrc/cpu/elu_conv.cpp: pack_int12; a NaN or infinite weight is refused by the
    packing itself, from the values); returns (N columns, taps, I inputs)."""
    op = "pack_int12"
    _check_value(
        weight.dim() == 4 and weight.shape[2] == 1,
        lambda: (
            f"{op}: weight must be [out, in, 1, k] (or [in, out, 1, k] with transposed_stride), got shape "
            f"{list(weight.shape)}"
        ),
    )
    _check_type(weight.dtype in _TAIL_DTYPES, lambda: f"{op}: weight must be float32 or bfloat16, got {weight.dtype}")
    _check_value(transposed_stride >= 0, lambda: f"{op}: transposed_stride must be >= 0, got {transposed_stride}")
    inputs = weight.shape[0] if transposed_stride > 0 else weight.shape[1]
    _check_value(
        inputs % 2 == 0 and inputs > 0,
        lambda: f"{op}: the input channels must be a positive even number, got {inputs}",
    )
    _check_value(
        weight.shape[0] > 0 and weight.shape[1] > 0 and weight.shape[3] > 0,
        lambda: f"{op}: weight has no elements, shape {list(weight.shape)}",
    )
    if transposed_stride > 0:
        r = transposed_stride
        return r * weight.shape[1], (weight.shape[3] + r - 1) // r, inputs
    return weight.shape[0], weight.shape[3], inputs


def _check_int12_weights(op: str, name: str, pairs, scale, inputs, outputs, x):
    """(pairs, scale) as pack_int12 makes them for a convolution inputs -> outputs; returns its taps."""
    panels = (outputs + _INT12_PANEL - 1) // _INT12_PANEL
    _check_value(
        pairs.dim() == 4
        and pairs.shape[0] == panels
        and pairs.shape[1] >= 1
        and pairs.shape[2] * 2 == inputs
        and pairs.shape[3] == _INT12_PANEL,
        lambda: (
            f"{op}: {name} must be pack_int12's [{panels}, taps, {inputs // 2}, {_INT12_PANEL}] pairs, got shape "
            f"{list(pairs.shape)}"
        ),
    )
    _check_type(
        pairs.dtype == torch.int32 and scale.dtype == torch.float32,
        lambda: f"{op}: {name} must be int32 pairs and float32 scales, got {pairs.dtype} and {scale.dtype}",
    )
    _check_value(
        scale.dim() == 1 and scale.shape[0] == outputs,
        lambda: f"{op}: the scales of {name} must be [{outputs}], got shape {list(scale.shape)}",
    )
    _check_value(pairs.device == x.device and scale.device == x.device, lambda: f"{op}: {name} must be on x's device")
    _check_value(pairs.is_contiguous() and scale.is_contiguous(), lambda: f"{op}: {name} must be contiguous")
    return pairs.shape[1]


def _check_float_vector(op: str, name: str, b, n, x) -> None:
    _check_value(b.dim() == 1 and b.shape[0] == n, lambda: f"{op}: {name} must be [{n}], got shape {list(b.shape)}")
    _check_type(b.dtype == torch.float32, lambda: f"{op}: {name} must be float32, got {b.dtype}")
    _check_value(b.device == x.device, lambda: f"{op}: {name} must be on x's device")


def _check_int12_activations(op: str, x) -> None:
    _check_value(x.dim() == 4 and x.shape[2] == 1, lambda: f"{op}: x must be [B, C, 1, T], got shape {list(x.shape)}")
    _check_type(x.dtype == torch.float32, lambda: f"{op}: x must be float32, got {x.dtype}")
    _check_value(x.shape[3] >= 1, lambda: f"{op}: x needs at least one time step")


def check_elu_resblock_int12(x, w1, s1, b1, w2, s2, b2, dilation, pad_left, pad_right, pad_mode) -> None:
    """elu_resblock_int12's argument rules (csrc/cpu/elu_conv.cpp: elu_resblock_int12)."""
    op = "elu_resblock_int12"
    _check_int12_activations(op, x)
    C = x.shape[1]
    _check_value(b1.dim() == 1, lambda: f"{op}: b1 must be [H], got shape {list(b1.shape)}")
    H = b1.shape[0]
    k = _check_int12_weights(op, "w1", w1, s1, C, H, x)
    taps = _check_int12_weights(op, "w2", w2, s2, H, C, x)
    _check_value(taps == 1, lambda: f"{op}: w2 must be a 1x1 convolution's pairs, got {taps} taps")
    _check_float_vector(op, "b1", b1, H, x)
    _check_float_vector(op, "b2", b2, C, x)
    _check_padding(op, x, k, dilation, pad_left, pad_right, pad_mode)


def check_elu_conv_transpose_int12(x, w, s, bias, stride, kernel_size, trim_left, trim_right) -> int:
    """elu_conv_transpose_int12's argument rules (csrc/cpu/elu_conv.cpp: elu_conv_transpose_int12); returns the
    output length."""
    op = "elu_conv_transpose_int12"
    _check_int12_activations(op, x)
    _check_value(
        stride >= 1 and kernel_size >= 1,
        lambda: f"{op}: stride and kernel_size must be >= 1, got {stride} and {kernel_size}",
    )
    _check_value(
        bias.dim() == 1 and bias.shape[0] >= 1, lambda: f"{op}: bias must be [Cout], got shape {list(bias.shape)}"
    )
    C, Cout = x.shape[1], bias.shape[0]
    taps = (kernel_size + stride - 1) // stride
    packed_taps = _check_int12_weights(op, "w", w, s, C, stride * Cout, x)
    _check_value(
        packed_taps == taps,
        lambda: f"{op}: w has {packed_taps} taps, a kernel of {kernel_size} at stride {stride} has {taps}",
    )
    _check_float_vector(op, "bias", bias, Cout, x)
    return _trimmed_length(op, x.shape[3], stride, kernel_size, trim_left, trim_right)


@torch.library.register_fake("jasco_fast::pack_int12")
def _(weight, transposed_stride=0):
    N, taps, inputs = check_pack_int12(weight, transposed_stride)
    panels = (N + _INT12_PANEL - 1) // _INT12_PANEL
    pairs = weight.new_empty((panels, taps, inputs // 2, _INT12_PANEL), dtype=torch.int32)
    return pairs, weight.new_empty((N,), dtype=torch.float32)


@torch.library.register_fake("jasco_fast::elu_resblock_int12")
def _(x, w1, s1, b1, w2, s2, b2, dilation, pad_left, pad_right, pad_mode, alpha):
    check_elu_resblock_int12(x, w1, s1, b1, w2, s2, b2, dilation, pad_left, pad_right, pad_mode)
    return torch.empty_like(x, memory_format=torch.channels_last)


@torch.library.register_fake("jasco_fast::elu_conv_transpose_int12")
def _(x, w, s, bias, stride, kernel_size, trim_left, trim_right, alpha):
    length = check_elu_conv_transpose_int12(x, w, s, bias, stride, kernel_size, trim_left, trim_right)
    return x.new_empty((x.shape[0], bias.shape[0], 1, length)).contiguous(memory_format=torch.channels_last)


# The int12 ops in PyTorch ops, with the kernels' tiles, scales and rounding: the integer sums are exact in float64
# and scaled once (the kernels add them in chunks of 256 pairs, float32 FMAs: a float32 rounding apart), and torch's
# ELU is not the kernels' polynomial bit for bit, so a value within ~1e-7 of a rounding boundary may round to the
# next level there.


def _int12_row_convolution(weight: torch.Tensor, stride: int) -> torch.Tensor:
    """float32 [N, I, taps]: the convolution pack_int12 packs (csrc/cpu/elu_conv.cpp: as_row_convolution)."""
    w = weight.float().squeeze(2)
    if stride == 0:
        return w
    C, Cout, k = w.shape
    taps = -(-k // stride)
    w = torch.nn.functional.pad(w, (0, taps * stride - k)).view(C, Cout, taps, stride).flip(2)
    return w.permute(3, 1, 0, 2).reshape(stride * Cout, C, taps)


def _int12_rounded(v: torch.Tensor, dims) -> tuple[torch.Tensor, torch.Tensor]:
    """(levels, scale) of float32 ``v`` with one scale per slice over ``dims``: max |v| / 2047 (NaN where a value is
    not finite), levels ``round_half_even(v * (1 / scale))`` clamped to +-2047, 0 where the scale is 0 or NaN."""
    absmax = v.abs().amax(dim=dims, keepdim=True)  # (amax propagates NaN)
    scale = torch.where(absmax.isfinite(), absmax / _INT12_MAX, torch.full_like(absmax, float("nan")))
    inverse = torch.div(torch.ones_like(scale), scale)  # float32 1 / scale, then a float32 product, as in C++
    levels = (v * inverse).round_().clamp_(-_INT12_MAX, _INT12_MAX)
    return torch.where(scale > 0, levels, torch.zeros_like(levels)), scale


def _int12_levels(pairs: torch.Tensor, columns: int) -> torch.Tensor:
    """pack_int12's pairs -> float64 levels [N, I, taps] (exact: integers below 2^11)."""
    P, taps, K2, _ = pairs.shape
    lanes = pairs.long() & 0xFFFFFFFF
    halves = torch.stack([lanes & 0xFFFF, lanes >> 16], dim=-1)  # [P, taps, K2, 16, 2]
    signed = (halves ^ 0x8000) - 0x8000  # int16 sign extension
    levels = signed.permute(0, 3, 2, 4, 1).reshape(P * _INT12_PANEL, 2 * K2, taps)
    return levels[:columns].double()


def _int12_windows(a: torch.Tensor, tile: int, halo: int) -> torch.Tensor:
    """[B, C, L] -> [B, tiles, C, tile + halo]: window j covers positions j * tile ... j * tile + tile + halo - 1
    (zeros past L), for L - halo positions in tiles of ``tile``."""
    B, C, L = a.shape
    tiles = -(-(L - halo) // tile)
    a = torch.nn.functional.pad(a, (0, tiles * tile + halo - L))
    return a.unfold(2, tile + halo, tile).permute(0, 2, 1, 3)


def _int12_gemm(windows: torch.Tensor, levels: torch.Tensor, dilation: int) -> torch.Tensor:
    """Exact integer sums (float64) of a convolution's levels [N, I, taps] over rounded windows [B, tiles, I, W]:
    [B, tiles, N, W - (taps - 1) * dilation]."""
    B, tiles, inputs, W = windows.shape
    sums = torch.nn.functional.conv2d(
        windows.reshape(B * tiles, inputs, 1, W), levels.unsqueeze(2), dilation=(1, dilation)
    )
    return sums.reshape(B, tiles, levels.shape[0], W - (levels.shape[2] - 1) * dilation)


def _int12_scaled(sums: torch.Tensor, scale_in: torch.Tensor, scale_w: torch.Tensor, base: torch.Tensor):
    """float32 of base + sums * (scale_in * scale_w), the product of the scales in float32 as the kernels form it."""
    column = (scale_in * scale_w.float().view(-1, 1)).double()  # scale_in: [B, tiles, 1, 1]
    return (base.double() + sums * column).float()


@register_fallback("jasco_fast::pack_int12")
def pack_int12_fallback(weight, transposed_stride=0):
    """pack_int12's arithmetic and layout in PyTorch ops (bit for bit the CPU kernel's)."""
    N, taps, inputs = check_pack_int12(weight, transposed_stride)
    w = _int12_row_convolution(weight, transposed_stride)  # [N, I, taps]
    if not bool(w.isfinite().all()):
        raise ValueError("pack_int12: weight holds a NaN or an infinity")
    levels, scale = _int12_rounded(w, (1, 2))  # one scale per output column
    levels, scale = levels.long(), scale.view(N)
    panels = -(-N // _INT12_PANEL)
    levels = torch.nn.functional.pad(levels, (0, 0, 0, 0, 0, panels * _INT12_PANEL - N))
    halves = (levels & 0xFFFF).view(panels, _INT12_PANEL, inputs // 2, 2, taps)
    lanes = halves[:, :, :, 0] | (halves[:, :, :, 1] << 16)  # [panels, 16, I / 2, taps], in [0, 2^32)
    lanes = torch.where(lanes >= 2**31, lanes - 2**32, lanes).to(torch.int32)
    return lanes.permute(0, 3, 2, 1).contiguous(), scale


@register_fallback("jasco_fast::elu_resblock_int12")
def elu_resblock_int12_fallback(x, w1, s1, b1, w2, s2, b2, dilation, pad_left, pad_right, pad_mode, alpha):
    check_elu_resblock_int12(x, w1, s1, b1, w2, s2, b2, dilation, pad_left, pad_right, pad_mode)
    B, C, _, T = x.shape
    H = b1.shape[0]
    levels1, levels2 = _int12_levels(w1, H), _int12_levels(w2, C)
    span = (levels1.shape[2] - 1) * dilation
    tile = max(12, min(512, 16384 // max(C, H, 1))) // 12 * 12
    # conv1: per tile, the padded ELU rows it reads, rounded with one scale
    a = _padded(_activation(x, alpha), pad_left, pad_right, pad_mode).squeeze(2)  # [B, C, T + span]
    q, scale_a = _int12_rounded(_int12_windows(a, tile, span), (2, 3))
    hidden = _int12_scaled(_int12_gemm(q.double(), levels1, dilation), scale_a, s1, b1.view(H, 1))
    # conv2: the hidden ELU of the tile's valid rows, rounded with one scale (the rows past T hold nothing)
    tiles = hidden.shape[1]
    steps = torch.arange(tiles * tile, device=x.device).view(1, tiles, 1, tile)
    h = torch.where(steps < T, _activation(hidden, alpha), torch.zeros_like(hidden))
    q, scale_h = _int12_rounded(h, (2, 3))
    sums = torch.einsum("bjht,ch->bjct", q.double(), levels2[:, :, 0])
    residual = x.float().squeeze(2) + b2.view(C, 1)  # in float32, as the kernel adds them first
    residual = torch.nn.functional.pad(residual, (0, tiles * tile - T)).view(B, C, tiles, tile).transpose(1, 2)
    y = _int12_scaled(sums, scale_h, s2, residual)  # [B, tiles, C, tile]
    y = y.permute(0, 2, 1, 3).reshape(B, C, tiles * tile)[:, :, :T]
    return y.unsqueeze(2).contiguous(memory_format=torch.channels_last)


@register_fallback("jasco_fast::elu_conv_transpose_int12")
def elu_conv_transpose_int12_fallback(x, w, s, bias, stride, kernel_size, trim_left, trim_right, alpha):
    length = check_elu_conv_transpose_int12(x, w, s, bias, stride, kernel_size, trim_left, trim_right)
    B, C, _, T = x.shape
    Cout = bias.shape[0]
    N, taps = stride * Cout, -(-kernel_size // stride)
    tile = max(12, min(512, 65536 // C)) // 12 * 12
    # row u reads x rows u - taps + 1 ... u: the ELU padded by taps - 1 zeros on both sides
    a = torch.nn.functional.pad(_activation(x, alpha).squeeze(2), (taps - 1, taps - 1))
    q, scale_a = _int12_rounded(_int12_windows(a, tile, taps - 1), (2, 3))
    y = _int12_scaled(_int12_gemm(q.double(), _int12_levels(w, N), 1), scale_a, s, bias.repeat(stride).view(N, 1))
    tiles = y.shape[1]
    # [B, tiles, N, tile] -> rows u = tile index * tile + r, each `stride` samples of Cout channels
    y = y.permute(0, 1, 3, 2).reshape(B, tiles * tile * stride, Cout)[:, trim_left : trim_left + length]
    return y.transpose(1, 2).unsqueeze(2).contiguous(memory_format=torch.channels_last)
