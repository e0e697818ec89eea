"""Reading the decoder's inputs: latent and code files (.pt / .pth, .npy, .safetensors), read safely (no pickled
code, sizes checked before anything large is allocated) and checked for shape, dtype and values.

Every problem with a file is a ``ValueError`` whose message says what is wrong with it (the CLI reports it on
one line, naming the file, and decodes the others).
"""

from __future__ import annotations

from pathlib import Path

import torch

from jasco_fast.guards import CheckpointError, check_torch_zip, read_safetensors_header

__all__ = ["LATENT_SUFFIXES", "load_tensor", "read_latents", "is_codes", "read_codes"]

LATENT_SUFFIXES = (".pt", ".pth", ".npy", ".safetensors")


def load_tensor(path: Path) -> torch.Tensor:
    """The one tensor of a .pt / .npy / .safetensors file (read safely: no pickled code)."""
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth"):
        try:
            check_torch_zip(path)  # no zip bomb
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except CheckpointError as exc:
            raise ValueError(exc.problem) from None
        except OSError as exc:
            raise ValueError(f"cannot read it: {exc.strerror or exc}") from None
        except Exception:
            raise ValueError(
                "not a readable torch file (truncated, corrupt, or holding Python objects, which are refused)"
            ) from None
        tensor = _pick_tensor(obj)
    elif suffix == ".npy":
        import numpy as np

        try:
            array = np.load(path, allow_pickle=False)
        except OSError as exc:
            raise ValueError(f"cannot read it: {exc.strerror or exc}") from None
        except Exception:
            raise ValueError(
                "not a readable .npy file (truncated, corrupt, or holding Python objects, which are refused)"
            ) from None
        if array.dtype.kind not in "fiub":
            raise ValueError(f"latents must be floating point, got numpy dtype {array.dtype}")
        tensor = torch.from_numpy(array.astype(array.dtype.newbyteorder("="), copy=False))
    elif suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            read_safetensors_header(path)  # sizes checked against the file before the library allocates
            state = load_file(str(path))
        except CheckpointError as exc:
            raise ValueError(exc.problem) from None
        except OSError as exc:
            raise ValueError(f"cannot read it: {exc.strerror or exc}") from None
        except Exception:
            raise ValueError("not a readable safetensors file (truncated or corrupt)") from None
        tensor = _pick_tensor(state)
    else:
        raise ValueError(f"unsupported file type {suffix!r} (expected {', '.join(LATENT_SUFFIXES)})")
    return tensor


def read_latents(path: Path, dimension: int, tensor: torch.Tensor | None = None) -> tuple[torch.Tensor, bool]:
    """Latents [B, T, D] (float32) from a .pt / .npy / .safetensors file holding [T, D] or [B, T, D], and
    whether the file held a single [T, D] item."""
    tensor = load_tensor(path) if tensor is None else tensor
    if not tensor.is_floating_point():
        raise ValueError(f"latents must be floating point, got {tensor.dtype}")
    single = tensor.dim() == 2
    if single:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 3:
        raise ValueError(f"latents must be [T, D] or [B, T, D], got shape {list(tensor.shape)}")
    if tensor.shape[2] != dimension:
        raise ValueError(f"latents have D = {tensor.shape[2]}, the decoder expects D = {dimension}")
    if tensor.shape[1] < 1 or tensor.shape[0] < 1:
        raise ValueError(f"no frames in latents of shape {list(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise ValueError("latents contain NaN or Inf")
    return tensor.float(), single


def is_codes(tensor: torch.Tensor) -> bool:
    """Integer tensors are EnCodec codes, floating-point ones latents."""
    return not (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool)


def read_codes(path: Path, tensor: torch.Tensor, num_codebooks: int, codebook_size: int) -> tuple[torch.Tensor, bool]:
    """EnCodec codes from a file's integer tensor [K, T] or [B, K, T]: (codes [B, K, T] int64, whether the
    file held a single [K, T] item). K <= num_codebooks (the first K codebooks are used)."""
    single = tensor.dim() == 2
    if single:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 3:
        raise ValueError(f"codes must be [K, T] or [B, K, T], got shape {list(tensor.shape)}")
    if not 1 <= tensor.shape[1] <= num_codebooks:
        raise ValueError(
            f"codes have K = {tensor.shape[1]} codebooks, the quantizer has {num_codebooks} "
            f"(codes are [K, T] or [B, K, T])"
        )
    if tensor.shape[2] < 1 or tensor.shape[0] < 1:
        raise ValueError(f"no frames in codes of shape {list(tensor.shape)}")
    tensor = tensor.long()
    if tensor.min() < 0 or tensor.max() >= codebook_size:
        raise ValueError(
            f"codes must lie in [0, {codebook_size}), got values in [{int(tensor.min())}, {int(tensor.max())}]"
        )
    return tensor, single


def _pick_tensor(obj) -> torch.Tensor:
    """A file's one tensor, or its 'latents' / 'codes' entry."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        for key in ("latents", "codes"):
            if isinstance(obj.get(key), torch.Tensor):
                return obj[key]
            if key in obj:
                raise ValueError(f"its {key!r} entry is a {type(obj[key]).__name__}, not a tensor")
        tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            return tensors[0]
        raise ValueError(f"expected one tensor or a 'latents' / 'codes' key, found keys {sorted(map(str, obj))[:6]}")
    raise ValueError(f"expected a tensor, found {type(obj).__name__}")
