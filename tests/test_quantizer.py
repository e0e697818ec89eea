"""Quantizer / load_quantizer: RVQ codebooks from both checkpoint formats, decoded like transformers' and
audiocraft's own quantizers."""

from __future__ import annotations

import pytest
import torch
from checkpoints import (
    AUDIOCRAFT_MISSING,
    audiocraft_modules,
    audiocraft_quantization,
    fake_hf_cache,
    needs_oracle,
    write_audiocraft_checkpoint,
    write_audiocraft_codes_checkpoint,
    write_pointer,
    write_transformers_codes_dir,
)

import jasco_fast
from jasco_fast import CheckpointError, Quantizer, load_quantizer

# float32: 1e-4 of the peak, as the issue asks (the sums are in the same order, so they agree far closer)
F32_TOL = 1e-4

needs_audiocraft_rvq = needs_oracle(
    audiocraft_modules() is not None and audiocraft_quantization() is not None,
    AUDIOCRAFT_MISSING if audiocraft_modules() is None else "einops is needed for audiocraft's own RVQ",
)


def rel_err(got, want):
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.fixture(scope="module")
def hf_codes(tmp_path_factory):
    return write_transformers_codes_dir(tmp_path_factory.mktemp("hf_codes"), seed=3)


@pytest.mark.parametrize("K", [1, 2, 4, 6])
def test_transformers_dir_decodes_like_transformers_quantizer(hf_codes, K):
    path, model = hf_codes
    q = load_quantizer(path)
    assert (q.num_codebooks, q.codebook_size, q.dimension) == (6, 16, 8)
    codes = torch.randint(0, 16, (3, K, 41))
    with torch.no_grad():
        want = model.quantizer.decode(codes.transpose(0, 1)).transpose(1, 2)  # [B, T, D]
    got = q.decode(codes)
    assert got.shape == (3, 41, 8) and got.is_contiguous()
    assert rel_err(got, want) < F32_TOL
    assert torch.equal(got, want)  # the same float32 sums in the same order: the same bits


@needs_audiocraft_rvq
@pytest.mark.parametrize("K", [1, 3, 4])
def test_audiocraft_export_decodes_like_audiocraft_rvq(tmp_path, K):
    path, _, rvq = write_audiocraft_codes_checkpoint(tmp_path / "compression_state_dict.bin", seed=5)
    q = load_quantizer(path)
    assert (q.num_codebooks, q.codebook_size, q.dimension) == (4, 16, 8)
    codes = torch.randint(0, 16, (2, K, 33))
    with torch.no_grad():
        want = rvq.decode(codes).transpose(1, 2)  # audiocraft: [B, D, T]
    assert rel_err(q.decode(codes), want) < F32_TOL
    assert torch.equal(q.decode(codes), want)  # the same float32 sums in the same order: the same bits
    assert torch.equal(load_quantizer(tmp_path).codebooks, q.codebooks)  # the folder holding the file


def test_pointer_file_resolves_to_local_cache(tmp_path, monkeypatch, hf_codes):
    path, model = hf_codes
    cache = tmp_path / "cache"
    fake_hf_cache(cache, "facebook/encodec_32khz", path)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    q = load_quantizer(write_pointer(tmp_path / "compression_state_dict.bin"))
    assert torch.equal(q.codebooks, torch.stack([layer.codebook.embed for layer in model.quantizer.layers]))


def test_device_and_dtype(hf_codes):
    q = load_quantizer(hf_codes[0], dtype=torch.bfloat16)
    assert q.codebooks.dtype == torch.bfloat16 and q.codebooks.device.type == "cpu"
    codes = torch.randint(0, 16, (1, 2, 5), dtype=torch.int16)  # other integer dtypes are widened
    out = q.decode(codes, dtype=torch.float32)
    assert out.dtype == torch.float32
    want = jasco_fast.reference.codes_to_latents(codes.long(), q.codebooks, dtype=torch.float32).transpose(1, 2)
    assert torch.equal(out, want)


# ------------------------------------------------------------------------------------------------
# Errors: CheckpointError naming the file and the problem; bad codes


def _rewrite_state(path, edit):
    pkg = torch.load(path, weights_only=True)
    pkg["best_state"] = edit(dict(pkg["best_state"]))
    torch.save(pkg, path)
    return path


BOOK = "quantizer.vq.layers.{}._codebook.embed"


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda s: {k: v for k, v in s.items() if not k.startswith("quantizer.")}, "no quantizer codebooks"),
        (
            lambda s: {**{k: v for k, v in s.items() if k != BOOK.format(1)}, BOOK.format(2): torch.randn(16, 8)},
            r"not numbered 0..1: found \[0, 2\]",
        ),
        (
            lambda s: {**s, BOOK.format(1): torch.randn(8, 8)},
            r"has shape \[8, 8\]; every codebook must be \[codebook_size, D\] = \[16, 8\]",
        ),
        (lambda s: {**s, BOOK.format(1): torch.full((16, 8), float("nan"))}, "NaN or Inf"),
        (lambda s: {**s, BOOK.format(1): torch.ones(16, 8, dtype=torch.int64)}, "not a floating-point tensor"),
        (
            lambda s: {**s, BOOK.format(0): torch.randn(16, 6), BOOK.format(1): torch.randn(16, 6)},
            "codebooks have D = 6, the decoder reads D = 8",
        ),
        (lambda s: {**s, "quantizer.vq.layers.0.project_out.weight": torch.randn(8, 8)}, "projections"),
    ],
)
def test_bad_checkpoints(tmp_path, edit, match):
    path, _ = write_audiocraft_checkpoint(tmp_path / "compression_state_dict.bin")
    path = _rewrite_state(path, lambda s: edit({**s, BOOK.format(1): torch.randn(16, 8)}))
    with pytest.raises(CheckpointError, match=match) as info:
        load_quantizer(path)
    assert str(path) in str(info.value)


def test_refuses_pickled_code_and_missing_files(tmp_path):
    bad = tmp_path / "evil.bin"
    torch.save({"best_state": {}, "xp.cfg": "", "payload": _Evil()}, bad)
    with pytest.raises(CheckpointError, match="refused"):
        load_quantizer(bad)
    with pytest.raises(CheckpointError, match="no such file"):
        load_quantizer(tmp_path / "missing.bin")


class _Evil:
    pass


def test_quantizer_decode_errors():
    q = Quantizer(torch.randn(3, 10, 4))
    with pytest.raises(TypeError, match="integer"):
        q.decode(torch.zeros(1, 2, 3))
    with pytest.raises(TypeError, match="tensor"):
        q.decode([[[0]]])
    with pytest.raises(ValueError, match="K = 4 .* has 3"):
        q.decode(torch.zeros(1, 4, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\[B, K, T\]"):
        q.decode(torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(RuntimeError, match=r"code 10 at \[b=0, k=1, t=2\] is out of range"):
        q.decode(torch.tensor([[[0, 0, 0], [0, 0, 10]]]))
    with pytest.raises(RuntimeError, match=r"code -1 at"):
        q.decode(torch.tensor([[[0, -1, 0]]]))
    with pytest.raises(ValueError, match="num_codebooks, codebook_size, D"):
        Quantizer(torch.randn(10, 4))
    with pytest.raises(TypeError, match="floating-point"):
        Quantizer(torch.zeros(1, 10, 4, dtype=torch.int64))
