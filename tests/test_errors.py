"""Out of memory while decoding (jasco_fast/errors.py): LatentDecoder and the CLI say what to change.

The CPU case uses a real allocator failure (a 32 TiB request); the GPU's torch.OutOfMemoryError is raised
as the CUDA caching allocator raises it, with its message.
"""

from __future__ import annotations

import pytest
import torch

import jasco_fast
from jasco_fast.cli import main
from jasco_fast.decoder import DecoderConfig, SEANetDecoder
from jasco_fast.errors import decoding_out_of_memory, first_line, is_out_of_memory

TINY = DecoderConfig(dimension=8, n_filters=4, ratios=(4, 2), lstm=1, sample_rate=8000)
CUDA_OOM = (
    "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which "
    "3.06 GiB is free."
)


def allocate_too_much(*_):
    return torch.empty(2**45, dtype=torch.uint8)  # the CPU allocator's own RuntimeError


def gpu_out_of_memory(*_):
    raise torch.OutOfMemoryError(CUDA_OOM)


def test_recognises_allocator_errors():
    with pytest.raises(RuntimeError) as cpu:
        allocate_too_much()
    assert type(cpu.value) is RuntimeError and is_out_of_memory(cpu.value)
    assert is_out_of_memory(torch.OutOfMemoryError(CUDA_OOM))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 17 GB)"))
    assert not is_out_of_memory(RuntimeError("Given groups=1, weight of size [4, 8, 7], expected input ..."))
    assert not is_out_of_memory(ValueError("out of memory"))  # not an allocator's error type


@pytest.mark.parametrize("fail", [allocate_too_much, gpu_out_of_memory], ids=["cpu_allocator", "cuda_allocator"])
def test_latent_decoder_names_the_batch_and_the_remedies(fail, monkeypatch):
    monkeypatch.setattr(jasco_fast.LatentDecoder, "_decode", fail)
    fast = jasco_fast.LatentDecoder(SEANetDecoder(TINY), backend="eager")
    with pytest.raises(torch.OutOfMemoryError) as err:
        fast(torch.randn(3, 50, TINY.dimension))
    message = str(err.value)
    assert "batch of 3 x 50 latent frames" in message and "on cpu in float32" in message
    assert "--batch-size" in message and "chunk_frames" in message and "--chunk-frames" in message
    assert "bfloat16" in message  # a float32 decoder can also halve its activations
    assert isinstance(err.value, RuntimeError) and err.value.__cause__ is not None  # the allocator's own error
    assert ("can't allocate memory" if fail is allocate_too_much else "CUDA out of memory") in message


def test_other_errors_pass_through_unchanged(monkeypatch):
    def broken(*_):
        raise RuntimeError("something else")

    monkeypatch.setattr(jasco_fast.LatentDecoder, "_decode", broken)
    with pytest.raises(RuntimeError, match="^something else$"):
        jasco_fast.LatentDecoder(SEANetDecoder(TINY), backend="eager")(torch.randn(1, 5, TINY.dimension))


def test_no_dtype_hint_for_16_bit_decoders():
    error = decoding_out_of_memory(RuntimeError("out of memory"), 2, 500, 50.0, torch.device("cuda", 0), torch.bfloat16)
    assert "on cuda:0 in bfloat16" in str(error) and "16-bit compute dtype" not in str(error)
    assert "(10.0 s of audio each)" in str(error)


def test_cli_names_the_batch_size(tmp_path, tiny_hf_checkpoint, monkeypatch, capsys):
    monkeypatch.setattr(jasco_fast.LatentDecoder, "_decode", allocate_too_much)
    for name in ("a", "b", "c"):
        torch.save(torch.randn(20, 8), tmp_path / f"{name}.pt")
    code = main(
        [
            "decode",
            *(str(tmp_path / f"{n}.pt") for n in "abc"),
            "--out-dir",
            str(tmp_path / "out"),
            "--checkpoint",
            str(tiny_hf_checkpoint),
            "--backend",
            "eager",
            "--batch-size",
            "2",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "decoding a, b: out of memory with 2 items of 20 frames (--batch-size 2) on cpu" in err
    assert "smaller --batch-size, or --chunk-frames" in err
    assert "decoding c: out of memory with 1 item of 20 frames" in err  # every batch reported; the run still finished


def test_first_line_of_an_error_message():
    assert first_line(ValueError("bad value\n  details")) == "bad value"
    assert first_line(ValueError()) == "ValueError"  # no message: the exception's type
    assert first_line(RuntimeError("  \n"), "") == ""
    assert first_line("", "error") == "error"
    assert first_line("\n  two\nthree") == "two"
