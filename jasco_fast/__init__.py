"""jasco_fast: turn JASCO's continuous latents into audio files, fast."""
from jasco_fast.ops import JASCO_LATENT_MEAN, JASCO_LATENT_STD, denormalize_transpose

__all__ = ["JASCO_LATENT_MEAN", "JASCO_LATENT_STD", "denormalize_transpose"]
