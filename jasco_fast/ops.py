"""The fused op ``torch.ops.jasco_fast.denorm_transpose`` and its Python face.

``denorm_transpose(latents [B, T, D], mean, std, dtype=None, channels_last=False) -> [B, D, T]`` computes
``(latents * std + mean).permute(0, 2, 1)`` (and the cast to ``dtype``) in one pass over memory. The
arithmetic is float32 (float64 when latents or the output are float64), rounded once to the output dtype.
The kernels live in ``csrc/``; this module adds the fake (meta) kernel that lets torch.compile trace
through the op, the autograd formula, and the PyTorch fallback that runs the op on devices the extension
has no kernel for (see ``register_fallback``).
"""
from __future__ import annotations

import threading
import warnings
from typing import Callable

import torch

try:
    from jasco_fast import _C  # noqa: F401  (loading the extension registers the ops)
except ImportError as exc:  # typically: built against another torch than the one installed now
    raise ImportError(f"jasco_fast's compiled extension (jasco_fast._C) failed to load with torch "
                      f"{torch.__version__}: {exc}. Rebuild it against the installed torch: "
                      f"`pip install --no-build-isolation -e .` in the source tree (or `make install`)") from exc

__all__ = ["JASCO_LATENT_MEAN", "JASCO_LATENT_STD", "denormalize_transpose", "FallbackWarning", "FALLBACKS",
           "register_fallback", "missing_kernel_hint", "denorm_transpose_fallback"]

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
    if device.type == "cuda" and torch.version.hip:
        return ("jasco_fast compiles no HIP kernels (a ROCm torch builds the CPU kernels only), so this "
                "fallback is the AMD GPU path")
    if device.type == "cuda":
        return (f"the extension was built without its CUDA kernels (nvcc not found, or JASCO_FAST_NO_CUDA=1): "
                f"install the CUDA {torch.version.cuda} toolkit or set CUDA_HOME, then rebuild with "
                f"`pip install --no-build-isolation -e .`")
    if device.type == "cpu":
        return "the extension was built without its CPU kernel: rebuild with `pip install --no-build-isolation -e .`"
    return f"jasco_fast has no {device.type} kernels, so this fallback is the {device.type} path"


def _warn_once(op: str, device: torch.device) -> None:
    key = (op, _device_name(device))
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(f"{op} has no compiled kernel for {key[1]} tensors; running its PyTorch implementation "
                  f"(same results, slower); {missing_kernel_hint(device)}. `jasco-fast info` lists the "
                  f"compiled kernels.", FallbackWarning, stacklevel=3)


def _device_of(args) -> torch.device:
    """The device of an op call: that of its first tensor (also inside a Tensor[] argument)."""
    for a in args:
        for t in (a if isinstance(a, (list, tuple)) else (a,)):
            if isinstance(t, torch.Tensor):
                return t.device
    return torch.device("cpu")


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
        if any(torch._C._dispatch_has_kernel_for_dispatch_key(op, key)
               for key in ("CompositeExplicitAutograd", "CompositeImplicitAutograd")):
            return function

        def kernel(*args, **kwargs):
            _warn_once(op, _device_of(args))
            return FALLBACKS[op](*args, **kwargs)  # looked up per call: the registry says what runs

        namespace, name = op.split("::", 1)
        if namespace not in _fallback_libraries:
            _fallback_libraries[namespace] = torch.library.Library(namespace, "FRAGMENT")
        _fallback_libraries[namespace].impl(name, kernel, "CompositeExplicitAutograd")
        FALLBACKS[op] = function
        return function
    return register


@register_fallback("jasco_fast::denorm_transpose")
def denorm_transpose_fallback(latents: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                              dtype: torch.dtype | None = None, channels_last: bool = False) -> torch.Tensor:
    """The kernels' arithmetic in PyTorch ops: compute type float32 (float64 when latents or the output are
    float64), multiply then add (two roundings, no FMA: separate ops), one rounding to the output dtype, and
    the same output strides. Bit for bit the CPU kernel's result."""
    out_dtype = _check(latents, mean, std, dtype)
    B, T, D = latents.shape
    out = (latents.new_empty((B, T, D), dtype=out_dtype).transpose(1, 2) if channels_last
           else latents.new_empty((B, D, T), dtype=out_dtype))
    if out.numel() == 0:
        return out
    wide = torch.float64 if torch.float64 in (latents.dtype, out_dtype) else torch.float32
    scaled = latents.to(wide) * std.to(wide).reshape(-1)
    out.transpose(1, 2).copy_(scaled.add_(mean.to(wide).reshape(-1)))  # copy_ rounds once to out_dtype
    return out
