"""jasco_fast.jasco: the drop-in for audiocraft's JASCO (a stand-in object of the same shape; audiocraft's
JASCO needs its whole dependency tree)."""

from __future__ import annotations

import types

import pytest
import torch
from checkpoints import F32_TOL, rel_err, transformers_model

import jasco_fast
from jasco_fast import LatentDecoder


class _StandInJASCO:
    """What jasco_fast.patch touches of audiocraft's JASCO: cfg statistics, compression_model.model
    (a transformers EncodecModel), and generate_audio as upstream writes it."""

    def __init__(self, hf_model, mean, std):
        self.cfg = types.SimpleNamespace(compression_model_latent_mean=mean, compression_model_latent_std=std)
        self.compression_model = types.SimpleNamespace(model=hf_model)

    def generate_audio(self, gen_latents):
        assert gen_latents.dim() == 3
        scaled = gen_latents * self.cfg.compression_model_latent_std + self.cfg.compression_model_latent_mean
        return self.compression_model.model.decoder(scaled.permute(0, 2, 1))


def test_patch_and_unpatch():
    model = _StandInJASCO(transformers_model(seed=21), mean=-0.0074, std=4.0102)
    latents = torch.randn(2, 25, 8)
    with torch.no_grad():
        upstream = model.generate_audio(latents)
    fast = jasco_fast.patch(model, backend="eager")
    assert isinstance(fast, LatentDecoder)
    patched = model.generate_audio(latents)
    assert patched.shape == upstream.shape
    assert rel_err(patched, upstream) < F32_TOL
    with pytest.raises(ValueError, match=r"latents must be \[B, T, 8\]"):
        model.generate_audio(latents[0])
    jasco_fast.unpatch(model)
    assert model.generate_audio.__func__ is _StandInJASCO.generate_audio
    with torch.no_grad():
        assert torch.equal(model.generate_audio(latents), upstream)
    jasco_fast.unpatch(model)  # idempotent


def test_patch_rejects_other_models():
    with pytest.raises(TypeError, match="compression_model"):
        jasco_fast.patch(
            types.SimpleNamespace(
                cfg=types.SimpleNamespace(compression_model_latent_mean=0.0, compression_model_latent_std=1.0)
            )
        )
    with pytest.raises(TypeError, match="cfg"):
        jasco_fast.patch(types.SimpleNamespace())
