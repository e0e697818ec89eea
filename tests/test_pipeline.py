"""jasco_fast.pipeline: LatentDecoder (the fast path, eager and compiled) against reference.decode
(JASCO's eager path), its input checks, dtypes and compile options."""

from __future__ import annotations

import pytest
import torch
from checkpoints import F32_TOL, rel_err

from jasco_fast import LatentDecoder, load_decoder, reference
from jasco_fast.backends import compile_options
from jasco_fast.pipeline import DTYPES


@pytest.fixture(scope="module")
def tiny_decoder(tiny_hf_checkpoint):
    return load_decoder(tiny_hf_checkpoint)


@pytest.mark.parametrize("channels_last", [True, False])
def test_eager_matches_reference(tiny_decoder, channels_last):
    fast = LatentDecoder(tiny_decoder, backend="eager", channels_last=channels_last)
    assert not fast.is_compiled
    for B, T in [(1, 1), (3, 2), (2, 5), (2, 64)]:
        latents = torch.randn(B, T, 8)
        want = reference.decode(tiny_decoder, latents)
        got = fast(latents)
        assert got.dtype == torch.float32 and got.shape == (B, 1, T * tiny_decoder.hop_length)
        assert rel_err(got, want) < F32_TOL


def test_per_channel_statistics_and_strided_latents(tiny_decoder):
    mean, std = torch.randn(8) * 0.1, torch.rand(8) + 0.5
    fast = LatentDecoder(tiny_decoder, mean, std, backend="eager")
    latents = torch.randn(2, 8, 30).transpose(1, 2)  # [B, T, D] with non-contiguous strides
    assert rel_err(fast(latents), reference.decode(tiny_decoder, latents, mean, std)) < F32_TOL


def test_compiled_matches_reference_without_recompiling(tiny_decoder):
    fast = LatentDecoder(tiny_decoder, backend="inductor")
    assert fast.is_compiled and fast.backend == "inductor"
    latents = torch.randn(2, 12, 8)
    assert rel_err(fast(latents), reference.decode(tiny_decoder, latents)) < F32_TOL
    # one graph serves every length (T is dynamic): a recompilation would raise here
    with torch.compiler.set_stance("fail_on_recompile"):
        for T in (29, 40, 57):
            latents = torch.randn(2, T, 8)
            assert rel_err(fast(latents), reference.decode(tiny_decoder, latents)) < F32_TOL, T


def test_compiled_single_frame(tiny_decoder):
    fast = LatentDecoder(tiny_decoder, backend="inductor")
    latents = torch.randn(1, 1, 8)
    assert rel_err(fast(latents), reference.decode(tiny_decoder, latents)) < F32_TOL


def test_bfloat16_error_budget(tiny_decoder):
    """bf16 compute: its error against the float32 reference must stay within twice the error the
    reference itself makes when run in bf16 (the flash-attention rule), plus a small floor."""
    latents = torch.randn(2, 40, 8)
    want = reference.decode(tiny_decoder, latents)
    ref_bf16 = reference.decode(reference.ReferenceDecoder(tiny_decoder).to(torch.bfloat16), latents.bfloat16()).float()
    budget = 2 * rel_err(ref_bf16, want) + 1e-3
    got = LatentDecoder(tiny_decoder, backend="eager", dtype=DTYPES["bfloat16"])(latents)
    assert got.dtype == torch.float32
    assert rel_err(got, want) <= budget
    assert budget < 0.1  # the budget itself is meaningful, not vacuous


def test_input_errors(tiny_decoder):
    fast = LatentDecoder(tiny_decoder, backend="eager")
    with pytest.raises(ValueError, match=r"\[B, T, 8\]"):
        fast(torch.randn(2, 8))
    with pytest.raises(ValueError, match=r"\[B, T, 8\]"):
        fast(torch.randn(1, 5, 7))
    with pytest.raises(TypeError, match="latents must be float32/float64/float16/bfloat16"):
        fast(torch.ones(1, 5, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="T >= 1"):
        fast(torch.randn(1, 0, 8))
    with pytest.raises(ValueError, match="mean"):
        LatentDecoder(tiny_decoder, mean=torch.zeros(3))
    with pytest.raises(ValueError, match="std must be finite"):
        LatentDecoder(tiny_decoder, std=float("nan"))
    with pytest.raises(TypeError, match="SEANetDecoder"):
        LatentDecoder(torch.nn.Linear(2, 2))
    assert fast(torch.randn(0, 5, 8)).shape == (0, 1, 5 * tiny_decoder.hop_length)


def test_compiled_input_errors_are_plain_errors(tiny_decoder):
    """Checked before the compiled graph: the same ValueError/TypeError, not a wrapped dynamo error."""
    fast = LatentDecoder(tiny_decoder, backend="inductor")
    with pytest.raises(TypeError, match="latents must be float32/float64/float16/bfloat16"):
        fast(torch.ones(1, 5, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\[B, T, 8\]"):
        fast(torch.randn(1, 5, 7))


def test_mode_options():
    assert compile_options(None) == {}
    assert compile_options("default") == {}
    assert compile_options("max-autotune-no-cudagraphs") == {"max_autotune": True, "coordinate_descent_tuning": True}
    assert compile_options("reduce-overhead") == {"triton.cudagraphs": True}
    with pytest.raises(ValueError, match="mode.*banana"):
        compile_options("banana")


def test_mode_runs(tiny_decoder):
    fast = LatentDecoder(tiny_decoder, mode="default")
    assert fast.backend == "inductor"  # a torch.compile mode picks the inductor backend by default
    latents = torch.randn(1, 7, 8)
    assert rel_err(fast(latents), reference.decode(tiny_decoder, latents)) < F32_TOL
    with pytest.raises(ValueError, match="mode.*banana"):
        LatentDecoder(tiny_decoder, mode="banana")
    for backend in ("eager", "aot"):  # a torch.compile option where torch.compile does not run
        with pytest.raises(ValueError, match="mode is a torch.compile mode: it needs backend='inductor'"):
            LatentDecoder(tiny_decoder, backend=backend, mode="default")


def test_backend_choice(tiny_decoder):
    assert LatentDecoder(tiny_decoder).backend == "aot"  # the CPU's default
    for backend in ("eager", "inductor", "aot"):
        fast = LatentDecoder(tiny_decoder, backend=backend, background_build=False)
        assert fast.backend == backend and fast.is_compiled == (backend != "eager")
    for wrong in ("torch.compile", True, False, "AOT"):
        with pytest.raises(ValueError, match="backend must be None"):
            LatentDecoder(tiny_decoder, backend=wrong)


@pytest.mark.parametrize("old", [{"compile": False}, {"compile_mode": "default"}])
def test_old_argument_names_are_gone(tiny_decoder, old):
    with pytest.raises(TypeError, match="unexpected keyword"):
        LatentDecoder(tiny_decoder, **old)
    assert not hasattr(LatentDecoder(tiny_decoder, backend="eager"), "compiled")


def test_input_rules_are_the_ops(tiny_decoder, monkeypatch):
    """Beyond the decoder's D, LatentDecoder checks latents with the rule function of the denorm_transpose op."""
    import jasco_fast.ops as ops

    seen = []
    rules = ops.check_denorm_transpose
    monkeypatch.setattr(
        ops,
        "check_denorm_transpose",
        lambda latents, mean, std, dtype: (
            seen.append((tuple(latents.shape), mean.shape, std.shape)) or rules(latents, mean, std, dtype)
        ),
    )
    fast = LatentDecoder(tiny_decoder, torch.zeros(8), 2.0, backend="eager")
    fast(torch.randn(2, 5, 8))
    assert seen and seen[0] == ((2, 5, 8), (8,), ())
    with pytest.raises(TypeError, match="denorm_transpose: latents must be float32"):
        fast(torch.ones(1, 5, 8, dtype=torch.complex64))
