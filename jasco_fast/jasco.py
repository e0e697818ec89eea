"""Drop-in use inside audiocraft: ``patch(jasco)`` makes ``JASCO.generate_audio`` take the fast path."""
from __future__ import annotations

from jasco_fast.decoder import SEANetDecoder
from jasco_fast.loading import decoder_config_from_transformers, decoder_from_state
from jasco_fast.pipeline import LatentDecoder

__all__ = ["patch", "unpatch", "decoder_from_jasco"]

_ATTR = "_jasco_fast_decoder"


def decoder_from_jasco(jasco_model) -> SEANetDecoder:
    """A :class:`SEANetDecoder` holding the weights of ``jasco_model.compression_model.model.decoder``.

    Released JASCO models decode with the transformers EnCodec model their compression model wraps.
    """
    try:
        hf_model = jasco_model.compression_model.model
        hf_decoder, hf_config = hf_model.decoder, hf_model.config
    except AttributeError:
        raise TypeError("patch() needs a JASCO model whose compression_model wraps a transformers EnCodec model "
                        "(compression_model.model.decoder and .config), as the released JASCO models do") from None
    raw = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(vars(hf_config))
    config = decoder_config_from_transformers(raw)
    state = {f"decoder.{k}": v.detach().cpu() for k, v in hf_decoder.state_dict().items()}
    param = next(hf_decoder.parameters())
    return decoder_from_state(config, state, "transformers", "<jasco_model.compression_model>",
                              device=param.device, dtype=param.dtype)


def patch(jasco_model, **latent_decoder_kwargs) -> LatentDecoder:
    """Make ``jasco_model.generate_audio(latents [B, T, D])`` run :class:`LatentDecoder`.

    Uses the model's own decoder weights and its cfg's ``compression_model_latent_mean``/``_std``;
    keyword arguments go to :class:`LatentDecoder` (``dtype``, ``compile``...). Returns the LatentDecoder.
    Patching again replaces the previous fast path; :func:`unpatch` restores the original method.
    """
    cfg = getattr(jasco_model, "cfg", None)
    try:
        mean, std = cfg.compression_model_latent_mean, cfg.compression_model_latent_std
    except AttributeError:
        raise TypeError("patch() needs jasco_model.cfg with compression_model_latent_mean and "
                        "compression_model_latent_std (a JASCO model)") from None
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
