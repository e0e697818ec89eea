"""The PyTorch fallback of jasco_fast's ops (jasco_fast/ops.py, register_fallback): what runs on devices the
extension has no compiled kernel for (MPS, ROCm, CUDA built without nvcc, ...).

A missing kernel is simulated on the CPU in two sound ways, both through the real dispatcher:
- ``through_kernel_less_key``: the op is redispatched to a backend key that has no compiled kernel
  (PrivateUse1), with CPU tensors; the dispatcher then picks whatever it picks for such a device.
- ``cpu_kernel_hidden``: the C++ CPU kernel is overridden, for the duration of a test, by one that sends
  every CPU call down that same kernel-less route; everything above the dispatcher (LatentDecoder,
  torch.compile, the CLI) then runs as it would on a device without a kernel. Destroying the override
  restores the C++ kernel.
Real devices (CUDA/ROCm, MPS) run where present and are skipped with a reason elsewhere.
"""

from __future__ import annotations

import itertools
import types
import warnings

import pytest
import torch
from checkpoints import int8_h_bound

import jasco_fast
from jasco_fast import ops, reference
from jasco_fast.decoder import DecoderConfig, SEANetDecoder

OP = torch.ops.jasco_fast.denorm_transpose.default
OP_NAME = "jasco_fast::denorm_transpose"
KERNEL_LESS_KEY = "PrivateUse1"  # a backend jasco_fast compiles nothing for
FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Per dtype, as in tests/test_denorm_transpose.py (one unit in the last place for float16/bfloat16).
TOL = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=1.3e-6, atol=1e-5),
    torch.float16: dict(rtol=2**-10, atol=1e-3),
    torch.bfloat16: dict(rtol=2**-7, atol=1e-2),
}
# The fallback warns by design; test_warns_once_per_process_and_device records its warnings itself.
pytestmark = pytest.mark.filterwarnings("ignore::jasco_fast.ops.FallbackWarning")
TINY = DecoderConfig(dimension=8, n_filters=4, ratios=(4, 2), lstm=1, sample_rate=8000)


def through_kernel_less_key(*args):
    """The op as the dispatcher runs it for a backend without a compiled kernel."""
    return OP.redispatch(torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, KERNEL_LESS_KEY)), *args)


@pytest.fixture
def fallback_calls(monkeypatch):
    """Counts the fallback's runs (wrapping the registered Python function the dispatcher calls)."""
    calls = []
    original = ops.FALLBACKS[OP_NAME]

    def counted(*args, **kwargs):
        calls.append(args[0].device)
        return original(*args, **kwargs)

    monkeypatch.setitem(ops.FALLBACKS, OP_NAME, counted)
    monkeypatch.setattr(ops, "_warned", set())
    return calls


@pytest.fixture
def cpu_kernel_hidden(fallback_calls):
    """Every CPU call of the op takes the route of a device without a compiled kernel."""
    library = torch.library.Library("jasco_fast", "IMPL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Overriding a previously registered kernel": that is the point
        library.impl("denorm_transpose", through_kernel_less_key, "CPU")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ops.FallbackWarning)
            yield fallback_calls
    finally:
        library._destroy()


def make_latents(shape, dtype, layout, gen):
    B, T, D = shape
    x = torch.randn(B, T, D, generator=gen, dtype=torch.float64) * 3
    x[0, 0, 0] = 70000.0  # out of float16 range: inf after the cast
    x = x.to(dtype)
    if layout == "strided":  # every other time step and channel of a larger tensor
        x = torch.randn(B, 2 * T, 2 * D, generator=gen).to(dtype)[:, ::2, ::2]
    elif layout == "transposed_storage":  # [B, D, T] memory viewed as [B, T, D]: D not contiguous
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    elif layout == "expanded":
        x = x[:1].expand(B, T, D)
    return x


def test_registered_for_devices_without_a_kernel():
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    assert has(OP_NAME, "CPU")  # the C++ kernel stays where it exists
    assert not has(OP_NAME, KERNEL_LESS_KEY) and not has(OP_NAME, "MPS")
    assert has(OP_NAME, "CompositeExplicitAutograd")  # ... and the fallback covers every other backend
    assert OP_NAME in ops.FALLBACKS
    table = torch._C._dispatch_dump_table(OP_NAME)
    mps = next(line for line in table.splitlines() if line.startswith("MPS:"))
    assert "ops.py" in mps  # MPS resolves to the Python fallback


@pytest.mark.parametrize("in_dtype,out_dtype", list(itertools.product(FLOATS, [None] + FLOATS)))
def test_same_bits_as_the_cpu_kernel(in_dtype, out_dtype, fallback_calls):
    gen = torch.Generator().manual_seed(FLOATS.index(in_dtype))
    for shape, layout, stat_shape, channels_last in itertools.product(
        [(2, 37, 19), (1, 1, 1), (3, 70, 128)],
        ["contiguous", "strided", "transposed_storage", "expanded"],
        [(), (1,), "D"],
        [False, True],
    ):
        D = shape[2]
        latents = make_latents(shape, in_dtype, layout, gen)
        size = (D,) if stat_shape == "D" else stat_shape
        mean = torch.randn(size, generator=gen, dtype=torch.float64).to(torch.float32)
        std = (torch.rand(size, generator=gen, dtype=torch.float64) * 5).to(torch.float16)
        want = OP(latents, mean, std, out_dtype, channels_last)  # the C++ kernel
        got = through_kernel_less_key(latents, mean, std, out_dtype, channels_last)
        assert got.dtype == want.dtype and got.shape == want.shape and got.stride() == want.stride()
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)  # bit for bit
        # and the op's contract: float64 truth rounded to the output dtype, within the coarser of the compute
        # dtype (float32, float64 when latents or output are float64) and the output dtype
        truth = reference.denormalize_transpose(
            latents.double(), mean.double(), std.double(), dtype=want.dtype, channels_last=channels_last
        )
        compute = torch.float64 if torch.float64 in (in_dtype, want.dtype) else torch.float32
        torch.testing.assert_close(got, truth, **TOL[max(compute, want.dtype, key=lambda t: torch.finfo(t).eps)])
    assert len(fallback_calls) == 3 * 4 * 3 * 2  # each comparison really ran the fallback


def test_nan_inf_and_empty(fallback_calls):
    latents = torch.tensor([[[float("nan"), float("inf"), -float("inf"), 1.0]]])
    for out_dtype in FLOATS:
        want = OP(latents, torch.tensor(0.5), torch.tensor(2.0), out_dtype, False)
        got = through_kernel_less_key(latents, torch.tensor(0.5), torch.tensor(2.0), out_dtype, False)
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    for shape in [(0, 5, 4), (2, 0, 4)]:
        for channels_last in (False, True):
            want = OP(torch.empty(shape), torch.tensor(0.0), torch.tensor(1.0), None, channels_last)
            got = through_kernel_less_key(torch.empty(shape), torch.tensor(0.0), torch.tensor(1.0), None, channels_last)
            assert got.shape == want.shape and got.stride() == want.stride()


def test_same_argument_errors_as_the_kernel():
    with pytest.raises((ValueError, RuntimeError), match="3-D"):
        through_kernel_less_key(torch.zeros(2, 3), torch.tensor(0.0), torch.tensor(1.0), None, False)
    with pytest.raises((ValueError, RuntimeError), match="D = 4"):
        through_kernel_less_key(torch.zeros(1, 2, 4), torch.zeros(3), torch.tensor(1.0), None, False)


def test_warns_once_per_process_and_device(monkeypatch):
    monkeypatch.setattr(ops, "_warned", set())
    x = torch.randn(1, 4, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            through_kernel_less_key(x, torch.tensor(0.0), torch.tensor(1.0), None, False)
        OP(x, torch.tensor(0.0), torch.tensor(1.0), None, False)  # the C++ kernel: no warning
    fallback = [w for w in caught if issubclass(w.category, ops.FallbackWarning)]
    assert len(fallback) == 1
    message = str(fallback[0].message)
    assert OP_NAME in message and "cpu" in message and "rebuild" in message and "jasco-fast info" in message


# A second op, defined for the test's whole process (an op schema cannot be removed while kernels for it
# remain registered): register_fallback is meant for every op with kernels on some devices only.
_TEST_LIBRARY = torch.library.Library("jasco_fast_test", "DEF")
_TEST_LIBRARY.define("twice(Tensor x, Tensor[] extra) -> Tensor")
_TEST_LIBRARY.impl("twice", lambda x, extra: x * 2, "CPU")
_TEST_LIBRARY.define("generic(Tensor x) -> Tensor")
_TEST_LIBRARY.impl("generic", lambda x: x + 1, "CompositeExplicitAutograd")


def test_registry_takes_other_ops(monkeypatch):
    monkeypatch.setattr(ops, "_warned", set())
    monkeypatch.setattr(ops, "FALLBACKS", dict(ops.FALLBACKS))
    twice = torch.ops.jasco_fast_test.twice.default
    key = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, KERNEL_LESS_KEY))
    with pytest.raises(NotImplementedError):  # no kernel for that backend yet
        twice.redispatch(key, torch.ones(2), [torch.ones(1)])

    @ops.register_fallback("jasco_fast_test::twice")
    def twice_in_pytorch(x, extra):
        return x + x

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert torch.equal(twice.redispatch(key, torch.ones(2), [torch.ones(1)]), torch.full((2,), 2.0))
        assert torch.equal(twice(torch.ones(2), []), torch.full((2,), 2.0))  # the CPU kernel still
    assert [str(w.message).split(" has no")[0] for w in caught] == ["jasco_fast_test::twice"]
    assert ops.FALLBACKS["jasco_fast_test::twice"] is twice_in_pytorch

    @ops.register_fallback("jasco_fast_test::generic")  # already runs everywhere: left alone
    def generic_in_pytorch(x):
        return x - 1

    assert "jasco_fast_test::generic" not in ops.FALLBACKS
    assert torch.equal(torch.ops.jasco_fast_test.generic(torch.zeros(1)), torch.ones(1))


def test_hints_name_what_to_do(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    cuda = ops.missing_kernel_hint(torch.device("cuda"))
    assert "CUDA 12.4" in cuda and "nvcc" in cuda and "pip install --no-build-isolation" in cuda
    assert "mps" in ops.missing_kernel_hint(torch.device("mps"))
    monkeypatch.setattr(torch.version, "hip", "6.2")
    assert "HIP" in ops.missing_kernel_hint(torch.device("cuda"))


def test_opcheck_and_gradients_on_the_fallback(cpu_kernel_hidden):
    gen = torch.Generator().manual_seed(3)
    for dtype, channels_last in itertools.product([torch.float32, torch.bfloat16], [False, True]):
        latents = torch.randn(2, 9, 5, generator=gen).to(dtype)
        torch.library.opcheck(OP, (latents, torch.randn(5, generator=gen), torch.tensor(2.0), None, channels_last))
    latents = torch.randn(2, 7, 5, dtype=torch.float64, requires_grad=True)
    mean = torch.randn(5, dtype=torch.float64, requires_grad=True)
    std = torch.rand((), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, m, s: jasco_fast.denormalize_transpose(x, m, s), (latents, mean, std))
    assert cpu_kernel_hidden  # the fallback ran


def test_torch_compile_calls_the_fallback_as_one_op(cpu_kernel_hidden):
    def f(latents, mean, std):
        return jasco_fast.denormalize_transpose(latents, mean, std, dtype=torch.bfloat16, channels_last=True) * 2

    compiled = torch.compile(f, fullgraph=True, dynamic=False)  # fullgraph: no graph break around the op
    latents, mean, std = torch.randn(2, 11, 6), torch.randn(6), torch.tensor(4.0)
    got = compiled(latents, mean, std)
    before = len(cpu_kernel_hidden)
    again = compiled(latents, mean, std)
    assert len(cpu_kernel_hidden) == before + 1  # the compiled code calls the op at run time, not a decomposition
    want = torch.ops.jasco_fast.denorm_transpose.default(latents, mean, std, torch.bfloat16, True)
    assert got.stride() == want.stride()  # the fake kernel's strides are what the fallback returns
    torch.testing.assert_close(again, want * 2, rtol=0, atol=0)


def test_export_keeps_the_op_whole():
    """A CompositeExplicitAutograd kernel is not a decomposition: torch.export (and AOTInductor after it) keep
    the fused op, with or without run_decompositions."""

    class Module(torch.nn.Module):
        def forward(self, latents):
            return jasco_fast.denormalize_transpose(latents, 0.5, 2.0, channels_last=True)

    exported = torch.export.export(Module(), (torch.randn(2, 10, 8),))
    for program in (exported, exported.run_decompositions()):
        targets = [node.target for node in program.graph.nodes if node.op == "call_function"]
        assert OP in targets and torch.ops.aten.mul.Tensor not in targets


@pytest.mark.parametrize("backend", ["eager", None])
def test_latent_decoder_on_the_fallback(backend, cpu_kernel_hidden):
    torch.manual_seed(0)
    decoder = SEANetDecoder(TINY).eval()
    latents = torch.randn(2, 13, TINY.dimension)
    on_fallback = jasco_fast.LatentDecoder(decoder, backend=backend)(latents)
    assert cpu_kernel_hidden, "LatentDecoder did not reach the fallback"
    want = reference.decode(decoder, latents)
    assert on_fallback.shape == want.shape
    torch.testing.assert_close(on_fallback, want, rtol=1e-4, atol=1e-5)


def test_latent_decoder_same_audio_with_and_without_the_kernel():
    torch.manual_seed(1)
    decoder = SEANetDecoder(TINY).eval()
    latents = torch.randn(1, 21, TINY.dimension)
    fast = jasco_fast.LatentDecoder(decoder, backend="eager")
    with_kernel = fast(latents)
    library = torch.library.Library("jasco_fast", "IMPL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        library.impl("denorm_transpose", through_kernel_less_key, "CPU")
        try:
            without = fast(latents)
        finally:
            library._destroy()
    torch.testing.assert_close(without, with_kernel, rtol=0, atol=0)


def test_patch_on_the_fallback(cpu_kernel_hidden):
    """patch(): audiocraft's JASCO.generate_audio through LatentDecoder, on a device without the kernel."""
    from checkpoints import transformers_model

    hf_model = transformers_model(seed=3)
    jasco_model = types.SimpleNamespace(  # what patch() reads of a JASCO model
        cfg=types.SimpleNamespace(compression_model_latent_mean=-0.0074, compression_model_latent_std=4.0102),
        compression_model=types.SimpleNamespace(model=hf_model),
    )
    latents = torch.randn(2, 25, 8)
    with torch.no_grad():  # JASCO's own decode: latents * std + mean, permute, the EnCodec decoder
        upstream = hf_model.decoder((latents * 4.0102 + -0.0074).permute(0, 2, 1))
    jasco_fast.patch(jasco_model, backend="eager")
    got = jasco_model.generate_audio(latents)
    assert cpu_kernel_hidden
    torch.testing.assert_close(got, upstream, rtol=1e-4, atol=1e-5)


def test_cli_decodes_on_the_fallback(tmp_path, tiny_hf_checkpoint, cpu_kernel_hidden):
    from jasco_fast.cli import main

    latents = torch.randn(30, 8)
    torch.save(latents, tmp_path / "a.pt")
    code = main(
        [
            "decode",
            str(tmp_path / "a.pt"),
            "--out-dir",
            str(tmp_path / "out"),
            "--checkpoint",
            str(tiny_hf_checkpoint),
            "--backend",
            "eager",
        ]
    )
    assert code == 0 and (tmp_path / "out" / "a.wav").is_file()
    assert cpu_kernel_hidden


# ------------------------------------------------------------------------------------------------
# Real devices


def _real_devices():
    devices = []
    if torch.cuda.is_available():
        devices.append(pytest.param("cuda", id="rocm" if torch.version.hip else "cuda"))
    else:
        devices.append(pytest.param("cuda", marks=pytest.mark.skip(reason="no CUDA or ROCm device here")))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append(pytest.param("mps"))
    else:
        devices.append(pytest.param("mps", marks=pytest.mark.skip(reason="no Apple MPS device here")))
    return devices


@pytest.mark.parametrize("device", _real_devices())
def test_real_device_matches_cpu_kernel(device):
    """On a device with a compiled kernel this checks the kernel; without one, the fallback (whichever the
    dispatcher picks, both must give the CPU kernel's result)."""
    has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key(OP_NAME, "CUDA" if device == "cuda" else "MPS")
    gen = torch.Generator().manual_seed(5)
    dtypes = FLOATS if device == "cuda" else [torch.float32, torch.float16, torch.bfloat16]  # MPS: no float64
    for in_dtype, out_dtype, channels_last in itertools.product(dtypes, [None] + dtypes, [False, True]):
        latents = make_latents((2, 40, 16), in_dtype, "contiguous", gen)
        mean, std = torch.randn(16, generator=gen), torch.tensor(4.0102)
        want = OP(latents, mean, std, out_dtype, channels_last)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ops.FallbackWarning)
            got = OP(latents.to(device), mean.to(device), std.to(device), out_dtype, channels_last)
        assert got.device.type == device and got.stride() == want.stride()
        # Each side rounds the float32 product and sum once each; no FMA on either.
        torch.testing.assert_close(
            got.cpu(),
            want,
            rtol=0,
            atol=0,
            equal_nan=True,
            msg=lambda m: f"{'kernel' if has_kernel else 'fallback'} on {device}: {m}",
        )


@pytest.mark.parametrize("device", _real_devices())
def test_real_device_latent_decoder(device):
    torch.manual_seed(0)
    decoder = SEANetDecoder(TINY).eval()
    latents = torch.randn(2, 13, TINY.dimension)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ops.FallbackWarning)
        got = jasco_fast.LatentDecoder(decoder.to(device), backend="eager")(latents.to(device))
    torch.testing.assert_close(got.cpu(), reference.decode(decoder.cpu(), latents), rtol=1e-3, atol=1e-4)


def test_cli_device_mps(tmp_path, tiny_hf_checkpoint, capsys):
    from jasco_fast.cli import main

    torch.save(torch.randn(30, 8), tmp_path / "a.pt")
    code = main(
        [
            "decode",
            str(tmp_path / "a.pt"),
            "--out-dir",
            str(tmp_path / "out"),
            "--checkpoint",
            str(tiny_hf_checkpoint),
            "--backend",
            "eager",
            "--device",
            "mps",
        ]
    )
    if torch.backends.mps.is_available():
        assert code == 0 and (tmp_path / "out" / "a.wav").is_file()
    else:  # a clear usage error, not a traceback
        assert code == 2 and "--device mps, but Apple's MPS is not available here" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# Every op's PyTorch implementation against its compiled kernel: what runs where the extension cannot load
# (tests/test_extension.py) and on devices without a kernel.

needs_kernels = pytest.mark.skipif(
    not jasco_fast.extension.STATUS.loaded, reason=f"no compiled kernels: {jasco_fast.extension.STATUS.reason}"
)
FALLBACK_TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2**-7, atol=2e-2)}


@needs_kernels
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("K", [1, 3])
def test_codes_to_latents_fallback_is_the_kernel(dtype, channels_last, K):
    g = torch.Generator().manual_seed(K)
    books = torch.randn(4, 16, 6, generator=g).to(dtype)
    codes = torch.randint(0, 16, (2, K, 9), generator=g)
    want = torch.ops.jasco_fast.codes_to_latents(codes, books, torch.float32, channels_last)
    got = ops.codes_to_latents_fallback(codes, books, torch.float32, channels_last)
    assert got.stride() == want.stride()
    torch.testing.assert_close(got, want, rtol=0, atol=0)  # the same sums in the same order, one rounding
    codes[1, K - 1, 4] = 16
    with pytest.raises(RuntimeError) as kernel:
        torch.ops.jasco_fast.codes_to_latents(codes, books, None, channels_last)
    with pytest.raises(RuntimeError) as fallback:
        ops.codes_to_latents_fallback(codes, books, None, channels_last)
    assert str(fallback.value) == str(kernel.value).split("\n")[0]


def _lstm_weights(C, num_layers, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    weights = []
    for _ in range(num_layers):
        weights += [torch.randn(4 * C, C, generator=g) * 0.3, torch.randn(4 * C, C, generator=g) * 0.3]
        weights += [torch.randn(4 * C, generator=g) * 0.1, torch.randn(4 * C, generator=g) * 0.1]
    return [w.to(dtype) for w in weights]


@needs_kernels
@pytest.mark.parametrize("B", [1, 3, 9])
@pytest.mark.parametrize("recurrent_dtype", [None, torch.bfloat16, torch.int8])
@pytest.mark.parametrize("state_frames", [None, 0, 4])
def test_lstm_skip_fallback_is_the_kernel(B, recurrent_dtype, state_frames):
    C, T, layers = 12, 7, 2
    weights = _lstm_weights(C, layers, torch.float32, seed=B)
    seq = torch.randn(B, T, C, generator=torch.Generator().manual_seed(1))
    h0, c0 = torch.randn(layers, B, C) * 0.5, torch.randn(layers, B, C) * 0.5
    for state in ((None, None), (h0, c0)):
        want = torch.ops.jasco_fast.lstm_skip(seq, weights, layers, *state, state_frames, recurrent_dtype, None)
        got = ops.lstm_skip_fallback(seq, weights, layers, *state, state_frames, recurrent_dtype, None)
        # int8 at B <= 8: the kernel's int8 dot products (scaled after the sum) against ATen's LSTM on the
        # dequantised matrix (scaled before): the same values, summed in another order, and h at the integer
        # matvec's fixed point in the kernel only
        tol = (
            dict(rtol=1e-3, atol=1e-4 + int8_h_bound(weights))
            if recurrent_dtype == torch.int8 and B <= 8
            else FALLBACK_TOL[torch.float32]
        )
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.is_contiguous()
            torch.testing.assert_close(g, w, **tol)


def test_lstm_pack_fallback_says_there_is_nothing_to_pack():
    with pytest.raises(NotImplementedError, match="needs no pack"):
        ops.lstm_pack_fallback([torch.randn(8, 2)], None)


def _tail_input(C, T, dtype, seed):
    x = torch.randn(2, C, 1, T, generator=torch.Generator().manual_seed(seed))
    return x.to(dtype).contiguous(memory_format=torch.channels_last)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pad_mode", ["constant", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("T", [3, 40])
def test_elu_fallbacks_are_the_kernels(dtype, pad_mode, T):
    C, H, k, dilation = 8, 4, 3, 2
    g = torch.Generator().manual_seed(T)
    w1, b1 = torch.randn(H, C, 1, k, generator=g).to(dtype) * 0.3, torch.randn(H, generator=g).to(dtype)
    w2, b2 = torch.randn(C, H, 1, 1, generator=g).to(dtype) * 0.3, torch.randn(C, generator=g).to(dtype)
    x = _tail_input(C, T, dtype, seed=T)
    left, right = 3, 1  # (k - 1) * dilation = 4; T = 3 is the shortest input circular padding of 3 takes
    args = (x, w1, b1, w2, b2, dilation, left, right, pad_mode, 0.7)
    got, want = ops.elu_resblock_fallback(*args), torch.ops.jasco_fast.elu_resblock(*args)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want, **FALLBACK_TOL[dtype])
    w, b = torch.randn(2, C, 1, k, generator=g).to(dtype) * 0.3, torch.randn(2, generator=g).to(dtype)
    args = (x, w, b, dilation, left, right, pad_mode, 0.7)
    torch.testing.assert_close(
        ops.elu_conv_fallback(*args), torch.ops.jasco_fast.elu_conv(*args), **FALLBACK_TOL[dtype]
    )
    wt, bt = torch.randn(C, 5, 1, 4, generator=g).to(dtype) * 0.3, torch.randn(5, generator=g).to(dtype)
    args = (x, wt, bt, 2, 1, 1, 0.7)
    got, want = ops.elu_conv_transpose_fallback(*args), torch.ops.jasco_fast.elu_conv_transpose(*args)
    assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want, **FALLBACK_TOL[dtype])
