"""jasco_fast: turn JASCO's continuous latents into audio files, fast.

Fused denormalize-transpose op, EnCodec decoder (faithful, compiled, channels-last), checkpoint
loading, in-process audio output, and a drop-in patch for audiocraft's JASCO; EnCodec codes (MusicGen /
AudioGen tokens) through the same path (fused RVQ decode op, CodeDecoder).
"""
from jasco_fast import reference
from jasco_fast.audio import audio_write, write_batch
from jasco_fast.decoder import DecoderConfig, SEANetDecoder
from jasco_fast.jasco import patch, unpatch
from jasco_fast.loading import CheckpointError, load_decoder
from jasco_fast.ops import JASCO_LATENT_MEAN, JASCO_LATENT_STD, codes_to_latents, denormalize_transpose
from jasco_fast.pipeline import CodeDecoder, LatentDecoder
from jasco_fast.quantizer import Quantizer, load_quantizer

__version__ = "0.2.0"  # the one version number: pyproject.toml reads it from here

__all__ = [
    "JASCO_LATENT_MEAN", "JASCO_LATENT_STD", "denormalize_transpose", "codes_to_latents", "SEANetDecoder", "DecoderConfig",
    "load_decoder", "CheckpointError", "LatentDecoder", "CodeDecoder", "Quantizer", "load_quantizer", "patch",
    "unpatch", "audio_write", "write_batch", "reference",
]


def __getattr__(name: str):
    if name == "Decoder":  # deprecated alias of SEANetDecoder, kept for one release (warns)
        from jasco_fast import decoder

        return decoder.Decoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
