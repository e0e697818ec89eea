"""benchmarks/_peers.py: the ONNX-exportable form of the reference decoder computes what the reference does,
at any length (the peers table would otherwise compare a different network), and the export runs."""

from __future__ import annotations

import _peers  # benchmarks/ is on pytest's pythonpath (pyproject.toml)
import pytest
import torch

from jasco_fast import DecoderConfig, SEANetDecoder, reference

# small, but with what the export must get right: reflect padding, dilation, odd and even trims, the LSTM
CONFIGS = {
    "noncausal": DecoderConfig(dimension=16, n_filters=4, ratios=(4, 3), lstm=1, n_residual_layers=2),
    "causal_constant": DecoderConfig(
        dimension=16, n_filters=4, ratios=(2, 5), lstm=2, causal=True, pad_mode="constant", trim_right_ratio=0.5
    ),
}


def _decoder(cfg: DecoderConfig, seed: int = 0) -> SEANetDecoder:
    torch.manual_seed(seed)
    return SEANetDecoder(cfg).eval()


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("frames", [9, 40])
def test_exported_form_matches_the_reference(name, frames):
    decoder = _decoder(CONFIGS[name])
    ref = reference.ReferenceDecoder(decoder)
    latents = torch.randn(2, frames, decoder.config.dimension, generator=torch.Generator().manual_seed(frames))
    want = reference.decode(ref, latents)
    with torch.no_grad():
        got = _peers._ExportedDecode(decoder).eval()(latents)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(reference.decode(ref, latents), want)  # the reference is left as it was


def test_onnx_export_follows_the_length(tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="the bench extra (onnxruntime) is not installed")
    pytest.importorskip("onnx", reason="the bench extra (onnx) is not installed")
    decoder = _decoder(CONFIGS["noncausal"])
    ref = reference.ReferenceDecoder(decoder)
    setup = {"decoder": decoder, "workdir": tmp_path}
    session = ort.InferenceSession(str(_peers.export_onnx(setup)), providers=["CPUExecutionProvider"])
    for batch, frames in ((1, 64), (3, 23)):  # the export was traced at (1, 64)
        latents = torch.randn(batch, frames, decoder.config.dimension, generator=torch.Generator().manual_seed(frames))
        want = reference.decode(ref, latents)
        got = torch.from_numpy(session.run(None, {"latents": latents.numpy()})[0])
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_missing_package_is_reported_not_raised_as_import_error():
    with pytest.raises(_peers.NotInstalled, match="not installed"):
        _peers.need("a_package_that_does_not_exist_here")
