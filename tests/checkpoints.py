"""What the test modules share: small random-weight EnCodec checkpoints written in the real upstream file
formats, by the real upstream code where it can run here (transformers' save_pretrained; audiocraft's
SEANet modules), the audiocraft skip marker, the error measure, tolerances and the configs compared upstream.

JASCO_FAST_HIDE_UPSTREAM=audiocraft (`make test-no-upstream`) runs the suite as where the oracle is not
installed, without uninstalling it: importing this module (conftest does, before any test module) makes
``import audiocraft`` fail and ``importlib.util.find_spec("audiocraft")`` return None."""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import os
import sys
import types
import warnings
import zlib
from pathlib import Path

import pytest
import torch

HIDDEN = frozenset(os.environ.get("JASCO_FAST_HIDE_UPSTREAM", "").replace(",", " ").split())


class _HiddenFinder(importlib.abc.MetaPathFinder):
    """First on sys.meta_path: a hidden package's submodules, should its sys.modules entry be dropped."""

    hides_upstream = True

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {fullname!r} (JASCO_FAST_HIDE_UPSTREAM)", name=fullname)
        return None


TESTS = Path(__file__).resolve().parent


def child_env(folder: Path, **variables: str) -> dict[str, str]:
    """The environment of a child Python that imports the test modules of ``folder`` and these helpers (pytest's
    ``pythonpath`` setting reaches only its own process)."""
    path = [str(folder), str(TESTS), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p), **variables}


def _hide_upstream():
    if not HIDDEN or any(getattr(f, "hides_upstream", False) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _HiddenFinder())
    for name in list(sys.modules):
        if name.partition(".")[0] in HIDDEN:
            del sys.modules[name]
    for name in HIDDEN:
        sys.modules[name] = None  # what makes find_spec return None, as for a package that is not installed


_hide_upstream()


def kernel_error(error: type[Exception]) -> type[Exception]:
    """The exception a compiled kernel raises where its op's rule raises ``error``: the kernels are built on
    PyTorch's stable ABI, which carries C++ standard exceptions only (std::invalid_argument is ValueError in
    Python; nothing maps to TypeError), so a dtype rule's TypeError is ValueError there (csrc/stable.h). The
    Python faces, fake kernels and PyTorch fallbacks raise the rule's own."""
    from jasco_fast import extension

    return ValueError if error is TypeError and extension.STATUS.loaded else error


def upstream_required() -> bool:
    """`make test` sets JASCO_FAST_REQUIRE_UPSTREAM=1 so that a missing oracle fails in CI instead of skipping;
    hiding a package asks for the run without it, so hiding wins."""
    return os.environ.get("JASCO_FAST_REQUIRE_UPSTREAM") == "1" and not HIDDEN


def needs_oracle(available: bool, reason: str) -> pytest.MarkDecorator:
    """Skip, saying why, when an oracle is missing; under upstream_required() the test fails instead
    (the upstream_missing marker: tests/conftest.py)."""
    if not available and upstream_required():
        return pytest.mark.upstream_missing(reason=reason)
    return pytest.mark.skipif(not available, reason=reason)


# A tiny 32 kHz-style model: same structure as facebook/encodec_32khz, far fewer channels.
TINY_HF = dict(
    audio_channels=1,
    sampling_rate=8000,
    num_filters=4,
    upsampling_ratios=[4, 2],
    hidden_size=8,
    num_lstm_layers=1,
    use_causal_conv=False,
    pad_mode="reflect",
    use_conv_shortcut=False,
    codebook_size=16,
    num_residual_layers=1,
)


def randomize_(module: torch.nn.Module, seed: int, scale: float = 0.1) -> torch.nn.Module:
    """Perturb every parameter, so GroupNorm affines, biases, etc. are not at their trivial init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale * (p.abs().mean() + 1e-2))
    return module


def transformers_model(seed: int = 0, **overrides):
    from transformers import EncodecConfig, EncodecModel

    torch.manual_seed(seed)
    model = EncodecModel(EncodecConfig(**{**TINY_HF, **overrides}))
    return randomize_(model, seed).eval()


def write_transformers_dir(
    path: Path, seed: int = 0, *, weight_format: str = "parametrizations", file: str = "model.safetensors", **overrides
) -> tuple[Path, object]:
    """save_pretrained of a random EncodecModel; weight_format 'weight_g_v' rewrites the weight-norm keys
    the way the hub's older files store them; file 'pytorch_model.bin' writes a torch pickle instead."""
    model = transformers_model(seed, **overrides)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    if weight_format == "weight_g_v" or file != "model.safetensors":
        from safetensors.torch import load_file, save_file

        state = load_file(str(path / "model.safetensors"))
        if weight_format == "weight_g_v":
            state = {
                k.replace("parametrizations.weight.original0", "weight_g").replace(
                    "parametrizations.weight.original1", "weight_v"
                ): v
                for k, v in state.items()
            }
        (path / "model.safetensors").unlink()
        if file == "model.safetensors":
            save_file(state, str(path / file))
        else:
            torch.save(state, path / file)
    return path, model


def audiocraft_modules():
    """audiocraft's conv/lstm/seanet modules, loaded from the installed package's files only: importing
    the audiocraft package itself would pull in its whole dependency tree. None when audiocraft is not
    installed (it is a test oracle, installed apart: see the Makefile)."""
    try:
        spec = importlib.util.find_spec("audiocraft")
    except ImportError:
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(spec.submodule_search_locations[0]) / "modules"
    pkg = types.ModuleType("_ac_modules")
    pkg.__path__ = [str(root)]
    sys.modules.setdefault("_ac_modules", pkg)
    loaded = {}
    for name in ("conv", "lstm", "seanet"):
        full = f"_ac_modules.{name}"
        if full not in sys.modules:
            mspec = importlib.util.spec_from_file_location(full, root / f"{name}.py")
            module = importlib.util.module_from_spec(mspec)
            sys.modules[full] = module
            mspec.loader.exec_module(module)
        loaded[name] = sys.modules[full]
    return loaded["seanet"]


AUDIOCRAFT_YAML = """\
sample_rate: 8000
channels: 1
compression_model: encodec
encodec:
  autoencoder: seanet
  quantizer: rvq
  sample_rate: ${{sample_rate}}
  channels: ${{channels}}
  causal: {causal}
  renormalize: false
seanet:
  dimension: 8
  channels: ${{channels}}
  causal: ${{encodec.causal}}
  n_filters: 4
  n_residual_layers: {n_residual_layers}
  ratios: {ratios}
  activation: {activation}
  activation_params: {activation_params}
  norm: {norm}
  norm_params: {{}}
  kernel_size: 7
  residual_kernel_size: 3
  last_kernel_size: 5
  dilation_base: 2
  pad_mode: {pad_mode}
  true_skip: {true_skip}
  compress: 2
  lstm: {lstm}
  disable_norm_outer_blocks: {disable_norm_outer_blocks}
  decoder:
    trim_right_ratio: {trim_right_ratio}
    final_activation: {final_activation}
    final_activation_params: null
  encoder: {{}}
"""

AUDIOCRAFT_DEFAULTS = dict(
    causal="false",
    n_residual_layers=1,
    ratios="[4, 2]",
    activation="ELU",
    activation_params='{"alpha": 1.0}',
    norm="weight_norm",
    pad_mode="constant",
    true_skip="true",
    lstm=1,
    disable_norm_outer_blocks=0,
    trim_right_ratio=1.0,
    final_activation="null",
)


def seanet_decoder_modules(
    channels: int = 1,
    dimension: int = 128,
    n_filters: int = 32,
    n_residual_layers: int = 3,
    ratios=(8, 5, 4, 2),
    activation: str = "ELU",
    activation_params: dict | None = None,
    final_activation: str | None = None,
    final_activation_params: dict | None = None,
    norm: str = "none",
    norm_params: dict | None = None,
    kernel_size: int = 7,
    last_kernel_size: int = 7,
    residual_kernel_size: int = 3,
    dilation_base: int = 2,
    causal: bool = False,
    true_skip: bool = True,
    compress: int = 2,
    lstm: int = 0,
    disable_norm_outer_blocks: int = 0,
    **forward_only,
) -> torch.nn.Module:
    """The parameters of audiocraft 1.3.0's SEANetDecoder (modules/seanet.py, conv.py, lstm.py) without its
    code: the same torch modules registered under the same names in the same order, so its state dict is
    audiocraft's, value for value from the same seed (tests/test_loading.py checks that against audiocraft).
    It has no forward: it writes files and is no oracle. forward_only: pad_mode, trim_right_ratio."""
    nn = torch.nn
    activation_params = {"alpha": 1.0} if activation_params is None else activation_params
    norm_params = norm_params or {}

    def normed(conv, norm):  # NormConv1d / NormConvTranspose1d
        wrapper, name = nn.Module(), "conv" if isinstance(conv, nn.Conv1d) else "convtr"
        if norm == "weight_norm":
            with warnings.catch_warnings():  # the deprecated one is audiocraft's: its weight_g / weight_v keys
                warnings.simplefilter("ignore", FutureWarning)
                conv = nn.utils.weight_norm(conv)
        elif norm == "spectral_norm":
            conv = nn.utils.spectral_norm(conv)
        setattr(wrapper, name, conv)
        if norm == "time_group_norm":
            if causal:
                raise ValueError("GroupNorm doesn't support causal evaluation.")
            wrapper.norm = nn.GroupNorm(1, conv.out_channels, **norm_params)
        else:
            wrapper.norm = nn.Identity()
        outer = nn.Module()  # StreamableConv1d / StreamableConvTranspose1d
        setattr(outer, name, wrapper)
        return outer

    def conv(c_in, c_out, k, norm, dilation=1):
        return normed(nn.Conv1d(c_in, c_out, k, 1, dilation=dilation), norm)

    def resnet_block(dim, dilation, norm):
        block, hidden = [], dim // compress
        for i, (k, d) in enumerate(zip([residual_kernel_size, 1], [dilation, 1])):
            block += [
                getattr(nn, activation)(**activation_params),
                conv(dim if i == 0 else hidden, dim if i == 1 else hidden, k, norm, d),
            ]
        module = nn.Module()
        module.block = nn.Sequential(*block)
        module.shortcut = nn.Identity() if true_skip else conv(dim, dim, 1, norm)
        return module

    n_blocks = len(ratios) + 2
    mult = 2 ** len(ratios)
    model = [conv(dimension, mult * n_filters, kernel_size, "none" if disable_norm_outer_blocks == n_blocks else norm)]
    if lstm:
        model.append(nn.Module())
        model[-1].lstm = nn.LSTM(mult * n_filters, mult * n_filters, lstm)
    for i, ratio in enumerate(ratios):
        block_norm = "none" if disable_norm_outer_blocks >= n_blocks - (i + 1) else norm
        model += [
            getattr(nn, activation)(**activation_params),
            normed(nn.ConvTranspose1d(mult * n_filters, mult * n_filters // 2, ratio * 2, ratio), block_norm),
        ]
        model += [resnet_block(mult * n_filters // 2, dilation_base**j, block_norm) for j in range(n_residual_layers)]
        mult //= 2
    model += [
        getattr(nn, activation)(**activation_params),
        conv(n_filters, channels, last_kernel_size, "none" if disable_norm_outer_blocks >= 1 else norm),
    ]
    if final_activation is not None:
        model.append(getattr(nn, final_activation)(**(final_activation_params or {})))
    decoder = nn.Module()
    decoder.model = nn.Sequential(*model)
    return decoder


def write_audiocraft_checkpoint(path: Path, seed: int = 0, *, with_audiocraft: bool | None = None, **overrides):
    """An exported audiocraft compression checkpoint ({'best_state', 'xp.cfg', ...}) of a random
    SEANetDecoder; returns (path, the oracle: audiocraft's SEANetDecoder holding those weights). The
    weights come from audiocraft's own module when with_audiocraft (default: when it is installed), else
    from seanet_decoder_modules: the same file, and None in place of the oracle."""
    import yaml

    settings = {**AUDIOCRAFT_DEFAULTS, **overrides}
    text = AUDIOCRAFT_YAML.format(**settings)
    seanet = audiocraft_modules() if with_audiocraft is not False else None
    if with_audiocraft and seanet is None:
        raise RuntimeError(
            "write_audiocraft_checkpoint(with_audiocraft=True) needs audiocraft; mark the test with @needs_audiocraft"
        )
    resolved = yaml.safe_load(text)
    kwargs = {k: v for k, v in resolved["seanet"].items() if k not in ("encoder", "decoder")}
    kwargs.update(resolved["seanet"]["decoder"])
    kwargs["channels"] = resolved["channels"]
    kwargs["causal"] = resolved["encodec"]["causal"]
    torch.manual_seed(seed)
    build = seanet.SEANetDecoder if seanet is not None else seanet_decoder_modules
    decoder = randomize_(build(**kwargs), seed).eval()
    state = {f"decoder.{k}": v for k, v in decoder.state_dict().items()}
    state["encoder.model.0.conv.conv.bias"] = torch.zeros(4)  # other parts of the model are ignored
    state["quantizer.vq.layers.0._codebook.embed"] = torch.zeros(16, 8)
    pkg = {"best_state": state, "xp.cfg": text, "version": "1.3.0", "exported": True}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(pkg, path)
    return path, decoder if seanet is not None else None


def write_pointer(path: Path, name: str = "facebook/encodec_32khz") -> Path:
    torch.save({"pretrained": name, "exported": True, "version": "1.3.0"}, path)
    return path


def fake_hf_cache(cache_root: Path, name: str, source_dir: Path) -> Path:
    """Lay out source_dir as the Hugging Face hub cache would hold model ``name``."""
    repo = cache_root / ("models--" + name.replace("/", "--"))
    snap = repo / "snapshots" / "0123456789abcdef"
    snap.mkdir(parents=True)
    for f in source_dir.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    return snap


def config_json(path: Path) -> dict:
    return json.loads((Path(path) / "config.json").read_text())


# --------------------------------------------------------------------------------------------------
# Shared by the test modules: the audiocraft skip, error measure, tolerances and configs compared upstream

AUDIOCRAFT_MISSING = (
    "audiocraft is hidden (JASCO_FAST_HIDE_UPSTREAM)"
    if "audiocraft" in HIDDEN
    else "audiocraft is not installed (a test oracle: pip install --no-deps audiocraft==1.3.0, as `make install` does)"
)
needs_audiocraft = needs_oracle(audiocraft_modules() is not None, AUDIOCRAFT_MISSING)

# Relative L2 error budget for float32 paths against the upstream implementations; what we see is
# ~1e-7 (the same arithmetic in a different order).
F32_TOL = 2e-6
LENGTHS = (1, 2, 5, 37)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-300)).item()


def int8_h_bound(weights: list[torch.Tensor]) -> float:
    """The int8 recurrent format's extra LSTM error from h's fixed point in the integer matvec this process runs
    (``torch.ops.jasco_fast.lstm_int8_matvec()``), relative to the peak; weights: ``lstm_skip``'s flat list.

    Each h goes into the matvec as round(L h) / L (``reference.INT8_MATVEC_H_LEVELS``), within delta = 0.5 / L,
    spread evenly (standard deviation delta / sqrt(3)) and independent from input to input (the integer sums
    are exact), so a pre-activation is off by about delta / sqrt(3) * ||W_r||_2; the bound takes 6 such
    standard deviations, and twice that for the error's way through the gates and the cell (which forgets
    with a factor < 1, so it does not pile up step after step)."""
    from jasco_fast.reference import INT8_MATVEC_H_LEVELS, int8_recurrent_rows

    levels = INT8_MATVEC_H_LEVELS[torch.ops.jasco_fast.lstm_int8_matvec()]
    if levels is None:
        return 0.0
    delta = 0.5 / levels
    return 2 * 6 * delta / 3**0.5 * max(int8_recurrent_rows(w).norm(dim=1).max().item() for w in weights[1::4])


def seed_of(name: str) -> int:
    return zlib.crc32(name.encode()) % 10_000


# transformers EncodecConfig overrides of TINY_HF, one per architecture option worth covering
HF_CONFIGS = {
    "encodec_32khz_like": {},
    "causal": dict(use_causal_conv=True),
    "causal_trim_half": dict(use_causal_conv=True, trim_right_ratio=0.5),
    "time_group_norm": dict(norm_type="time_group_norm"),
    "conv_shortcut_two_res": dict(use_conv_shortcut=True, num_residual_layers=2),
    "constant_pad_stereo": dict(pad_mode="constant", audio_channels=2),
    "odd_sizes": dict(
        upsampling_ratios=[3, 5],
        kernel_size=5,
        last_kernel_size=3,
        residual_kernel_size=5,
        compress=1,
        dilation_growth_rate=3,
        num_residual_layers=2,
        num_lstm_layers=2,
    ),
}

# write_audiocraft_checkpoint overrides of AUDIOCRAFT_DEFAULTS
AUDIOCRAFT_CONFIGS = {
    "default_constant_pad": {},
    "reflect_causal_trim": dict(causal="true", pad_mode="reflect", trim_right_ratio=0.25),
    "tanh_disable_outer_norms": dict(final_activation="Tanh", disable_norm_outer_blocks=2),
    "no_lstm_leaky_conv_shortcut": dict(
        lstm=0,
        activation="LeakyReLU",
        activation_params='{"negative_slope": 0.2}',
        true_skip="false",
        n_residual_layers=2,
    ),
    "spectral_norm": dict(norm="spectral_norm"),
    "time_group_norm": dict(norm="time_group_norm", pad_mode="replicate"),
    "no_norm_three_stages_circular": dict(norm="none", ratios="[2, 3, 2]", pad_mode="circular"),
}


# Codes: checkpoints whose RVQ codebooks are random (transformers and audiocraft initialise them to zeros
# or leave them to k-means at training time)


def randomize_codebooks_(quantizer: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fill every codebook buffer (``...codebook.embed`` / ``..._codebook.embed``) with N(0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buf in quantizer.named_buffers():
            if name.endswith("codebook.embed"):
                buf.copy_(torch.randn(buf.shape, generator=gen))
    return quantizer


def write_transformers_codes_dir(path: Path, seed: int = 0, **overrides) -> tuple[Path, object]:
    """save_pretrained of a random EncodecModel with random codebooks (TINY_HF: 6 codebooks of 16 x 8)."""
    model = transformers_model(seed, **overrides)
    randomize_codebooks_(model.quantizer, seed)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    return path, model


def audiocraft_quantization():
    """audiocraft's quantization package (vq.py, core_vq.py, base.py) loaded from the installed package's
    files only, or None when they cannot be. core_vq imports flashy, audiocraft's training library, for
    distributed k-means initialisation only; when flashy is not installed an empty stand-in module takes its
    place (decode never reaches it). einops must be installed (the test extra)."""
    try:
        spec = importlib.util.find_spec("audiocraft")
        einops = importlib.util.find_spec("einops")
    except ImportError:
        return None
    if spec is None or einops is None:
        return None
    if "flashy" not in sys.modules and importlib.util.find_spec("flashy") is None:
        sys.modules["flashy"] = types.ModuleType("flashy")
    root = Path(spec.submodule_search_locations[0]) / "quantization"
    pkg = types.ModuleType("_ac_quantization")
    pkg.__path__ = [str(root)]
    sys.modules.setdefault("_ac_quantization", pkg)
    for name in ("base", "core_vq", "vq"):
        full = f"_ac_quantization.{name}"
        if full not in sys.modules:
            mspec = importlib.util.spec_from_file_location(full, root / f"{name}.py")
            module = importlib.util.module_from_spec(mspec)
            sys.modules[full] = module
            mspec.loader.exec_module(module)
    return sys.modules["_ac_quantization.vq"]


def write_audiocraft_codes_checkpoint(path: Path, seed: int = 0, n_q: int = 4, bins: int = 16):
    """An exported audiocraft compression checkpoint (write_audiocraft_checkpoint's decoder) whose quantizer
    is audiocraft's own ResidualVectorQuantizer with random codebooks; returns (path, decoder, quantizer)."""
    vq = audiocraft_quantization()
    if vq is None:
        raise RuntimeError(
            "write_audiocraft_codes_checkpoint needs audiocraft's RVQ; mark the test as tests/test_quantizer.py does"
        )
    path, decoder = write_audiocraft_checkpoint(path, seed, with_audiocraft=True)
    torch.manual_seed(seed)
    rvq = randomize_codebooks_(
        vq.ResidualVectorQuantizer(dimension=8, n_q=n_q, bins=bins, kmeans_init=False), seed
    ).eval()
    pkg = torch.load(path, weights_only=True)
    state = {k: v for k, v in pkg["best_state"].items() if not k.startswith("quantizer.")}
    state.update({f"quantizer.{k}": v for k, v in rvq.state_dict().items()})
    pkg["best_state"] = state
    torch.save(pkg, path)
    return path, decoder, rvq


# The fused denorm_transpose op against its reference, per dtype (tests/ops/test_denorm_transpose.py, tests/test_cuda.py).
FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# The kernel computes in float32 (float64 for float64 latents or output) and rounds once to the output
# dtype; JASCO's expression, the reference, rounds after each op in the input dtype. So:
# - against float64 truth cast to the output dtype, the kernel is within the tolerance of the coarser of
#   its compute dtype and the output dtype;
# - against the reference, within the tolerance of the COARSER of input and output dtype (one unit in
#   the last place of float16/bfloat16: rtol = their epsilon 2^-10, 2^-7; atol covers results near 0).
OP_TOL = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=1.3e-6, atol=1e-5),
    torch.float16: dict(rtol=2**-10, atol=1e-3),
    torch.bfloat16: dict(rtol=2**-7, atol=1e-2),
}

# Memory layouts of [B, T, D] latents the op must handle (tests/ops/test_denorm_transpose.py, tests/test_cuda.py).
LATENT_LAYOUTS = ["contiguous", "transposed_storage", "strided", "expanded", "offset", "misaligned"]


def make_latents(B, T, D, dtype, layout, gen, device="cpu"):
    """[B, T, D] latents on ``device`` with the memory layout asked for (views of a base tensor there)."""

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    if layout == "contiguous":
        return randn(B, T, D)
    if layout == "transposed_storage":  # [B, D, T] memory viewed as [B, T, D]
        return randn(B, D, T).transpose(1, 2)
    if layout == "strided":  # every other time step and channel
        return randn(B, 2 * T, 2 * D)[:, ::2, ::2]
    if layout == "expanded":  # a zero batch stride
        return randn(1, T, D).expand(B, T, D)
    if layout == "offset":  # a storage offset and padded rows
        return randn(B, T + 3, D + 5)[:, 3:, 5:]
    if layout == "misaligned":  # one element past an aligned start: no vector loads or stores
        return randn(B * T * D + 1)[1:].view(B, T, D)
    raise ValueError(f"unknown layout {layout!r}")
