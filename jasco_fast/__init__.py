"""jasco_fast: turn JASCO's continuous latents into audio files, fast.

Fused denormalize-transpose op, EnCodec decoder (faithful, compiled, channels-last), checkpoint
loading, in-process audio output, and a drop-in patch for audiocraft's JASCO; EnCodec codes (MusicGen /
AudioGen tokens) through the same path (fused RVQ decode op, CodeDecoder).
"""
from jasco_fast import reference
from jasco_fast.audio import audio_write, write_batch
from jasco_fast.decoder import Decoder, DecoderConfig
from jasco_fast.jasco import patch, unpatch
from jasco_fast.loading import CheckpointError, load_decoder
from jasco_fast.ops import JASCO_LATENT_MEAN, JASCO_LATENT_STD, codes_to_latents, denormalize_transpose
from jasco_fast.pipeline import CodeDecoder, LatentDecoder
from jasco_fast.quantizer import Quantizer, load_quantizer

__version__ = "0.1.0"

__all__ = [
    "JASCO_LATENT_MEAN", "JASCO_LATENT_STD", "denormalize_transpose", "codes_to_latents", "Decoder", "DecoderConfig",
    "load_decoder", "CheckpointError", "LatentDecoder", "CodeDecoder", "Quantizer", "load_quantizer", "patch",
    "unpatch", "audio_write", "write_batch", "reference",
]
