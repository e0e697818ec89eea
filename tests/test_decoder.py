"""The EnCodec decoder: faithful to audiocraft and transformers, every checkpoint format, bad files,
the LatentDecoder fast path (eager and compiled) against the reference, and the JASCO drop-in."""
from __future__ import annotations

import json
import pickle
import types
import zlib

import pytest
import torch
from checkpoints import (audiocraft_modules, fake_hf_cache, transformers_model, write_audiocraft_checkpoint,
                         write_pointer, write_transformers_dir)

import jasco_fast
from jasco_fast import Decoder, DecoderConfig, LatentDecoder, load_decoder, reference
from jasco_fast.loading import CheckpointError

# Relative L2 error budget for float32 paths against the upstream implementations; what we see is
# ~1e-7 (the same arithmetic in a different order).
F32_TOL = 2e-6
LENGTHS = (1, 2, 5, 37)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-300)).item()


def seed_of(name: str) -> int:
    return zlib.crc32(name.encode()) % 10_000


# --------------------------------------------------------------------------------------------------
# Faithfulness: transformers' EncodecDecoder and audiocraft's SEANetDecoder with the same weights

HF_CONFIGS = {
    "encodec_32khz_like": {},
    "causal": dict(use_causal_conv=True),
    "causal_trim_half": dict(use_causal_conv=True, trim_right_ratio=0.5),
    "time_group_norm": dict(norm_type="time_group_norm"),
    "conv_shortcut_two_res": dict(use_conv_shortcut=True, num_residual_layers=2),
    "constant_pad_stereo": dict(pad_mode="constant", audio_channels=2),
    "odd_sizes": dict(upsampling_ratios=[3, 5], kernel_size=5, last_kernel_size=3, residual_kernel_size=5,
                      compress=1, dilation_growth_rate=3, num_residual_layers=2, num_lstm_layers=2),
}


@pytest.mark.parametrize("name", HF_CONFIGS)
def test_matches_transformers(name, tmp_path):
    path, model = write_transformers_dir(tmp_path, seed=seed_of(name), **HF_CONFIGS[name])
    decoder = load_decoder(path)
    eager = reference.EagerDecoder(decoder)
    cfg = model.config
    for T in LENGTHS:
        x = torch.randn(2, cfg.hidden_size, T)
        with torch.no_grad():
            want = model.decoder(x)
            got, ref = decoder(x), eager(x)
        hop = decoder.hop_length
        assert got.shape == want.shape == (2, cfg.audio_channels, T * hop)
        assert rel_err(got, want) < F32_TOL, (name, T)
        assert rel_err(ref, want) < F32_TOL, (name, T)


AUDIOCRAFT_CONFIGS = {
    "default_constant_pad": {},
    "reflect_causal_trim": dict(causal="true", pad_mode="reflect", trim_right_ratio=0.25),
    "tanh_disable_outer_norms": dict(final_activation="Tanh", disable_norm_outer_blocks=2),
    "no_lstm_leaky_conv_shortcut": dict(lstm=0, activation="LeakyReLU", activation_params='{"negative_slope": 0.2}',
                                        true_skip="false", n_residual_layers=2),
    "spectral_norm": dict(norm="spectral_norm"),
    "time_group_norm": dict(norm="time_group_norm", pad_mode="replicate"),
    "no_norm_three_stages_circular": dict(norm="none", ratios="[2, 3, 2]", pad_mode="circular"),
}


@pytest.mark.parametrize("name", AUDIOCRAFT_CONFIGS)
def test_matches_audiocraft(name, tmp_path):
    path, upstream = write_audiocraft_checkpoint(tmp_path / "compression_state_dict.bin", seed=seed_of(name),
                                                 **AUDIOCRAFT_CONFIGS[name])
    decoder = load_decoder(path)
    eager = reference.EagerDecoder(decoder)
    lengths = LENGTHS
    if decoder.config.pad_mode == "circular":  # upstream cannot wrap a pad around more than once either
        with pytest.raises(ValueError, match="circular padding"):
            decoder(torch.randn(1, 8, 1))
        lengths = (3, 5, 37)
    for T in lengths:
        x = torch.randn(2, 8, T)
        with torch.no_grad():
            want = upstream(x)
            got, ref = decoder(x), eager(x)
        assert got.shape == want.shape == (2, 1, T * decoder.hop_length)
        assert rel_err(got, want) < F32_TOL, (name, T)
        assert rel_err(ref, want) < F32_TOL, (name, T)


def test_audiocraft_modules_are_the_real_ones():
    seanet = audiocraft_modules()
    assert seanet is not None and seanet.SEANetDecoder.__module__ == "_ac_modules.seanet"


def test_full_size_32khz_matches_transformers():
    model = transformers_model(seed=3, audio_channels=1, sampling_rate=32000, num_filters=64, hidden_size=128,
                               upsampling_ratios=[8, 5, 4, 4], num_lstm_layers=2, use_causal_conv=False,
                               pad_mode="reflect", use_conv_shortcut=False)
    state = {f"decoder.{k}": v for k, v in model.decoder.state_dict().items()}
    decoder = jasco_fast.loading.load_state(Decoder(DecoderConfig()), state, "transformers", "<memory>").eval()
    # the same parameters once weight norm's g is folded away: ~28.4 M
    upstream_count = sum(p.numel() for n, p in model.decoder.named_parameters() if not n.endswith("original0"))
    assert sum(p.numel() for p in decoder.parameters()) == upstream_count
    assert 28.3e6 < upstream_count < 28.5e6
    x = torch.randn(1, 128, 6)
    with torch.no_grad():
        assert rel_err(decoder(x), model.decoder(x)) < F32_TOL


# --------------------------------------------------------------------------------------------------
# Formats


@pytest.mark.parametrize("weight_format,file", [("parametrizations", "model.safetensors"),
                                                ("weight_g_v", "model.safetensors"),
                                                ("weight_g_v", "pytorch_model.bin")])
def test_transformers_storage_variants(tmp_path, weight_format, file):
    path, model = write_transformers_dir(tmp_path, seed=5, weight_format=weight_format, file=file)
    assert (path / file).exists()
    x = torch.randn(1, 8, 9)
    with torch.no_grad():
        assert rel_err(load_decoder(path)(x), model.decoder(x)) < F32_TOL
        assert rel_err(load_decoder(path / "config.json")(x), model.decoder(x)) < F32_TOL


def test_audiocraft_directory_and_dtype(tmp_path):
    path, upstream = write_audiocraft_checkpoint(tmp_path / "compression_state_dict.bin", seed=7)
    decoder = load_decoder(tmp_path, dtype=torch.float64)
    assert next(decoder.parameters()).dtype == torch.float64 and not decoder.training
    x = torch.randn(1, 8, 11, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(decoder(x), upstream.double()(x)) < 1e-12


def test_pointer_resolves_to_local_hf_cache(tmp_path, monkeypatch):
    source, model = write_transformers_dir(tmp_path / "src", seed=11)
    cache = tmp_path / "hub"
    fake_hf_cache(cache, "facebook/encodec_32khz", source)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    pointer = write_pointer(tmp_path / "compression_state_dict.bin")
    x = torch.randn(1, 8, 4)
    with torch.no_grad():
        assert rel_err(load_decoder(pointer)(x), model.decoder(x)) < F32_TOL


def test_pointer_without_local_copy_is_refused_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_home"))
    pointer = write_pointer(tmp_path / "compression_state_dict.bin")
    with pytest.raises(CheckpointError, match=r"facebook/encodec_32khz.*not in the local.*pass") as err:
        load_decoder(pointer)
    assert str(pointer) in str(err.value)


# --------------------------------------------------------------------------------------------------
# Bad files: each error names the file and the problem


def test_missing_key(tmp_path):
    from safetensors.torch import load_file, save_file

    path, _ = write_transformers_dir(tmp_path, seed=1)
    state = load_file(str(path / "model.safetensors"))
    del state["decoder.layers.4.block.1.conv.bias"]
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*missing key 'decoder\.layers\.4\.block\.1\.conv\.bias'"):
        load_decoder(path)


def test_wrong_shape(tmp_path):
    path, _ = write_transformers_dir(tmp_path, seed=1)
    cfg = json.loads((path / "config.json").read_text())
    cfg["num_filters"] = 8
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"has shape .* needs"):
        load_decoder(path)


def test_extra_decoder_keys_mean_architecture_mismatch(tmp_path):
    path, _ = write_transformers_dir(tmp_path, seed=1, use_conv_shortcut=True)
    cfg = json.loads((path / "config.json").read_text())
    cfg["use_conv_shortcut"] = False
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"architecture mismatch.*shortcut"):
        load_decoder(path)


def test_unknown_architecture_values(tmp_path):
    path, _ = write_transformers_dir(tmp_path, seed=1)
    cfg = json.loads((path / "config.json").read_text())
    cfg["pad_mode"] = "mirror"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json.*pad_mode"):
        load_decoder(path)
    p2, _ = write_audiocraft_checkpoint(tmp_path / "ac" / "compression_state_dict.bin", seed=1)
    pkg = torch.load(p2, weights_only=True)
    pkg["xp.cfg"] = pkg["xp.cfg"].replace("norm: weight_norm", "norm: banana")
    torch.save(pkg, p2)
    with pytest.raises(CheckpointError, match=r"compression_state_dict\.bin.*norm"):
        load_decoder(p2)
    pkg["xp.cfg"] = pkg["xp.cfg"].replace("norm: banana", "norm: weight_norm").replace("compress: 2", "compress: 2\n  wobble: 3")
    torch.save(pkg, p2)
    with pytest.raises(CheckpointError, match=r"unknown SEANet decoder settings \['wobble'\]"):
        load_decoder(p2)


def test_unresolvable_interpolation(tmp_path):
    p, _ = write_audiocraft_checkpoint(tmp_path / "compression_state_dict.bin", seed=1)
    pkg = torch.load(p, weights_only=True)
    pkg["xp.cfg"] = pkg["xp.cfg"].replace("${channels}", "${nowhere.channels}", 1)
    torch.save(pkg, p)
    with pytest.raises(CheckpointError, match=r"nowhere\.channels.*missing key"):
        load_decoder(p)


def test_truncated_and_corrupt_files(tmp_path):
    p, _ = write_audiocraft_checkpoint(tmp_path / "a" / "compression_state_dict.bin", seed=1)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"compression_state_dict\.bin.*truncated or corrupt"):
        load_decoder(p)
    d, _ = write_transformers_dir(tmp_path / "b", seed=1)
    (d / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated or corrupt"):
        load_decoder(d)
    (tmp_path / "c").mkdir()
    with pytest.raises(CheckpointError, match=r"neither a transformers"):
        load_decoder(tmp_path / "c")
    with pytest.raises(CheckpointError, match=r"no such file"):
        load_decoder(tmp_path / "missing.bin")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_checkpoint_carrying_code_is_refused_not_executed(tmp_path):
    marker = tmp_path / "executed"
    p = tmp_path / "compression_state_dict.bin"
    with open(p, "wb") as f:
        pickle.dump({"best_state": {}, "xp.cfg": "", "payload": _Payload(marker)}, f)
    with pytest.raises(CheckpointError, match=r"refused"):
        load_decoder(p)
    assert not marker.exists()


def test_non_finite_weights(tmp_path):
    from safetensors.torch import load_file, save_file

    path, _ = write_transformers_dir(tmp_path, seed=1)
    state = load_file(str(path / "model.safetensors"))
    state["decoder.layers.0.conv.bias"][0] = float("nan")
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"NaN or Inf"):
        load_decoder(path)


def test_config_validation():
    with pytest.raises(ValueError, match="ratios"):
        DecoderConfig(ratios=())
    with pytest.raises(ValueError, match="trim_right_ratio"):
        DecoderConfig(trim_right_ratio=0.5)
    with pytest.raises(ValueError, match="activation"):
        DecoderConfig(activation="NotAnActivation")
    with pytest.raises(ValueError, match=r"Decoder expects \[B, 128, T\]"):
        Decoder()(torch.randn(1, 64, 5))


# --------------------------------------------------------------------------------------------------
# LatentDecoder (the fast path) against reference.decode (JASCO's eager path)


@pytest.fixture(scope="module")
def tiny_decoder(tiny_hf_checkpoint):
    return load_decoder(tiny_hf_checkpoint)


@pytest.mark.parametrize("channels_last", [True, False])
def test_latent_decoder_eager_matches_reference(tiny_decoder, channels_last):
    fast = LatentDecoder(tiny_decoder, compile=False, channels_last=channels_last)
    for B, T in [(1, 1), (3, 2), (2, 5), (2, 64)]:
        latents = torch.randn(B, T, 8)
        want = reference.decode(tiny_decoder, latents)
        got = fast(latents)
        assert got.dtype == torch.float32 and got.shape == (B, 1, T * tiny_decoder.hop_length)
        assert rel_err(got, want) < F32_TOL


def test_latent_decoder_per_channel_statistics_and_strided_latents(tiny_decoder):
    mean, std = torch.randn(8) * 0.1, torch.rand(8) + 0.5
    fast = LatentDecoder(tiny_decoder, mean, std, compile=False)
    latents = torch.randn(2, 8, 30).transpose(1, 2)  # [B, T, D] with non-contiguous strides
    assert rel_err(fast(latents), reference.decode(tiny_decoder, latents, mean, std)) < F32_TOL


def test_latent_decoder_compiled_matches_reference_without_recompiling(tiny_decoder):
    torch._dynamo.reset()
    fast = LatentDecoder(tiny_decoder, compile="torch.compile")
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for T in (12, 29, 40, 57):
        latents = torch.randn(2, T, 8)
        assert rel_err(fast(latents), reference.decode(tiny_decoder, latents)) < F32_TOL, T
    # one graph serves every length (T is dynamic)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs == 1


def test_latent_decoder_compiled_single_frame(tiny_decoder):
    fast = LatentDecoder(tiny_decoder, compile="torch.compile")
    latents = torch.randn(1, 1, 8)
    assert rel_err(fast(latents), reference.decode(tiny_decoder, latents)) < F32_TOL


def test_latent_decoder_bfloat16_error_budget(tiny_decoder):
    """bf16 compute: its error against the float32 reference must stay within twice the error the
    reference itself makes when run in bf16 (the flash-attention rule), plus a small floor."""
    latents = torch.randn(2, 40, 8)
    want = reference.decode(tiny_decoder, latents)
    ref_bf16 = reference.decode(reference.EagerDecoder(tiny_decoder).to(torch.bfloat16), latents.bfloat16()).float()
    budget = 2 * rel_err(ref_bf16, want) + 1e-3
    got = LatentDecoder(tiny_decoder, compile=False, dtype=torch.bfloat16)(latents)
    assert got.dtype == torch.float32
    assert rel_err(got, want) <= budget
    assert budget < 0.1  # the budget itself is meaningful, not vacuous


def test_latent_decoder_input_errors(tiny_decoder):
    fast = LatentDecoder(tiny_decoder, compile=False)
    with pytest.raises(ValueError, match=r"\[B, T, 8\]"):
        fast(torch.randn(2, 8))
    with pytest.raises(ValueError, match=r"\[B, T, 8\]"):
        fast(torch.randn(1, 5, 7))
    with pytest.raises(TypeError, match="floating point"):
        fast(torch.ones(1, 5, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="T >= 1"):
        fast(torch.randn(1, 0, 8))
    with pytest.raises(ValueError, match="mean"):
        LatentDecoder(tiny_decoder, mean=torch.zeros(3))
    with pytest.raises(TypeError, match="Decoder"):
        LatentDecoder(torch.nn.Linear(2, 2))
    assert fast(torch.randn(0, 5, 8)).shape == (0, 1, 5 * tiny_decoder.hop_length)


def test_reference_decode_from_path(tiny_hf_checkpoint, tiny_decoder):
    latents = torch.randn(1, 9, 8)
    assert torch.equal(reference.decode(tiny_hf_checkpoint, latents), reference.decode(tiny_decoder, latents))


# --------------------------------------------------------------------------------------------------
# Drop-in for audiocraft's JASCO (a stand-in object of the same shape; audiocraft's JASCO needs its
# whole dependency tree)


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
    fast = jasco_fast.patch(model, compile=False)
    assert isinstance(fast, LatentDecoder)
    patched = model.generate_audio(latents)
    assert patched.shape == upstream.shape
    assert rel_err(patched, upstream) < F32_TOL
    jasco_fast.unpatch(model)
    assert model.generate_audio.__func__ is _StandInJASCO.generate_audio
    with torch.no_grad():
        assert torch.equal(model.generate_audio(latents), upstream)
    jasco_fast.unpatch(model)  # idempotent


def test_patch_rejects_other_models():
    with pytest.raises(TypeError, match="compression_model"):
        jasco_fast.patch(types.SimpleNamespace(cfg=types.SimpleNamespace(compression_model_latent_mean=0.0,
                                                                         compression_model_latent_std=1.0)))
    with pytest.raises(TypeError, match="cfg"):
        jasco_fast.patch(types.SimpleNamespace())
