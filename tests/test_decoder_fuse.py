"""jasco_fast.decoder's fusion: which layers SEANetDecoder.fuse() / DecoderLayers.fuse() swap for fused modules
(FusedResBlock, FusedEluConv, FusedEluConvTranspose), where those run the ops tests/ops/test_elu_*.py test and where
their own layers, and that a fused decoder gives the reference's and the unfused decoder's output."""

from __future__ import annotations

import pytest
import torch
from elu_layers import (
    check,
    conv_op,
    conv_transpose_op,
    inputs,
    make_block,
    make_upsampler,
    resblock_op,
    rounded,
    upsampled_layers,
)

from jasco_fast import DecoderConfig, SEANetDecoder, reference
from jasco_fast.decoder import (
    FUSED_CONV_MAX_OUT_CHANNELS,
    FUSED_CONV_TRANSPOSE_MAX_CHANNELS,
    FUSED_RESBLOCK_MAX_CHANNELS,
    Conv,
    ConvTranspose,
    DecoderLayers,
    FusedEluConv,
    FusedEluConvTranspose,
    FusedResBlock,
    ResBlock,
)


def fused(*layers, dtype=torch.float32):
    """The module types DecoderLayers(*layers) in dtype holds once fused."""
    return [type(m) for m in DecoderLayers(*layers).to(dtype).fuse()]


def test_which_residual_blocks_fuse():
    """fuse() swaps in FusedResBlock for ELU residual blocks up to FUSED_RESBLOCK_MAX_CHANNELS (by dtype) on the
    CPU, in float32 and bfloat16 only; the FusedResBlock holds the block's own parameters."""
    widest, bf16 = FUSED_RESBLOCK_MAX_CHANNELS[torch.float32], FUSED_RESBLOCK_MAX_CHANNELS[torch.bfloat16]
    assert fused(make_block(widest)) == [FusedResBlock]
    assert fused(make_block(widest), dtype=torch.bfloat16) == [FusedResBlock]
    assert fused(make_block(16), dtype=torch.float64) == [ResBlock]
    assert fused(make_block(16), dtype=torch.float16) == [ResBlock]
    assert fused(make_block(2 * widest)) == [ResBlock]
    assert fused(make_block(bf16), dtype=torch.bfloat16) == [FusedResBlock]
    assert fused(make_block(2 * bf16), dtype=torch.bfloat16) == [ResBlock]
    assert [type(m) for m in DecoderLayers(make_block(16)).to("meta").fuse()] == [ResBlock]
    block = make_block(16)
    block.act2 = torch.nn.ReLU()
    assert fused(block) == [ResBlock]
    block = make_block(16)
    layers = DecoderLayers(block).fuse()
    assert layers[0].conv1 is block.conv1 and layers[0].conv2.weight is block.conv2.weight


def test_fused_block_runs_the_layers_where_the_op_does_not_apply():
    """A FusedResBlock runs the op for its kernel dtype on the CPU without gradients, and the block's own layers
    otherwise (gradients wanted, another dtype after fusing): exactly what the unfused block gives there."""
    block = make_block(16)
    layers = DecoderLayers(make_block(16)).fuse()

    def ran_op(x):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            y = layers(x)
        return "jasco_fast::elu_resblock" in {e.name for e in prof.events()}, y

    x = inputs(1, 16, 12, torch.float32)
    with torch.no_grad():
        used, got = ran_op(x)
    assert used and torch.equal(got, resblock_op(block, x))
    with torch.enable_grad():  # the ops have no autograd formula: the layers run, gradients flow
        used, got = ran_op(x)
        assert not used and got.requires_grad
        torch.testing.assert_close(got, block(x), rtol=0, atol=0)
    layers.double()  # fused for float32, moved to float64: the layers' math
    with torch.no_grad():
        used, got = ran_op(x.double())
        assert not used
        torch.testing.assert_close(got, block.double()(x.double()), rtol=0, atol=0)


def test_where_the_decoder_upsamples_with_the_op():
    """ELU + ConvTranspose is fused for float32 up to FUSED_CONV_TRANSPOSE_MAX_CHANNELS input channels (the
    layers' path elsewhere: wider, bfloat16, gradients wanted, another activation), with the layers' result."""
    widest = FUSED_CONV_TRANSPOSE_MAX_CHANNELS[torch.float32]
    assert torch.bfloat16 not in FUSED_CONV_TRANSPOSE_MAX_CHANNELS

    def ran_op(layers, x):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            y = layers(x)
        return "jasco_fast::elu_conv_transpose" in {e.name for e in prof.events()}, y

    for C, dtype, grad, act, expect in (
        (widest, torch.float32, False, torch.nn.ELU(), True),
        (2 * widest, torch.float32, False, torch.nn.ELU(), False),
        (16, torch.bfloat16, False, torch.nn.ELU(), False),
        (16, torch.float32, True, torch.nn.ELU(), False),
        (16, torch.float32, False, torch.nn.ReLU(), False),
    ):
        plain = DecoderLayers(act, make_upsampler(C, 8, 4)).to(dtype)
        layers = DecoderLayers(*plain).fuse()
        x = inputs(1, C, 9, dtype)
        with torch.set_grad_enabled(grad):
            used, got = ran_op(layers, x)
        assert used == expect, (C, dtype, grad, act)
        if used:  # the op's arithmetic: against float64, with the op's tolerance
            check(got.detach(), upsampled_layers(rounded(plain[1], dtype), x, 1.0), dtype)
        else:  # torch's own layers, whose rounding depends on the CPU (bfloat16 is emulated without
            # AVX512-BF16): exactly what calling them one by one gives
            with torch.set_grad_enabled(grad):
                torch.testing.assert_close(got, plain[1](plain[0](x)), rtol=0, atol=0)


def test_decoder_fuses_its_tail_and_matches_reference():
    torch.manual_seed(0)
    decoder = SEANetDecoder(DecoderConfig(dimension=16, n_filters=8, ratios=(2, 2), lstm=1)).eval()
    keys = {k: v for k, v in decoder.state_dict().items()}
    assert decoder.fuse() is decoder
    assert decoder.state_dict().keys() == keys.keys()
    assert all(v is keys[k] or torch.equal(v, keys[k]) for k, v in decoder.state_dict().items())
    assert isinstance(decoder.layers, DecoderLayers)
    assert isinstance(decoder.layers[2:], DecoderLayers)  # sliced, as chunked decoding slices it
    assert {FusedResBlock, FusedEluConv, FusedEluConvTranspose} <= {type(m) for m in decoder.layers}
    latents = torch.randn(2, 30, 16)
    with torch.no_grad():
        want = reference.decode(decoder, latents)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            got = decoder((latents * reference.JASCO_LATENT_STD + reference.JASCO_LATENT_MEAN).transpose(1, 2))
    ran = {e.name for e in prof.events()}
    assert {"jasco_fast::elu_resblock", "jasco_fast::elu_conv", "jasco_fast::elu_conv_transpose"} <= ran
    assert decoder.layers[-1].weight.shape[0] <= FUSED_CONV_MAX_OUT_CHANNELS
    err = (got.double() - want.double()).abs().max().item()
    assert err <= 1e-5 * want.abs().max().item()


def test_unfused_decoder_runs_layer_by_layer():
    """Not fused, no op runs and a forward hook on every layer fires (what fidelity calibration relies on)."""
    torch.manual_seed(0)
    decoder = SEANetDecoder(DecoderConfig(dimension=16, n_filters=8, ratios=(2, 2), lstm=1)).eval()
    fired = []
    for name, module in decoder.named_modules():
        if isinstance(module, (Conv, ConvTranspose, torch.nn.ELU)):
            module.register_forward_hook(lambda m, i, o, name=name: fired.append(name))
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        decoder(torch.randn(1, 16, 12))
    assert not {e.name for e in prof.events()} & {
        "jasco_fast::elu_resblock",
        "jasco_fast::elu_conv",
        "jasco_fast::elu_conv_transpose",
    }
    assert sorted(fired) == sorted(
        name for name, m in decoder.named_modules() if isinstance(m, (Conv, ConvTranspose, torch.nn.ELU))
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_decoder_is_the_explicit_op_calls(dtype, channels_last):
    """A fused decoder's output is bit for bit the ops and layers called one by one (the decision the decoder
    made per call before fuse() existed), and its unfused twin's within the ops' tolerance; both share one
    state_dict."""
    torch.manual_seed(0)
    plain = SEANetDecoder(DecoderConfig(dimension=16, n_filters=16, ratios=(4, 2), lstm=1)).eval().to(dtype)
    if channels_last:
        plain.to_channels_last()
    decoder = SEANetDecoder(plain.config).to(dtype)
    decoder.load_state_dict(plain.state_dict())
    if channels_last:
        decoder.to_channels_last()
    decoder.fuse()
    assert decoder.state_dict().keys() == plain.state_dict().keys()
    decoder.load_state_dict(plain.state_dict())  # a checkpoint loads into a fused decoder too (strict)
    x = torch.randn(2, 16, 25).to(dtype)
    with torch.no_grad():
        got = decoder(x)
        y, layers, i = x.unsqueeze(2), list(plain.layers), 0
        while i < len(layers):
            layer, after = layers[i], layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(layer, ResBlock) and layer.conv1.weight.shape[1] <= FUSED_RESBLOCK_MAX_CHANNELS[dtype]:
                y = resblock_op(layer, y)
            elif isinstance(layer, torch.nn.ELU) and isinstance(after, Conv):
                y, i = conv_op(after, y, layer.alpha), i + 1
            elif (
                isinstance(layer, torch.nn.ELU)
                and isinstance(after, ConvTranspose)
                and after.weight.shape[0] <= FUSED_CONV_TRANSPOSE_MAX_CHANNELS.get(dtype, 0)
            ):
                y, i = conv_transpose_op(after, y, layer.alpha), i + 1
            else:
                y = layer(y)
            i += 1
        assert torch.equal(got, y.squeeze(2).contiguous())
        unfused = plain(x)
    err = (got.double() - unfused.double()).abs().max().item()
    assert err <= (1e-5 if dtype == torch.float32 else 2**-6) * unfused.double().abs().max().item()


def test_fused_decoder_moved_elsewhere_runs_the_layers():
    """The safe rule for .to() after fuse(): each fused module runs its op only for the dtype it was fused for
    (on the CPU); moved to another dtype it runs the layers' math, bit for bit the unfused decoder's."""
    torch.manual_seed(0)
    plain = SEANetDecoder(DecoderConfig(dimension=16, n_filters=16, ratios=(4, 2), lstm=0)).eval()
    decoder = SEANetDecoder(plain.config)
    decoder.load_state_dict(plain.state_dict())
    decoder.fuse().double()
    x = torch.randn(1, 16, 20, dtype=torch.float64)
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        got = decoder(x)
    assert not any(e.name.startswith("jasco_fast::elu") for e in prof.events())
    with torch.no_grad():
        assert torch.equal(got, plain.double()(x))
