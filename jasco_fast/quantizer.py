"""EnCodec's residual vector quantiser (RVQ), decode side: codes [B, K, T] -> latents [B, T, D].

The latents are the sum over the first K codebooks of ``codebook_k[codes[:, k, t]]`` (what MusicGen and
AudioGen tokens mean); the fused op ``codes_to_latents`` computes it in one pass. The codebooks come from
the checkpoints :func:`jasco_fast.load_decoder` reads, with the same file reading and errors:

* audiocraft exports: ``quantizer.vq.layers.{k}._codebook.embed`` ([codebook_size, D] each);
* transformers EnCodec folders: ``quantizer.layers.{k}.codebook.embed``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from jasco_fast.loading import CheckpointError, read_checkpoint
from jasco_fast.ops import codes_to_latents

__all__ = ["Quantizer", "load_quantizer", "quantizer_from_state"]

# Where each format keeps codebook k: (prefix, suffix) around k.
_CODEBOOK_KEY = {
    "audiocraft": ("quantizer.vq.layers.", "._codebook.embed"),
    "transformers": ("quantizer.layers.", ".codebook.embed"),
}


class Quantizer(nn.Module):
    """RVQ codebooks [num_codebooks, codebook_size, D] (a buffer) and their decode.

    Args:
        codebooks: [num_codebooks, codebook_size, D] floating-point tensor (copied).
    """

    def __init__(self, codebooks: torch.Tensor):
        super().__init__()
        if not isinstance(codebooks, torch.Tensor) or not codebooks.is_floating_point():
            raise TypeError("codebooks must be a floating-point tensor")
        if codebooks.dim() != 3 or 0 in codebooks.shape:
            raise ValueError(
                f"codebooks must be [num_codebooks, codebook_size, D] with no empty axis, got {list(codebooks.shape)}"
            )
        self.register_buffer("codebooks", codebooks.detach().clone().contiguous())

    @property
    def num_codebooks(self) -> int:
        return self.codebooks.shape[0]

    @property
    def codebook_size(self) -> int:
        return self.codebooks.shape[1]

    @property
    def dimension(self) -> int:
        return self.codebooks.shape[2]

    def decode(self, codes: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        """codes [B, K, T] (any integer dtype, values in [0, codebook_size); K <= num_codebooks, the first K
        codebooks used) -> latents [B, T, D] in ``dtype`` (default: the codebooks'), on the codebooks' device."""
        codes = as_codes(codes)
        # channels-last [B, D, T] is [B, T, D] memory: the transpose back is a contiguous view
        return codes_to_latents(
            codes.to(self.codebooks.device), self.codebooks, dtype=dtype, channels_last=True
        ).transpose(1, 2)

    def extra_repr(self) -> str:
        return f"num_codebooks={self.num_codebooks}, codebook_size={self.codebook_size}, dimension={self.dimension}"


def as_codes(codes) -> torch.Tensor:
    """``codes`` as an int64/int32 tensor (other integer dtypes widened to int64); TypeError otherwise."""
    if not isinstance(codes, torch.Tensor):
        raise TypeError(f"codes must be a tensor, got {type(codes).__name__}")
    if codes.dtype in (torch.int64, torch.int32):
        return codes
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
    return codes.long()


def quantizer_from_state(
    state: dict, fmt: str, source, *, device="cpu", dtype=torch.float32, dimension: int | None = None
) -> Quantizer:
    """A :class:`Quantizer` from an upstream state dict (``fmt``: 'audiocraft' or 'transformers');
    ``source`` names where the state came from, for error messages; ``dimension``: the D the decoder reads."""
    path = Path(str(source))
    prefix, suffix = _CODEBOOK_KEY[fmt]
    pattern = re.compile(re.escape(prefix) + r"(\d+)" + re.escape(suffix))
    found = {int(m.group(1)): v for k, v in state.items() if (m := pattern.fullmatch(k))}
    if not found:
        raise CheckpointError(
            path,
            f"no quantizer codebooks (keys {prefix}<k>{suffix}): this checkpoint holds no "
            f"RVQ, so it cannot decode codes",
        )
    if sorted(found) != list(range(len(found))):
        raise CheckpointError(
            path, f"quantizer codebooks are not numbered 0..{len(found) - 1}: found {sorted(found)[:8]}"
        )
    projections = sorted(k for k in state if k.startswith(prefix) and (".project_in." in k or ".project_out." in k))
    if projections:
        raise CheckpointError(
            path,
            f"quantizer with codebook projections ({projections[0]}, ...) is not supported: "
            f"only EnCodec's RVQ, whose codebooks have the latent dimension",
        )
    books = [found[k] for k in range(len(found))]
    for k, book in enumerate(books):
        key = f"{prefix}{k}{suffix}"
        if not isinstance(book, torch.Tensor) or not book.is_floating_point():
            raise CheckpointError(path, f"{key!r} is not a floating-point tensor")
        if book.dim() != 2 or book.shape != books[0].shape or 0 in book.shape:
            raise CheckpointError(
                path,
                f"{key!r} has shape {list(book.shape)}; every codebook must be "
                f"[codebook_size, D] = {list(books[0].shape)}",
            )
        if not torch.isfinite(book).all():
            raise CheckpointError(path, f"{key!r} holds NaN or Inf")
    if dimension is not None and books[0].shape[1] != dimension:
        raise CheckpointError(path, f"codebooks have D = {books[0].shape[1]}, the decoder reads D = {dimension}")
    return Quantizer(torch.stack(books).to(device=device, dtype=dtype))


def load_quantizer(path, *, device="cpu", dtype=torch.float32) -> Quantizer:
    """Load the RVQ codebooks from a checkpoint file or directory: the formats and the errors of
    :func:`jasco_fast.load_decoder` (:class:`CheckpointError` naming the file and the problem; pickles read
    with ``weights_only=True``). Returns a :class:`Quantizer` on ``device`` in ``dtype``."""
    config, state, fmt, source = read_checkpoint(path)
    return quantizer_from_state(state, fmt, source, device=device, dtype=dtype, dimension=config.dimension)
