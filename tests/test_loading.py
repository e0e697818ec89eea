"""jasco_fast.loading: every checkpoint format, audiocraft configs read with OmegaConf (interpolations
through the public loader), and bad files: each error names the file and the problem."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from checkpoints import (
    AUDIOCRAFT_CONFIGS,
    AUDIOCRAFT_DEFAULTS,
    AUDIOCRAFT_YAML,
    F32_TOL,
    fake_hf_cache,
    needs_audiocraft,
    rel_err,
    seed_of,
    write_audiocraft_checkpoint,
    write_pointer,
    write_transformers_dir,
)

from jasco_fast import load_decoder
from jasco_fast.loading import CheckpointError, read_checkpoint

# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "weight_format,file",
    [
        ("parametrizations", "model.safetensors"),
        ("weight_g_v", "model.safetensors"),
        ("weight_g_v", "pytorch_model.bin"),
    ],
)
def test_transformers_storage_variants(tmp_path, weight_format, file):
    path, model = write_transformers_dir(tmp_path, seed=5, weight_format=weight_format, file=file)
    assert (path / file).exists()
    x = torch.randn(1, 8, 9)
    with torch.no_grad():
        assert rel_err(load_decoder(path)(x), model.decoder(x)) < F32_TOL
        assert rel_err(load_decoder(path / "config.json")(x), model.decoder(x)) < F32_TOL


@needs_audiocraft
def test_audiocraft_directory_and_dtype(tmp_path):
    path, upstream = write_audiocraft_checkpoint(tmp_path / "compression_state_dict.bin", seed=7)
    decoder = load_decoder(tmp_path, dtype=torch.float64)
    assert next(decoder.parameters()).dtype == torch.float64 and not decoder.training
    x = torch.randn(1, 8, 11, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(decoder(x), upstream.double()(x)) < 1e-12


@needs_audiocraft
@pytest.mark.parametrize("name", AUDIOCRAFT_CONFIGS)
def test_audiocraft_files_written_without_audiocraft_are_its_own(tmp_path, name):
    """The hostile-input and fuzz tests run without the oracle on files written by seanet_decoder_modules:
    they are the files audiocraft's module writes, key for key and bit for bit."""
    kwargs = dict(seed=seed_of(name), **AUDIOCRAFT_CONFIGS[name])
    ours, oracle = write_audiocraft_checkpoint(tmp_path / "ours.bin", with_audiocraft=False, **kwargs)
    theirs, upstream = write_audiocraft_checkpoint(tmp_path / "theirs.bin", with_audiocraft=True, **kwargs)
    assert oracle is None and upstream is not None
    ours, theirs = torch.load(ours, weights_only=True), torch.load(theirs, weights_only=True)
    assert list(ours["best_state"]) == list(theirs["best_state"])
    for key, value in theirs["best_state"].items():
        assert ours["best_state"][key].dtype == value.dtype and torch.equal(ours["best_state"][key], value), key
    assert {k: v for k, v in ours.items() if k != "best_state"} == {
        k: v for k, v in theirs.items() if k != "best_state"
    }


@pytest.mark.parametrize("name", AUDIOCRAFT_CONFIGS)
def test_audiocraft_files_written_without_audiocraft_load(tmp_path, name):
    path, _ = write_audiocraft_checkpoint(
        tmp_path / "compression_state_dict.bin", seed=seed_of(name), with_audiocraft=False, **AUDIOCRAFT_CONFIGS[name]
    )
    decoder = load_decoder(path)
    with torch.no_grad():
        out = decoder(torch.randn(1, 8, 5))
    assert out.shape == (1, 1, 5 * decoder.hop_length) and torch.isfinite(out).all()


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
    with pytest.raises(
        CheckpointError, match=r"model\.safetensors.*missing key 'decoder\.layers\.4\.block\.1\.conv\.bias'"
    ):
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
    p2 = config_only_checkpoint(tmp_path / "ac" / "compression_state_dict.bin", norm="banana")
    with pytest.raises(CheckpointError, match=r"compression_state_dict\.bin.*norm"):
        load_decoder(p2)
    p3 = config_only_checkpoint(
        tmp_path / "ac2" / "compression_state_dict.bin",
        text=tiny_yaml().replace("compress: 2", "compress: 2\n  wobble: 3"),
    )
    with pytest.raises(CheckpointError, match=r"unknown SEANet decoder settings \['wobble'\]"):
        load_decoder(p3)


def test_truncated_and_corrupt_files(tmp_path):
    p = config_only_checkpoint(tmp_path / "a" / "compression_state_dict.bin")
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


# --------------------------------------------------------------------------------------------------
# audiocraft configs are OmegaConf configs: interpolations resolve as OmegaConf resolves them


def tiny_yaml(**overrides) -> str:
    return AUDIOCRAFT_YAML.format(**{**AUDIOCRAFT_DEFAULTS, **overrides})


def config_only_checkpoint(path, text: str | None = None, **overrides):
    """An audiocraft export holding `text` (default: the tiny test config) and no weights: enough for
    read_checkpoint, which builds the config before it looks at any weight."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "best_state": {},
            "xp.cfg": tiny_yaml(**overrides) if text is None else text,
            "version": "1.3.0",
            "exported": True,
        },
        path,
    )
    return path


def read_config(tmp_path, text: str):
    return read_checkpoint(config_only_checkpoint(tmp_path / "compression_state_dict.bin", text))[0]


def test_the_tiny_config_through_its_interpolations(tmp_path):
    # ${channels} (absolute), ${sample_rate} via encodec, ${encodec.causal} (a reference to a nested key)
    config = read_config(tmp_path, tiny_yaml(causal="true").replace("channels: 1", "channels: 2", 1))
    assert (config.channels, config.causal, config.sample_rate, config.dimension) == (2, True, 8000, 8)


def test_relative_interpolation_is_the_nodes_own_level(tmp_path):
    # the first dot is the node's own level: ${.dimension} inside seanet is seanet.dimension (8), not the
    # top-level dimension (99); two dots go one level up (seanet.decoder -> seanet)
    text = "dimension: 99\n" + tiny_yaml().replace("  n_filters: 4", "  n_filters: ${.dimension}").replace(
        "    trim_right_ratio: 1.0", "    trim_right_ratio: 1.0\n    last_kernel_size: ${..kernel_size}"
    )
    config = read_config(tmp_path, text)
    assert config.n_filters == 8 and config.last_kernel_size == 7


def test_nested_list_and_string_interpolations(tmp_path):
    text = "first_ratio: ${stage.ratio}\nstage: {ratio: 4}\nact_tail: LU\n" + tiny_yaml(
        ratios="['${first_ratio}', 2]", activation="E${act_tail}"
    )
    config = read_config(tmp_path, text)
    assert config.ratios == (4, 2) and config.activation == "ELU"
    text = "ratios_of_record: [4, 2]\n" + tiny_yaml(ratios="${ratios_of_record}")
    assert read_config(tmp_path, text).ratios == (4, 2)


def test_sections_the_decoder_does_not_read_may_hold_anything(tmp_path):
    # experiment paths and audiocraft's own resolvers only resolve inside audiocraft
    text = tiny_yaml() + "dora:\n  dir: ${oc.env:JASCO_FAST_TEST_UNSET_VARIABLE}\nlogging: ${now:%H-%M}\n"
    assert read_config(tmp_path, text).dimension == 8


@pytest.mark.parametrize(
    "text,problem",
    [
        (
            tiny_yaml().replace("${channels}", "${nowhere.channels}", 1),
            r"'nowhere\.channels' not found \(at encodec\.channels\)",
        ),
        (
            tiny_yaml().replace("  n_filters: 4", "  n_filters: ${.nothing}"),
            r"'\.nothing' not found .*\(at seanet\.n_filters\)",
        ),
        (
            tiny_yaml()
            .replace("  n_filters: 4", "  n_filters: ${seanet.compress}")
            .replace("  compress: 2", "  compress: ${seanet.n_filters}"),
            r"[Rr]ecursive interpolation.*\(at seanet\.\w+\)",
        ),
        ("seanet: [1, 2\n", r"not valid YAML"),
        ("- just\n- a list\n", r"not a mapping"),
    ],
)
def test_bad_configs_name_the_file_and_the_problem(tmp_path, text, problem):
    path = config_only_checkpoint(tmp_path / "compression_state_dict.bin", text)
    with pytest.raises(CheckpointError, match=r"compression_state_dict\.bin: bad 'xp\.cfg': .*" + problem) as err:
        load_decoder(path)
    assert err.value.path == path
