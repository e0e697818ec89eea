"""Hostile and broken checkpoints (issue 16): each one is refused with a CheckpointError that names the
file and the problem, before memory is allocated for a decoder it describes. The cases first seen by a
user come first; tests/fuzz/ searches for more."""

from __future__ import annotations

import errno
import json
import pickle
import shutil
import struct

import pytest
import torch
from checkpoints import write_audiocraft_checkpoint, write_pointer, write_transformers_dir

import jasco_fast.guards as guards
import jasco_fast.loading as loading
from jasco_fast.decoder import SEANetDecoder
from jasco_fast.loading import CheckpointError, load_decoder, read_safetensors_header


@pytest.fixture(scope="module")
def hf_source(tmp_path_factory):
    path, _ = write_transformers_dir(tmp_path_factory.mktemp("hf_source"), seed=3)
    return path


@pytest.fixture
def hf_dir(hf_source, tmp_path):
    """A fresh copy of the tiny transformers checkpoint, free to damage."""
    return shutil.copytree(hf_source, tmp_path / "hf")


def edit_config(folder, **fields):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(fields)
    (folder / "config.json").write_text(json.dumps(cfg))


def refused(path, match):
    with pytest.raises(CheckpointError, match=match) as err:
        load_decoder(path)
    assert str(err.value).startswith(str(err.value.path)) and err.value.path.name in str(err.value)
    return err.value


# --------------------------------------------------------------------------------------------------
# The cases reported in the issue: each used to end in an allocator error, a TypeError or a MemoryError


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("num_filters", 100000, r"parameters, more than 10x"),
        ("upsampling_ratios", [100000, 2], r"upsampling_ratios must be a list of 1 to 32 integers"),
        ("upsampling_ratios", [60000, 2], r"parameters, more than 10x"),
        ("num_lstm_layers", 100000, r"at least \d+ tensors, the checkpoint holds \d+"),
        ("upsampling_ratios", None, r"upsampling_ratios must be"),
    ],
)
def test_reported_config_edits_are_refused_before_allocating(hf_dir, field, value, match):
    edit_config(hf_dir, **{field: value})
    err = refused(hf_dir, match)
    assert err.path.name in ("config.json", "model.safetensors")


def test_safetensors_header_length_of_a_terabyte(hf_dir):
    weights = hf_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[:8] = struct.pack("<Q", 10**12)
    weights.write_bytes(bytes(data))
    refused(
        hf_dir,
        r"model\.safetensors: not a readable safetensors file.*header length 1000000000000 does not "
        r"fit the file's \d+ bytes",
    )


# --------------------------------------------------------------------------------------------------
# config.json: wrong types and values, field by field


@pytest.mark.parametrize("value", [None, "64", 64.0, 2**40, -4, True, [4]])
@pytest.mark.parametrize(
    "field",
    [
        "num_filters",
        "hidden_size",
        "num_lstm_layers",
        "kernel_size",
        "compress",
        "sampling_rate",
        "dilation_growth_rate",
    ],
)
def test_integer_fields_of_the_wrong_type_or_size(hf_dir, field, value):
    edit_config(hf_dir, **{field: value})
    refused(hf_dir, rf"config\.json: .*{field} must be an integer")


@pytest.mark.parametrize("value", [None, "8,2", [4.0, 2], [4, "2"], [], [4, 0], [4, -2], [True, 2], [2] * 33, {"a": 1}])
def test_upsampling_ratios_of_the_wrong_type_or_length(hf_dir, value):
    edit_config(hf_dir, upsampling_ratios=value)
    refused(hf_dir, r"config\.json: .*upsampling_ratios must be")


@pytest.mark.parametrize(
    "value, match",
    [
        ([4, 2, 2], r"model\.safetensors: (missing key|.*has shape)"),  # one stage more than the weights hold
        ([4], r"model\.safetensors: (.*has shape|decoder keys the config does not account for)"),
        ([2, 4], r"model\.safetensors: .*has shape"),  # same count, other kernels
    ],
)
def test_upsampling_ratios_that_do_not_match_the_weights(hf_dir, value, match):
    edit_config(hf_dir, upsampling_ratios=value)
    refused(hf_dir, match)


@pytest.mark.parametrize(
    "field, value",
    [
        ("use_causal_conv", "yes"),
        ("use_conv_shortcut", None),
        ("pad_mode", 3),
        ("norm_type", None),
        ("trim_right_ratio", "1"),
        ("trim_right_ratio", None),
    ],
)
def test_other_fields_of_the_wrong_type(hf_dir, field, value):
    edit_config(hf_dir, **{field: value})
    refused(hf_dir, rf"config\.json: .*{field} must be")


@pytest.mark.parametrize(
    "text", ["[1, 2]", "null", '"encodec"', '{"num_filters": 1e999}', "[" * 100000, '{"a": 1', "\xff\xfe"]
)
def test_config_json_that_is_not_an_object(hf_dir, text):
    (hf_dir / "config.json").write_bytes(
        text.encode("utf-8", "surrogateescape") if text != "\xff\xfe" else b"\xff\xfe{}"
    )
    refused(hf_dir, r"config\.json: ")


def test_oversized_config_json(hf_dir):
    (hf_dir / "config.json").write_text(json.dumps({"pad": "x" * (guards.MAX_TEXT_BYTES + 1)}))
    refused(hf_dir, r"config\.json: \d+ bytes, too large")


def test_dilation_that_would_pad_beyond_reason(hf_dir):
    edit_config(hf_dir, dilation_growth_rate=2**20, num_residual_layers=1)
    load_decoder(hf_dir)  # one residual layer: dilation_growth_rate ** 0, harmless
    edit_config(hf_dir, num_residual_layers=2)  # dilation 2**20 in the second layer: refused before building
    refused(hf_dir, r"dilates the residual convolutions to more than 65536 samples")


# --------------------------------------------------------------------------------------------------
# safetensors headers


def _rewrite_header(weights, edit):
    data = weights.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    new = edit(header)
    raw = new if isinstance(new, bytes) else json.dumps(new).encode()
    weights.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length :])


def _first(header):
    return next(k for k in header if k != "__metadata__")


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda h: b"{not json", r"header is not JSON"),
        (lambda h: b"[1, 2]", r"header is not a JSON object"),
        (lambda h: {**h, _first(h): {**h[_first(h)], "dtype": "F128"}}, r"bad header entry"),
        (lambda h: {**h, _first(h): {**h[_first(h)], "shape": [2**40, 2**40]}}, r"does not fit its data offsets"),
        (lambda h: {**h, _first(h): {**h[_first(h)], "shape": [-1]}}, r"bad header entry"),
        (lambda h: {**h, _first(h): {**h[_first(h)], "data_offsets": [0, 2**62]}}, r"does not fit its data offsets"),
        (lambda h: {**h, _first(h): {**h[_first(h)], "data_offsets": [4]}}, r"bad header entry"),
        (lambda h: {**h, "extra": dict(h[_first(h)])}, r"overlap"),
    ],
)
def test_damaged_safetensors_headers(hf_dir, edit, match):
    _rewrite_header(hf_dir / "model.safetensors", edit)
    refused(hf_dir, r"model\.safetensors: not a readable safetensors file.*" + match)


def test_truncated_safetensors_data_and_short_files(hf_dir):
    weights = hf_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-4])
    refused(hf_dir, r"does not fit its data offsets")
    weights.write_bytes(data[:5])
    refused(hf_dir, r"shorter than the 8-byte header length")


def test_header_is_read_without_loading_the_data(hf_source):
    header = read_safetensors_header(hf_source / "model.safetensors")
    assert header["decoder.layers.0.conv.bias"] == ("F32", (16,))


# --------------------------------------------------------------------------------------------------
# State dicts: what a weights_only pickle can still hold


@pytest.fixture
def bin_dir(hf_source, tmp_path):
    """The tiny checkpoint with pytorch_model.bin (a torch pickle) instead of model.safetensors."""
    from safetensors.torch import load_file

    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(hf_source / "config.json", folder)
    return folder, load_file(str(hf_source / "model.safetensors"))


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda s: s.update({7: torch.zeros(1)}), r"state dict key 7 is not a string"),
        (
            lambda s: s.update({"decoder.layers.0.conv.bias": s["decoder.layers.0.conv.bias"].long()}),
            r"'decoder\.layers\.0\.conv\.bias' is not a floating-point tensor \(torch\.int64",
        ),
        (
            lambda s: s.update({"decoder.layers.0.conv.bias": s["decoder.layers.0.conv.bias"].to_sparse()}),
            r"is not a floating-point tensor .*sparse",
        ),
        (lambda s: s.update({"decoder.layers.0.conv.bias": [1.0, 2.0]}), r"is not a floating-point tensor \(list\)"),
        (
            lambda s: s.update({"decoder.layers.0.conv.bias": s["decoder.layers.0.conv.bias"][:3]}),
            r"has shape \[3\], the architecture in the config needs \[16\]",
        ),
        (lambda s: [s.pop(k) for k in list(s) if k.startswith("decoder.")], r"no decoder weights"),
        (
            lambda s: s.update(
                {
                    "decoder.layers.0.conv.parametrizations.weight.original1": s[
                        "decoder.layers.0.conv.parametrizations.weight.original1"
                    ]
                    .transpose(1, 2)
                    .contiguous()
                }
            ),
            r"has shape \[16, 7, 8\], the architecture in the config needs \[16, 8, 7\]",
        ),
    ],
)
def test_damaged_state_dicts(bin_dir, damage, match):
    folder, state = bin_dir
    damage(state)
    torch.save(state, folder / "pytorch_model.bin")
    refused(folder, r"pytorch_model\.bin: .*" + match)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("where", ["pytorch_model.bin", "pointer"])
def test_pickles_carrying_code_are_refused_not_executed(bin_dir, tmp_path, where):
    folder, state = bin_dir
    marker = tmp_path / "executed"
    target = folder / "pytorch_model.bin" if where == "pytorch_model.bin" else tmp_path / "compression_state_dict.bin"
    payload = (
        {**state, "x": _Payload(marker)}
        if where == "pytorch_model.bin"
        else {"pretrained": _Payload(marker), "exported": True}
    )
    with open(target, "wb") as f:
        pickle.dump(payload, f)
    refused(folder if where == "pytorch_model.bin" else target, r"refused")
    assert not marker.exists()


def test_zip_bomb_is_refused_before_inflating(bin_dir):
    import io
    import zipfile

    folder, state = bin_dir
    state["padding"] = torch.zeros(2_000_000)  # 8 MB of zeros deflate to a few kB
    plain = io.BytesIO()
    torch.save(state, plain)
    source = zipfile.ZipFile(io.BytesIO(plain.getvalue()))
    with zipfile.ZipFile(folder / "pytorch_model.bin", "w", compression=zipfile.ZIP_DEFLATED) as bomb:
        for info in source.infolist():
            bomb.writestr(info.filename, source.read(info.filename))
    assert (folder / "pytorch_model.bin").stat().st_size < 200_000
    refused(folder, r"pytorch_model\.bin: its zip records expand to \d+ bytes from a \d+-byte file")


@pytest.mark.parametrize("name", [None, 3, "a\x00b", "../../../etc", "x" * 500, ["facebook/encodec_32khz"]])
def test_pointer_to_a_name_that_is_not_a_model_name(tmp_path, name):
    p = tmp_path / "compression_state_dict.bin"
    torch.save({"pretrained": name, "exported": True}, p)
    refused(p, r"'pretrained' is not a Hugging Face model name")


def test_pointer_to_a_real_name_still_resolves_or_explains(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_home"))
    refused(write_pointer(tmp_path / "compression_state_dict.bin"), r"not in the local Hugging Face cache")


# --------------------------------------------------------------------------------------------------
# audiocraft exports: YAML xp.cfg


@pytest.fixture(scope="module")
def ac_source(tmp_path_factory):
    path, _ = write_audiocraft_checkpoint(tmp_path_factory.mktemp("ac") / "compression_state_dict.bin", seed=4)
    return torch.load(path, weights_only=True)


def _with_cfg(tmp_path, pkg, text):
    p = tmp_path / "compression_state_dict.bin"
    torch.save({**pkg, "xp.cfg": text}, p)
    return p


def _laughs(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _interpolation_laughs(levels: int, whole_values: bool) -> str:
    if whole_values:  # lists of references to lists: resolving copies each one
        lines = ["a0: [x, x, x, x, x, x, x, x, x, x]"]
        lines += [f"a{i}: [{', '.join([repr('${a%d}' % (i - 1))] * 10)}]" for i in range(1, levels)]
    else:  # strings made of references to strings
        lines = ["a0: xxxxxxxxxx"] + [f"a{i}: '{('${a%d}' % (i - 1)) * 10}'" for i in range(1, levels)]
    return "\n".join(lines) + "\nseanet: {ratios: [4, 2]}\n"


@pytest.mark.parametrize(
    "text, match",
    [
        (_laughs(9), r"aliases expand to more than"),  # 10^9 values once expanded
        (_interpolation_laughs(10, whole_values=False), r"interpolations expand to more than"),
        (_interpolation_laughs(10, whole_values=True), r"interpolations expand to more than"),
        ("a: &a [1, *a]\n", r"alias refers to itself"),
        ("[" * 5000 + "]" * 5000, r"(nested too deeply|not a mapping|bad 'xp\.cfg')"),
        ("seanet: {ratios: [4, 2]\n", r"bad 'xp\.cfg'"),
        ("x" * (guards.MAX_TEXT_BYTES + 1), r"too large for a config"),
    ],
)
def test_hostile_yaml(tmp_path, ac_source, text, match):
    refused(_with_cfg(tmp_path, ac_source, text), match)


def test_xp_cfg_of_the_wrong_type(tmp_path, ac_source):
    refused(_with_cfg(tmp_path, ac_source, 12), r"bad 'xp\.cfg': expected YAML text, found int")


@pytest.mark.parametrize(
    "old, new, match",
    [
        ("ratios: [4, 2]", "ratios: null", r"ratios must be a list"),
        ("ratios: [4, 2]", "ratios: '42'", r"ratios must be a list"),
        ("ratios: [4, 2]", "ratios: [4.0, 2]", r"ratios must be a list"),
        ("n_filters: 4", "n_filters: 4.0", r"n_filters must be a positive integer"),
        ("n_filters: 4", "n_filters: -4", r"n_filters must be a positive integer"),
        ("n_filters: 4", "n_filters: 100000", r"parameters, more than 10x"),
        ("lstm: 1", "lstm: 100000", r"at least \d+ tensors"),
        ("true_skip: true", "true_skip: 'no'", r"true_skip must be true or false"),
        ('activation_params: {"alpha": 1.0}', "activation_params: [1]", r"activation_params must be a mapping"),
        ('activation_params: {"alpha": 1.0}', 'activation_params: {"alpha": x}', r"fails on a 2-frame input"),
        ("activation: ELU", "activation: Transformer", r"activation 'Transformer' is not an elementwise activation"),
        ("activation: ELU", "activation: Embedding", r"activation 'Embedding' is not an elementwise activation"),
        (
            'activation_params: {"alpha": 1.0}',
            'activation_params: {"alpha": 1.0, device: cpu}',
            r"activation_params may not set a device",
        ),
        ('activation_params: {"alpha": 1.0}\n  norm:', "activation_params: {}\n  norm:", None),
        ("dilation_base: 2", "dilation_base: 1000000000", None),  # one residual layer: dilation 1, fine
        ("trim_right_ratio: 1.0", "trim_right_ratio: .nan", r"trim_right_ratio must lie in"),
    ],
)
def test_audiocraft_config_values(tmp_path, ac_source, old, new, match):
    text = ac_source["xp.cfg"]
    assert old in text
    p = _with_cfg(tmp_path, ac_source, text.replace(old, new, 1))
    if match is None:
        assert isinstance(load_decoder(p), SEANetDecoder)
    else:
        refused(p, match)


def test_activation_with_parameters_is_refused_on_the_meta_device(tmp_path, ac_source):
    text = (
        ac_source["xp.cfg"]
        .replace("activation: ELU", "activation: PReLU")
        .replace('activation_params: {"alpha": 1.0}', "activation_params: {}")
    )
    refused(_with_cfg(tmp_path, ac_source, text), r"parameters no checkpoint holds.*act")


# --------------------------------------------------------------------------------------------------
# What the system raises: out of memory, I/O errors


def test_memory_error_while_reading_is_a_checkpoint_error(hf_dir, monkeypatch):
    def no_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(loading, "read_text_file", no_memory)
    refused(hf_dir, r"out of memory while reading it")


def test_io_error_while_reading_is_a_checkpoint_error(hf_dir, monkeypatch):
    def io_error(path):
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(loading, "read_safetensors_header", io_error)
    refused(hf_dir, r"cannot read it \(.*model\.safetensors\): Input/output error")


def test_allocator_failure_while_materialising_is_a_checkpoint_error(hf_dir, monkeypatch):
    def no_memory(self, fn, recurse=True):  # allocating the decoder's storage (Module._apply)
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 10 bytes")

    monkeypatch.setattr(SEANetDecoder, "_apply", no_memory)
    refused(hf_dir, r"no memory for a decoder of [\d,]+ parameters")


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_files_that_never_end_are_refused(hf_dir, tmp_path, kind):
    import os

    def endless(path):
        path.unlink(missing_ok=True)
        if kind == "fifo":
            os.mkfifo(path)  # no writer: reading it would block forever
        else:
            path.symlink_to("/dev/zero")

    endless(hf_dir / "config.json")
    refused(hf_dir / "config.json", r"config\.json: not a regular file")
    endless(tmp_path / "compression_state_dict.bin")
    refused(tmp_path / "compression_state_dict.bin", r"compression_state_dict\.bin: not a regular file")


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("DefaultCPUAllocator: can't allocate memory")])
def test_allocator_failure_while_folding_is_a_checkpoint_error(hf_dir, monkeypatch, error):
    def no_memory(g, v):
        raise error

    monkeypatch.setattr(loading, "_fold_weight_norm", no_memory)
    refused(hf_dir, r"model\.safetensors: out of memory while folding the weights")


def test_config_json_that_is_a_folder(hf_dir):
    (hf_dir / "config.json").unlink()
    (hf_dir / "config.json").mkdir()
    refused(hf_dir, r"neither a transformers")  # not a file: the folder is then neither format


def test_valid_checkpoints_still_load(hf_source, bin_dir, tmp_path):
    folder, state = bin_dir
    torch.save(state, folder / "pytorch_model.bin")
    a, b = load_decoder(hf_source), load_decoder(folder)
    x = torch.randn(1, 8, 3)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
