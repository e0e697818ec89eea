"""The ops' schemas, and the compiled extension that brings their kernels.

The schemas are defined here, not in C++, so that ``torch.ops.jasco_fast.*`` exist (with their fake kernels,
autograd and PyTorch fallbacks, jasco_fast/ops.py) wherever the extension cannot load: a torch older than the
one it targets, a wheel for another platform, a source tree never built. The extension (``jasco_fast._C``) is
built on PyTorch's stable ABI: built against torch ``TORCH_TARGET`` it loads in that torch and every later one,
and registers its CPU and CUDA kernels for these schemas.

``STATUS`` says what happened at import: ``loaded``, and the ``reason`` the kernels are missing when not;
``jasco-fast info`` shows both. A missing extension warns once (:class:`ExtensionWarning`) and every op runs
its PyTorch implementation.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import warnings

import torch

__all__ = ["TORCH_TARGET", "SCHEMAS", "STATUS", "ExtensionWarning", "ExtensionStatus"]

# The oldest torch the extension serves: setup.py builds with TORCH_TARGET_VERSION set to it (the stable ABI
# then keeps the binary loadable in every later torch). A torch older than this gets the PyTorch fallbacks.
TORCH_TARGET = (2, 13)

# needs_fixed_stride_order: inductor keeps the strides the kernel returns (contiguous [B, D, T] or channels-last)
# instead of restriding the output.
_FIXED = (torch.Tag.needs_fixed_stride_order,)

# name -> (schema, tags). The kernels' contracts are in the docstrings of jasco_fast/ops.py's Python faces.
SCHEMAS: dict[str, tuple[str, tuple]] = {
    # (latents * std + mean).permute(0, 2, 1), cast to dtype: [B, T, D] -> [B, D, T], contiguous or channels-last.
    "denorm_transpose": (
        "denorm_transpose(Tensor latents, Tensor mean, Tensor std, ScalarType? dtype=None, "
        "bool channels_last=False) -> Tensor",
        _FIXED,
    ),
    # What the CPU kernels' run-time dispatch chose on this machine: "avx2+f16c" or "portable".
    "cpu_fast_path": ("cpu_fast_path() -> str", ()),
    # The arithmetic of the CPU LSTM kernel's int8 recurrent matvec: "avx512_vnni", "avx2_u7" or "float32".
    "lstm_int8_matvec": ("lstm_int8_matvec() -> str", ()),
    # lstm(seq) + seq for a batch-first unidirectional LSTM with biases, from state (h0, c0); also the state
    # after the first state_frames frames. recurrent_dtype: W_hh as given, rounded to bfloat16, or int8.
    "lstm_skip": (
        "lstm_skip(Tensor seq, Tensor[] weights, int num_layers, Tensor? h0=None, Tensor? c0=None, "
        "int? state_frames=None, ScalarType? recurrent_dtype=None, Tensor? packed=None) -> (Tensor, Tensor, Tensor)",
        _FIXED,
    ),
    # Each w_hh packed for lstm_skip's CPU kernel: one uint8 tensor, a segment with a checked header per layer.
    "lstm_pack": ("lstm_pack(Tensor[] w_hh, ScalarType? recurrent_dtype=None) -> Tensor", ()),
    # Residual vector quantisation decode: out[b, :, t] = sum over k < K of codebooks[k, codes[b, k, t], :].
    "codes_to_latents": (
        "codes_to_latents(Tensor codes, Tensor codebooks, ScalarType? dtype=None, bool channels_last=False) -> Tensor",
        _FIXED,
    ),
    # The SEANet decoder's tail, fused per time tile (CPU): x + conv(act(conv(act(x)))), conv(act(x)) and
    # conv_transpose(act(x)), act = ELU(alpha), outputs channels-last [B, *, 1, T].
    "elu_resblock": (
        "elu_resblock(Tensor x, Tensor w1, Tensor b1, Tensor w2, Tensor b2, int dilation, int pad_left, "
        "int pad_right, str pad_mode, float alpha) -> Tensor",
        _FIXED,
    ),
    "elu_conv": (
        "elu_conv(Tensor x, Tensor weight, Tensor bias, int dilation, int pad_left, int pad_right, str pad_mode, "
        "float alpha) -> Tensor",
        _FIXED,
    ),
    "elu_conv_transpose": (
        "elu_conv_transpose(Tensor x, Tensor weight, Tensor bias, int stride, int trim_left, int trim_right, "
        "float alpha) -> Tensor",
        _FIXED,
    ),
    # The 12-bit integer copies of elu_resblock and elu_conv_transpose (float32 x; 12-bit weights per output
    # column and inputs per tile, int32 sums), with weights packed once by pack_int12.
    "pack_int12": ("pack_int12(Tensor weight, int transposed_stride=0) -> (Tensor, Tensor)", ()),
    "elu_resblock_int12": (
        "elu_resblock_int12(Tensor x, Tensor w1, Tensor s1, Tensor b1, Tensor w2, Tensor s2, Tensor b2, int dilation, "
        "int pad_left, int pad_right, str pad_mode, float alpha) -> Tensor",
        _FIXED,
    ),
    "elu_conv_transpose_int12": (
        "elu_conv_transpose_int12(Tensor x, Tensor w, Tensor s, Tensor bias, int stride, int kernel_size, "
        "int trim_left, int trim_right, float alpha) -> Tensor",
        _FIXED,
    ),
}


class ExtensionWarning(UserWarning):
    """jasco_fast's compiled kernels are not loaded: every op runs its PyTorch implementation."""


@dataclasses.dataclass(frozen=True)
class ExtensionStatus:
    loaded: bool
    path: str | None  # the shared library, when found
    reason: str | None  # why the kernels are missing (None when loaded)


_library = torch.library.Library("jasco_fast", "DEF")
for _schema, _tags in SCHEMAS.values():
    _library.define(_schema, tags=_tags)


def _torch_release() -> tuple[int, int]:
    parts = torch.__version__.split("+")[0].split(".")
    return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)


def _load() -> ExtensionStatus:
    spec = importlib.util.find_spec("jasco_fast._C")
    path = spec.origin if spec is not None else None
    if path is None:
        return ExtensionStatus(
            False,
            None,
            "jasco_fast._C is not built (a source tree without `pip install .`, or a pure-Python install)",
        )
    target = ".".join(map(str, TORCH_TARGET))
    if _torch_release() < TORCH_TARGET:
        return ExtensionStatus(
            False,
            path,
            f"torch {torch.__version__} is older than torch {target}, the oldest the extension serves (it is "
            f"built on the stable ABI of torch {target}); upgrade torch, or build jasco_fast against this one",
        )
    try:
        importlib.import_module("jasco_fast._C")
    except (ImportError, OSError) as exc:
        return ExtensionStatus(
            False, path, f"{path} failed to load with torch {torch.__version__}: {exc}".replace("\n", " ")
        )
    return ExtensionStatus(True, path, None)


STATUS = _load()
if not STATUS.loaded:
    warnings.warn(
        f"jasco_fast's compiled kernels are not loaded: {STATUS.reason}. Every op runs its PyTorch "
        f"implementation (same results, slower); `jasco-fast info` says more.",
        ExtensionWarning,
        stacklevel=2,
    )
