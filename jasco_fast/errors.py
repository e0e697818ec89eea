"""Errors users can act on: out of memory while decoding says how much was asked for and what to change.

CPU allocations that fail raise a plain ``RuntimeError`` ("DefaultCPUAllocator: can't allocate memory"),
GPUs raise ``torch.OutOfMemoryError`` ("CUDA out of memory", "HIP out of memory"), MPS a ``RuntimeError``
("MPS backend out of memory"). ``decoding_out_of_memory`` turns any of them into one
``torch.OutOfMemoryError`` (a ``RuntimeError`` subclass) naming the batch and the remedies.
"""

from __future__ import annotations

import torch

__all__ = ["is_out_of_memory", "decoding_out_of_memory", "first_line"]

# What the allocators say (CPU on Linux/macOS, CPU on Windows, CUDA/ROCm/MPS).
_MARKERS = ("can't allocate memory", "not enough memory", "out of memory")


def first_line(problem: object, default: str | None = None) -> str:
    """The first line of an error message (an exception or a string), for reports of one line each; if there is
    none, ``default``, else the exception's type name."""
    lines = str(problem).strip().splitlines()
    if lines:
        return lines[0]
    if default is not None:
        return default
    return type(problem).__name__ if isinstance(problem, BaseException) else ""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (also one raised inside torch.compile's generated code)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _MARKERS)


def decoding_out_of_memory(
    exc: BaseException, batch: int, frames: int, frame_rate: float, device: torch.device, dtype: torch.dtype
) -> torch.OutOfMemoryError:
    """The error to raise (``from exc``) when decoding [batch, frames, D] latents ran out of memory."""
    smaller_dtype = (
        ""
        if dtype in (torch.bfloat16, torch.float16)
        else (", or a 16-bit compute dtype (dtype=torch.bfloat16 / --dtype bfloat16)")
    )
    return torch.OutOfMemoryError(
        f"out of memory decoding a batch of {batch} x {frames} latent frames ({frames / frame_rate:.1f} s of "
        f"audio each) on {device} in {str(dtype).replace('torch.', '')}: decode fewer items at once (a smaller "
        f"batch; --batch-size on the command line) or in chunks (chunk_frames; --chunk-frames on the command "
        f"line){smaller_dtype}. The allocator said: {first_line(exc)}"
    )
