"""jasco_fast: turn JASCO's continuous latents into audio files, fast.

Fused denormalize-transpose op, EnCodec decoder (faithful, compiled, channels-last, chunked for long
inputs), checkpoint loading, in-process audio output, and a drop-in patch for audiocraft's JASCO; EnCodec
codes (MusicGen / AudioGen tokens) through the same path (fused RVQ decode op, CodeDecoder).

The names below are imported on first use (PEP 562), so ``import jasco_fast`` costs little beyond
``import torch`` and a process pays only for what it uses (e.g. decoding needs no audio-file modules). The
ops (``torch.ops.jasco_fast.*``) are registered on import.
"""

from __future__ import annotations

import importlib

from jasco_fast import decoder as _decoder  # noqa: F401  (importing jasco_fast registers its ops)
from jasco_fast import ops as _ops  # noqa: F401

__version__ = "0.2.0"  # the one version number: pyproject.toml reads it from here

# public name -> its module (None: the name is a module of the package)
_WHERE = {
    "reference": None,
    "artifacts": None,
    "audio_write": "audio",
    "write_batch": "audio",
    "SEANetDecoder": "decoder",
    "DecoderConfig": "decoder",
    "patch": "jasco",
    "unpatch": "jasco",
    "CheckpointError": "loading",
    "load_decoder": "loading",
    "JASCO_LATENT_MEAN": "ops",
    "JASCO_LATENT_STD": "ops",
    "denormalize_transpose": "ops",
    "codes_to_latents": "ops",
    "LatentDecoder": "pipeline",
    "CodeDecoder": "pipeline",
    "Quantizer": "quantizer",
    "load_quantizer": "quantizer",
    "PerformanceWarning": "modes",
    "modes": None,
    "reuse_freed_memory": "memory",
}

__all__ = [
    "JASCO_LATENT_MEAN",
    "JASCO_LATENT_STD",
    "denormalize_transpose",
    "codes_to_latents",
    "SEANetDecoder",
    "DecoderConfig",
    "load_decoder",
    "CheckpointError",
    "LatentDecoder",
    "CodeDecoder",
    "Quantizer",
    "load_quantizer",
    "patch",
    "unpatch",
    "audio_write",
    "write_batch",
    "reference",
    "PerformanceWarning",
    "modes",
    "reuse_freed_memory",
]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'jasco_fast' has no attribute {name!r}")
    module = importlib.import_module(f"jasco_fast.{_WHERE[name] or name}")
    value = module if _WHERE[name] is None else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
