"""jasco_fast.decoder: the GEMM form of the transposed convolution (ConvTranspose._as_gemm), which wide stages take
on some CPUs (bfloat16 with AMX, float32 on AVX2-class CPUs), against conv_transpose2d and against the reference;
its prepacked weight matrix (ConvTranspose.prepack)."""

from __future__ import annotations

import pytest
import torch
from checkpoints import rel_err

import jasco_fast.decoder as decoder_module
from jasco_fast import DecoderConfig, LatentDecoder, SEANetDecoder, reference
from jasco_fast.decoder import GEMM_TRANSPOSED_CONV_MIN_CHANNELS, ConvTranspose, _gemm_transposed_conv


@pytest.mark.parametrize(
    "c_in,c_out,stride,kernel,causal,trim",
    [
        (16, 8, 4, 8, False, 1.0),  # SEANet's kernel = 2 * stride
        (16, 8, 5, 10, True, 1.0),
        (8, 4, 3, 7, False, 1.0),  # kernel not a multiple of the stride
        (8, 4, 4, 4, True, 0.5),  # kernel = stride, causal with partial right trim
        (4, 3, 2, 9, True, 0.0),
    ],
)
@pytest.mark.parametrize("frames", [1, 2, 37])
def test_gemm_form_equals_conv_transpose(c_in, c_out, stride, kernel, causal, trim, frames):
    torch.manual_seed(0)
    layer = ConvTranspose(c_in, c_out, kernel, stride, causal=causal, trim_right_ratio=trim).double()
    x = torch.randn(2, c_in, 1, frames, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want = layer(x)  # float64: the conv_transpose2d path
        got = layer._as_gemm(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # also from a contiguous (not channels-last) input
    torch.testing.assert_close(layer._as_gemm(x.contiguous()), want, rtol=1e-12, atol=1e-12)


@pytest.fixture
def amx(monkeypatch):
    """The GEMM form is chosen on CPUs with AMX only; pretend this one has it, so every machine tests it."""
    monkeypatch.setattr(decoder_module, "cpu_has_amx", lambda: True)


def test_which_layers_take_the_gemm_form(monkeypatch):
    wide = torch.empty(GEMM_TRANSPOSED_CONV_MIN_CHANNELS, 4, 1, 8)
    cpu, meta = torch.device("cpu"), torch.device("meta")
    monkeypatch.setattr(decoder_module, "cpu_has_amx", lambda: False)
    assert not _gemm_transposed_conv(cpu, wide.bfloat16())  # without AMX oneDNN's deconvolution measured faster
    monkeypatch.setattr(decoder_module, "cpu_has_amx", lambda: True)
    monkeypatch.setattr(decoder_module, "cpu_is_avx2_class", lambda: False)
    assert _gemm_transposed_conv(cpu, wide.bfloat16())
    assert not _gemm_transposed_conv(cpu, wide)  # float32: oneDNN's deconvolution measured faster
    assert not _gemm_transposed_conv(cpu, wide.half())  # float16: not measured
    assert not _gemm_transposed_conv(cpu, wide[: GEMM_TRANSPOSED_CONV_MIN_CHANNELS - 1].bfloat16())
    assert not _gemm_transposed_conv(meta, wide.bfloat16().to("meta"))  # CPU only
    assert not _gemm_transposed_conv(meta, wide.bfloat16())


def test_float32_gemm_form_on_avx2_class_cpus(monkeypatch):
    n = decoder_module.GEMM_TRANSPOSED_CONV_MIN_CHANNELS_AVX2_FLOAT32
    wide, cpu = torch.empty(n, 4, 1, 8), torch.device("cpu")
    monkeypatch.setattr(decoder_module, "cpu_is_avx2_class", lambda: True)
    assert _gemm_transposed_conv(cpu, wide)
    assert not _gemm_transposed_conv(cpu, wide[: n // 2])  # 512 channels: oneDNN's measured faster
    assert not _gemm_transposed_conv(torch.device("meta"), wide.to("meta"))
    monkeypatch.setattr(decoder_module, "cpu_is_avx2_class", lambda: False)
    assert not _gemm_transposed_conv(cpu, wide)


@pytest.fixture
def avx2_class(monkeypatch):
    """float32 takes the GEMM form on AVX2-class CPUs only; pretend this one is one, with a threshold of 16."""
    monkeypatch.setattr(decoder_module, "cpu_is_avx2_class", lambda: True)
    monkeypatch.setattr(decoder_module, "GEMM_TRANSPOSED_CONV_MIN_CHANNELS_AVX2_FLOAT32", 16)


def test_prepack_keeps_the_gemm_matrix_out_of_the_state_dict(avx2_class):
    torch.manual_seed(0)
    layer = ConvTranspose(16, 8, 10, 5, causal=True)
    x = torch.randn(2, 16, 1, 9).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        unpacked = layer(x)
        assert layer.prepack() is layer and layer.gemm_weight is not None
        assert layer.gemm_weight.shape == (2 * 16, 5 * 8)
        assert set(layer.state_dict()) == {"weight", "bias"}
        torch.testing.assert_close(layer(x), unpacked, rtol=0, atol=0)


def test_prepacked_layer_still_trains(avx2_class):
    """With gradients on, the GEMM form reads the weight itself (the pack is a detached copy)."""
    torch.manual_seed(0)
    layer = ConvTranspose(16, 8, 8, 4).prepack()
    x = torch.randn(2, 16, 1, 7, requires_grad=True)
    layer(x).square().sum().backward()
    got = layer.weight.grad.clone(), x.grad.clone()
    layer.weight.grad, x.grad = None, None
    y = torch.nn.functional.conv_transpose2d(x, layer.weight, layer.bias, stride=(1, 4))[..., 2:-2]
    y.square().sum().backward()
    torch.testing.assert_close(got[0], layer.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[1], x.grad, rtol=1e-4, atol=1e-5)


def test_prepack_follows_dtype_and_loaded_weights(avx2_class):
    torch.manual_seed(0)
    layer = ConvTranspose(16, 8, 8, 4).prepack()
    x = torch.randn(1, 16, 1, 7, dtype=torch.float64)
    layer.double()  # float64 does not take the GEMM form: the matrix is dropped, not kept stale
    assert layer.gemm_weight is None
    layer.float().prepack()
    other = ConvTranspose(16, 8, 8, 4)
    layer.load_state_dict(other.state_dict())  # new weights: packed again
    with torch.no_grad():
        torch.testing.assert_close(layer.gemm_weight, other._gemm_matrix(), rtol=0, atol=0)
        torch.testing.assert_close(layer(x.float()), other(x.float()), rtol=0, atol=0)


def test_fuse_prepacks_only_the_layers_that_take_the_gemm_form(avx2_class, monkeypatch):
    monkeypatch.setattr(decoder_module, "FUSED_CONV_TRANSPOSE_MAX_CHANNELS", {})  # no layer runs the tail op
    torch.manual_seed(0)
    decoder = SEANetDecoder(DecoderConfig(dimension=16, n_filters=4, ratios=(2, 2, 2))).eval().fuse()
    layers = [m for m in decoder.modules() if isinstance(m, ConvTranspose)]
    assert [m.weight.shape[0] for m in layers] == [32, 16, 8]
    assert [m.gemm_weight is not None for m in layers] == [m.weight.shape[0] >= 16 for m in layers]
    assert any(m.gemm_weight is not None for m in layers) and not all(m.gemm_weight is not None for m in layers)


@pytest.fixture(scope="module")
def wide_decoder():
    # n_filters 32 with 4 ratios: the first upsampling stage has 512 input channels (the GEMM form)
    torch.manual_seed(0)
    return SEANetDecoder(DecoderConfig(dimension=16, n_filters=32, ratios=(2, 2, 2, 2))).eval()


@pytest.mark.parametrize("backend", ["eager", None])
def test_bfloat16_decode_with_gemm_form_within_budget(wide_decoder, backend, one_thread, amx):
    """bf16 decode (GEMM form on the wide stage): error against the float32 reference within twice the
    error of the reference run in bf16, plus a small floor (the rule of tests/test_pipeline.py)."""
    assert any(
        isinstance(m, ConvTranspose) and m.weight.shape[0] >= GEMM_TRANSPOSED_CONV_MIN_CHANNELS
        for m in wide_decoder.modules()
    )
    latents = torch.randn(2, 12, 16)
    want = reference.decode(wide_decoder, latents)
    ref_bf16 = reference.decode(reference.ReferenceDecoder(wide_decoder).to(torch.bfloat16), latents.bfloat16()).float()
    budget = 2 * rel_err(ref_bf16, want) + 1e-3
    got = LatentDecoder(wide_decoder, backend=backend, dtype=torch.bfloat16, chunk_frames=None)(latents)
    assert rel_err(got, want) <= budget
    assert budget < 0.1


def test_bfloat16_gemm_form_exports(wide_decoder, one_thread, amx):
    """torch.export (what the ahead-of-time artifacts build on) traces the GEMM form too."""
    decoder = LatentDecoder(wide_decoder, backend="eager", dtype=torch.bfloat16).decoder
    x = torch.randn(2, 16, 10).bfloat16()
    program = torch.export.export(decoder, (x,))
    assert any(node.target == torch.ops.aten.matmul.default or "mm" in str(node.target) for node in program.graph.nodes)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), decoder(x))
