"""Drop-in use inside audiocraft: ``patch(model)`` makes ``generate_audio`` take the fast path.

JASCO models (latents, through :class:`LatentDecoder`) and MusicGen/AudioGen models whose compression model
wraps a transformers EnCodec model (tokens, through :class:`CodeDecoder`).
"""

from __future__ import annotations

import torch

from jasco_fast.decoder import SEANetDecoder
from jasco_fast.loading import decoder_config_from_transformers, decoder_from_state
from jasco_fast.pipeline import CodeDecoder, LatentDecoder
from jasco_fast.quantizer import Quantizer, quantizer_from_state

__all__ = ["patch", "unpatch", "decoder_from_jasco", "quantizer_from_encodec"]

_ATTR = "_jasco_fast_decoder"


def decoder_from_jasco(jasco_model) -> SEANetDecoder:
    """A :class:`SEANetDecoder` holding the weights of ``jasco_model.compression_model.model.decoder``.

    Released JASCO models decode with the transformers EnCodec model their compression model wraps.
    """
    try:
        hf_model = jasco_model.compression_model.model
        hf_decoder, hf_config = hf_model.decoder, hf_model.config
    except AttributeError:
        raise TypeError(
            "patch() needs a JASCO model whose compression_model wraps a transformers EnCodec model "
            "(compression_model.model.decoder and .config), as the released JASCO models do"
        ) from None
    raw = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(vars(hf_config))
    config = decoder_config_from_transformers(raw)
    state = {f"decoder.{k}": v.detach().cpu() for k, v in hf_decoder.state_dict().items()}
    param = next(hf_decoder.parameters())
    return decoder_from_state(
        config, state, "transformers", "<jasco_model.compression_model>", device=param.device, dtype=param.dtype
    )


def quantizer_from_encodec(hf_model) -> Quantizer:
    """A :class:`Quantizer` holding the codebooks of a transformers ``EncodecModel`` (``hf_model.quantizer``)."""
    state = {f"quantizer.{k}": v.detach().cpu() for k, v in hf_model.quantizer.state_dict().items()}
    return quantizer_from_state(
        state,
        "transformers",
        "<compression_model.model.quantizer>",
        device=hf_model.quantizer.layers[0].codebook.embed.device,
        dimension=hf_model.config.hidden_size,
    )


def _latent_statistics(model):
    """JASCO's (mean, std) from its cfg, or None for models without them (MusicGen, AudioGen)."""
    cfg = getattr(model, "cfg", None)
    try:
        mean, std = cfg.compression_model_latent_mean, cfg.compression_model_latent_std
    except Exception:  # AttributeError, or OmegaConf's errors for a missing key
        return None
    return None if mean is None or std is None else (mean, std)


def _patch_codes_model(model, kwargs) -> CodeDecoder:
    hf_model = getattr(getattr(model, "compression_model", None), "model", None)
    if not all(hasattr(hf_model, a) for a in ("decoder", "quantizer", "config")):
        raise TypeError(
            "patch() needs a JASCO model (cfg with compression_model_latent_mean and "
            "compression_model_latent_std) or a MusicGen/AudioGen model whose compression_model wraps a "
            "transformers EnCodec model (compression_model.model.decoder, .quantizer and .config; "
            "stereo and audiocraft-native EnCodec compression models are not supported)"
        )
    if getattr(hf_model.config, "chunk_length", None) is not None:
        raise ValueError(
            "patch(): this EnCodec model decodes in overlapping chunks (config.chunk_length is set, "
            "e.g. the 48 kHz model); only unchunked EnCodec models (32 and 24 kHz) are supported"
        )
    fast = CodeDecoder(decoder_from_jasco(model), quantizer_from_encodec(hf_model), **kwargs)

    def generate_audio(gen_tokens):
        """Decode audio from generated tokens [B, K, T] (jasco_fast fast path)."""
        if not isinstance(gen_tokens, torch.Tensor) or gen_tokens.dim() != 3:
            raise ValueError(
                f"generate_audio expects tokens [B, K, T], got "
                f"{list(gen_tokens.shape) if isinstance(gen_tokens, torch.Tensor) else gen_tokens!r}"
            )
        return fast(gen_tokens)

    model.generate_audio = generate_audio  # an instance attribute shadows the class method
    setattr(model, _ATTR, fast)
    return fast


def patch(jasco_model, **latent_decoder_kwargs) -> LatentDecoder:
    """Make ``jasco_model.generate_audio`` run the fast path.

    * JASCO (its cfg has ``compression_model_latent_mean``/``_std``): ``generate_audio(latents [B, T, D])``
      runs :class:`LatentDecoder` with the model's own decoder weights and statistics.
    * MusicGen / AudioGen whose ``compression_model`` wraps a transformers EnCodec model (audiocraft's
      ``HFEncodecCompressionModel``, as MusicGen's released models): ``generate_audio(tokens [B, K, T])``
      runs :class:`CodeDecoder` with the model's own codebooks and decoder weights (no mean/std).
    Keyword arguments go to the LatentDecoder / CodeDecoder (``dtype``, ``backend``...). Returns it.
    Patching again replaces the previous fast path; :func:`unpatch` restores the original method.
    """
    stats = _latent_statistics(jasco_model)
    if stats is None:
        return _patch_codes_model(jasco_model, latent_decoder_kwargs)
    mean, std = stats
    fast = LatentDecoder(decoder_from_jasco(jasco_model), mean, std, **latent_decoder_kwargs)

    def generate_audio(gen_latents):
        """Decode audio from generated latents [B, T, D] (jasco_fast fast path; LatentDecoder checks them)."""
        return fast(gen_latents)

    jasco_model.generate_audio = generate_audio  # an instance attribute shadows the class method
    setattr(jasco_model, _ATTR, fast)
    return fast


def unpatch(jasco_model) -> None:
    """Undo :func:`patch`; a model that was not patched is left as it is."""
    if hasattr(jasco_model, _ATTR):
        delattr(jasco_model, _ATTR)
        vars(jasco_model).pop("generate_audio", None)
