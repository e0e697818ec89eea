"""Loading EnCodec decoders from the checkpoint formats JASCO users have on disk.

* audiocraft exported compression model (``compression_state_dict.bin``, or a directory holding one):
  ``{'best_state': state_dict, 'xp.cfg': YAML, ...}``; the YAML is read with OmegaConf, as audiocraft
  writes it, so its interpolations resolve as they do upstream.
* audiocraft pointer file ``{'pretrained': 'facebook/encodec_32khz', ...}``: resolved to a local copy
  in the Hugging Face cache layout, never downloaded.
* transformers EnCodec directory: ``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``, weight
  norm stored as ``weight_g``/``weight_v`` or ``parametrizations.weight.original0``/``original1``.

Weight norm (and spectral norm) is folded into plain weights here, once. Pickles are read with
``weights_only=True``: a checkpoint that carries code is refused, never executed. The checks that make reading
an untrusted file safe (bounded sizes, zip bombs, YAML aliases, plausible architectures) are in
jasco_fast/guards.py; ``check_torch_zip`` and ``read_safetensors_header`` are importable from here too.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import torch
import yaml

from jasco_fast.decoder import LSTM, Conv, ConvTranspose, DecoderConfig, ResBlock, SEANetDecoder
from jasco_fast.errors import first_line
from jasco_fast.guards import (
    CheckpointError,
    check_plausible,
    check_torch_zip,
    check_transformers_config,
    check_xp_cfg,
    checkpoint_errors,
    read_safetensors_header,
    read_text_file,
)

__all__ = [
    "CheckpointError",
    "load_decoder",
    "read_checkpoint",
    "audiocraft_config",
    "decoder_config_from_audiocraft",
    "decoder_config_from_transformers",
    "decoder_from_state",
]

AUDIOCRAFT_FILE = "compression_state_dict.bin"
# Where each format keeps the decoder's Sequential / ModuleList in its state dict.
_DECODER_ROOT = {"audiocraft": "decoder.model.", "transformers": "decoder.layers."}
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_HF_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?")
_WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ---------------------------------------------------------------------------------------------------
# Reading files


def _torch_load(path: Path):
    check_torch_zip(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler raises several types; all mean "not loadable safely"
        text = str(exc)
        if "weights_only" in text or "Unsupported global" in text or "Unsupported operand" in text:
            raise CheckpointError(
                path,
                "refused: the file holds Python objects beyond tensors and plain "
                "containers (it could execute code when loaded)",
            ) from None
        raise CheckpointError(
            path,
            f"not a readable torch checkpoint (truncated or corrupt?): "
            f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}",
        ) from None


def _load_state_file(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        read_safetensors_header(path)  # sizes checked against the file before the library allocates
        try:
            return load_file(str(path))
        except Exception as exc:
            raise CheckpointError(path, f"not a readable safetensors file (truncated or corrupt?): {exc}") from None
    state = _torch_load(path)
    if not isinstance(state, dict):
        raise CheckpointError(path, f"expected a state dict, found {type(state).__name__}")
    return state


def _hf_cache_dirs() -> list[Path]:
    dirs = []
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            dirs.append(Path(os.environ[var]))
    hf_home = Path(
        os.environ.get("HF_HOME", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface")
    )
    dirs.append(hf_home / "hub")
    return dirs


def resolve_pretrained(name: str) -> Path | None:
    """A local directory holding the Hugging Face model ``name`` (cache layout), or None."""
    folder = "models--" + name.replace("/", "--")
    for cache in _hf_cache_dirs():
        repo = cache / folder
        snapshots = repo / "snapshots"
        if not snapshots.is_dir():
            continue
        ref = repo / "refs" / "main"
        candidates = []
        if ref.is_file():  # a commit hash; anything else (a damaged or hostile ref) is ignored
            commit = ref.read_bytes()[:256].decode("utf-8", "replace").strip()
            if re.fullmatch(r"[0-9A-Za-z_-][0-9A-Za-z._-]*", commit):
                candidates.append(snapshots / commit)
        candidates += sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        for snap in candidates:
            if (snap / "config.json").is_file() and any((snap / w).is_file() for w in TRANSFORMERS_WEIGHTS):
                return snap
    return None


@checkpoint_errors
def read_checkpoint(path) -> tuple[DecoderConfig, dict, str, Path]:
    """Identify and read a checkpoint: (config, raw upstream state dict, format, file read).

    ``format`` is ``'audiocraft'`` or ``'transformers'``; the state dict is as stored (weight norm unfolded).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(path, "no such file or directory")
    if path.is_dir():
        if (path / "config.json").is_file():
            return _read_transformers_dir(path)
        if (path / AUDIOCRAFT_FILE).is_file():
            return read_checkpoint(path / AUDIOCRAFT_FILE)
        raise CheckpointError(
            path,
            f"directory holds neither a transformers EnCodec model (config.json + "
            f"{' or '.join(TRANSFORMERS_WEIGHTS)}) nor an audiocraft {AUDIOCRAFT_FILE}",
        )
    if path.name == "config.json":
        return _read_transformers_dir(path.parent)
    if path.suffix == ".safetensors":
        raise CheckpointError(
            path, "a bare safetensors file has no architecture; pass the directory holding it and its config.json"
        )
    pkg = _torch_load(path)
    if not isinstance(pkg, dict):
        raise CheckpointError(path, f"expected a dict checkpoint, found {type(pkg).__name__}")
    if "pretrained" in pkg and "best_state" not in pkg:
        name = pkg["pretrained"]
        if not isinstance(name, str) or not _HF_REPO_ID.fullmatch(name):
            raise CheckpointError(path, f"'pretrained' is not a Hugging Face model name: {name!r}")
        local = resolve_pretrained(name)
        if local is None:
            raise CheckpointError(
                path,
                f"points to the pretrained model {name!r}, which is not in the local "
                f"Hugging Face cache ({', '.join(str(d) for d in _hf_cache_dirs())}); "
                f"download it once (e.g. `huggingface-cli download {name}`) and pass "
                f"its directory (config.json + model.safetensors) instead",
            )
        return _read_transformers_dir(local)
    if "best_state" in pkg and "xp.cfg" in pkg:
        check_xp_cfg(path, pkg["xp.cfg"])
        return _read_audiocraft(path, pkg)
    raise CheckpointError(
        path,
        f"unrecognised checkpoint: keys {sorted(map(str, pkg))[:8]}; expected an "
        f"audiocraft export ('best_state', 'xp.cfg') or pointer ('pretrained')",
    )


def _read_transformers_dir(folder: Path):
    cfg_path = folder / "config.json"
    try:
        raw = json.loads(read_text_file(cfg_path))
    except CheckpointError:
        raise
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointError(cfg_path, f"unreadable config.json: {exc}") from None
    check_transformers_config(cfg_path, raw)
    for name in TRANSFORMERS_WEIGHTS:
        weights = folder / name
        if weights.is_file():
            break
    else:
        raise CheckpointError(folder, f"no weights: expected {' or '.join(TRANSFORMERS_WEIGHTS)}")
    try:
        config = decoder_config_from_transformers(raw)
    except ValueError as exc:
        raise CheckpointError(cfg_path, str(exc)) from None
    return config, _load_state_file(weights), "transformers", weights


def _read_audiocraft(path: Path, pkg: dict):
    state = pkg["best_state"]
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # an un-exported training checkpoint
        state = state["model"]
    if not isinstance(state, dict):
        raise CheckpointError(path, "'best_state' is not a state dict")
    try:
        config = decoder_config_from_audiocraft(audiocraft_config(pkg["xp.cfg"]))
    except ValueError as exc:
        raise CheckpointError(path, f"bad 'xp.cfg': {exc}") from None
    return config, state, "audiocraft", path


# ---------------------------------------------------------------------------------------------------
# Configs

# The sections of an audiocraft config the decoder is built from. Only these are resolved: other sections
# may hold interpolations that resolve only inside audiocraft (its own resolvers, experiment paths).
AUDIOCRAFT_SECTIONS = ("compression_model", "sample_rate", "channels", "encodec", "seanet")


def audiocraft_config(cfg) -> dict:
    """Read an audiocraft config (its YAML text, or a mapping) with OmegaConf, as audiocraft does, and return
    the sections the decoder needs (:data:`AUDIOCRAFT_SECTIONS`) as plain containers, interpolations such as
    ``${channels}`` or ``${.dimension}`` resolved. Raises ``ValueError`` naming the key at fault."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        conf = OmegaConf.create(cfg)
        if not isinstance(conf, DictConfig):
            raise ValueError(f"the config is not a mapping but a {type(OmegaConf.to_object(conf)).__name__}")
        return {
            key: OmegaConf.to_container(conf[key], resolve=True) if OmegaConf.is_config(conf[key]) else conf[key]
            for key in AUDIOCRAFT_SECTIONS
            if key in conf
        }
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML: {first_line(exc)}") from None
    except OmegaConfBaseException as exc:
        where = f" (at {exc.full_key})" if getattr(exc, "full_key", None) else ""
        raise ValueError(f"{first_line(exc)}{where}") from None


_SEANET_FIELDS = {
    "dimension",
    "channels",
    "n_filters",
    "n_residual_layers",
    "ratios",
    "activation",
    "activation_params",
    "final_activation",
    "final_activation_params",
    "norm",
    "norm_params",
    "kernel_size",
    "last_kernel_size",
    "residual_kernel_size",
    "dilation_base",
    "causal",
    "pad_mode",
    "true_skip",
    "compress",
    "lstm",
    "disable_norm_outer_blocks",
    "trim_right_ratio",
}


def decoder_config_from_audiocraft(cfg: dict) -> DecoderConfig:
    """DecoderConfig from an audiocraft compression-model config (interpolations already resolved)."""
    model = cfg.get("compression_model", "encodec")
    if model != "encodec":
        raise ValueError(f"compression_model {model!r} is not an EnCodec model")
    encodec = cfg.get("encodec") or {}
    if encodec.get("autoencoder", "seanet") != "seanet":
        raise ValueError(f"autoencoder {encodec.get('autoencoder')!r} is not SEANet")
    seanet = cfg.get("seanet")
    if not isinstance(seanet, dict):
        raise ValueError("no 'seanet' section")
    kwargs = {k: v for k, v in seanet.items() if k not in ("encoder", "decoder")}
    kwargs.update(seanet.get("decoder") or {})
    unknown = sorted(set(kwargs) - _SEANET_FIELDS)
    if unknown:
        raise ValueError(f"unknown SEANet decoder settings {unknown}")
    sample_rate = cfg.get("sample_rate", encodec.get("sample_rate"))
    if sample_rate is not None:
        kwargs["sample_rate"] = sample_rate
    try:
        return DecoderConfig(**kwargs)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


# transformers EncodecConfig name -> (DecoderConfig name, transformers default)
_HF_FIELDS = {
    "hidden_size": ("dimension", 128),
    "audio_channels": ("channels", 1),
    "num_filters": ("n_filters", 32),
    "upsampling_ratios": ("ratios", [8, 5, 4, 2]),
    "num_residual_layers": ("n_residual_layers", 1),
    "num_lstm_layers": ("lstm", 2),
    "kernel_size": ("kernel_size", 7),
    "last_kernel_size": ("last_kernel_size", 7),
    "residual_kernel_size": ("residual_kernel_size", 3),
    "dilation_growth_rate": ("dilation_base", 2),
    "compress": ("compress", 2),
    "pad_mode": ("pad_mode", "reflect"),
    "use_causal_conv": ("causal", True),
    "trim_right_ratio": ("trim_right_ratio", 1.0),
    "norm_type": ("norm", "weight_norm"),
    "sampling_rate": ("sample_rate", 24000),
}


def decoder_config_from_transformers(raw: dict) -> DecoderConfig:
    """DecoderConfig from a transformers EnCodec ``config.json`` (its defaults fill missing fields)."""
    if raw.get("model_type", "encodec") != "encodec":
        raise ValueError(f"model_type {raw.get('model_type')!r} is not 'encodec'")
    kwargs = {ours: raw.get(theirs, default) for theirs, (ours, default) in _HF_FIELDS.items()}
    kwargs["true_skip"] = not raw.get("use_conv_shortcut", True)
    if kwargs["norm"] not in ("weight_norm", "time_group_norm"):
        raise ValueError(f"norm_type {kwargs['norm']!r} is not one transformers EnCodec supports")
    return DecoderConfig(**kwargs)


# ---------------------------------------------------------------------------------------------------
# Weights


def _upstream_prefixes(decoder: SEANetDecoder, fmt: str):
    """(our module, upstream key prefix of its conv, upstream key prefix of its GroupNorm) per module.

    Both upstream decoders are one Sequential/ModuleList in the same order as ours, so index i matches.
    """
    for i, layer in enumerate(decoder.layers):
        base = f"{_DECODER_ROOT[fmt]}{i}."
        if isinstance(layer, ResBlock):
            parts = [(layer.conv1, f"{base}block.1."), (layer.conv2, f"{base}block.3.")]
            if isinstance(layer.shortcut, Conv):
                parts.append((layer.shortcut, f"{base}shortcut."))
        elif isinstance(layer, (Conv, ConvTranspose, LSTM)):
            parts = [(layer, base)]
        else:
            continue
        for module, prefix in parts:
            if isinstance(module, LSTM):
                yield module, prefix + "lstm.", None
            elif fmt == "audiocraft":
                inner = "convtr." if isinstance(module, ConvTranspose) else "conv."
                yield module, prefix + inner + inner, prefix + inner + "norm."
            else:
                yield module, prefix + "conv.", prefix + "norm."


def _fold_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # w = g * v / ||v||, the norm over every dim but 0 (torch's weight_norm with dim=0, as both upstreams use)
    v64 = v.double()
    norm = v64.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.dim() - 1)))
    return g.double().reshape(norm.shape) * v64 / norm


def _fold_spectral_norm(w: torch.Tensor, u: torch.Tensor, v: torch.Tensor, transposed: bool) -> torch.Tensor:
    # eval-mode spectral norm: w / (u . W v); torch reshapes ConvTranspose weights along dim 1
    mat = (w.transpose(0, 1) if transposed else w).flatten(1).double()
    sigma = torch.dot(u.double(), mat @ v.double())
    return w.double() / sigma


_WEIGHT_LAYOUTS = (  # how a checkpoint may store a conv weight: (kind, key suffixes)
    ("weight_norm", ("weight_g", "weight_v")),
    ("weight_norm", ("parametrizations.weight.original0", "parametrizations.weight.original1")),
    ("spectral_norm", ("weight_orig", "weight_u", "weight_v")),
    ("plain", ("weight",)),
)


def _weight_layout(state: dict, prefix: str) -> tuple[str, tuple[str, ...]] | None:
    """(kind, keys) of the conv weight stored under ``prefix``; the first layout whose first key is present."""
    for kind, suffixes in _WEIGHT_LAYOUTS:
        if prefix + suffixes[0] in state:  # a missing companion key is reported by the validation
            return kind, tuple(prefix + k for k in suffixes)
    return None


def _take_weight(state: dict, prefix: str, transposed: bool, used: set) -> torch.Tensor | None:
    layout = _weight_layout(state, prefix)
    if layout is None:
        return None
    kind, keys = layout
    used.update(keys)
    tensors = [state.get(k) for k in keys]
    if any(t is None for t in tensors):
        return None
    if kind == "weight_norm":
        return _fold_weight_norm(*tensors)
    if kind == "spectral_norm":
        return _fold_spectral_norm(*tensors, transposed)
    return tensors[0]


def _copy(path: Path, key: str, dst: torch.Tensor, src: torch.Tensor | None):
    if src is None:
        raise CheckpointError(path, f"missing key {key!r}")
    if not isinstance(src, torch.Tensor) or not src.is_floating_point():
        raise CheckpointError(path, f"{key!r} is not a floating-point tensor")
    if src.numel() != dst.numel() or src.shape[0] != dst.shape[0]:
        raise CheckpointError(
            path, f"{key!r} has shape {list(src.shape)}, the architecture in the config needs {list(dst.shape)}"
        )
    if not torch.isfinite(src).all():
        raise CheckpointError(path, f"{key!r} holds NaN or Inf")
    with torch.no_grad():
        dst.copy_(src.reshape(dst.shape))


def load_state(decoder: SEANetDecoder, state: dict, fmt: str, path) -> SEANetDecoder:
    """Fill ``decoder`` from an upstream state dict, folding weight norm; every decoder key must be used."""
    path = Path(path)
    used: set[str] = set()
    for module, prefix, norm_prefix in _upstream_prefixes(decoder, fmt):
        if isinstance(module, LSTM):
            for name, param in module.named_parameters():
                used.add(prefix + name)
                _copy(path, prefix + name, param, state.get(prefix + name))
            continue
        weight = _take_weight(state, prefix, isinstance(module, ConvTranspose), used)
        _copy(path, prefix + "weight", module.weight, weight)
        used.add(prefix + "bias")
        _copy(path, prefix + "bias", module.bias, state.get(prefix + "bias"))
        if module.norm is not None:
            for name in ("weight", "bias"):
                used.add(norm_prefix + name)
                _copy(path, norm_prefix + name, getattr(module.norm, name), state.get(norm_prefix + name))
    unexpected = sorted(k for k in state if k.startswith(_DECODER_ROOT[fmt]) and k not in used)
    if unexpected:
        raise CheckpointError(
            path,
            f"decoder keys the config does not account for (architecture mismatch?): "
            f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}",
        )
    return decoder


def load_decoder(path, *, device="cpu", dtype=torch.float32) -> SEANetDecoder:
    """Load the EnCodec decoder from a checkpoint file or directory (formats in the module docstring).

    Returns an eval-mode :class:`SEANetDecoder` with folded weights on ``device`` in ``dtype``.
    """
    config, state, fmt, source = read_checkpoint(path)
    return decoder_from_state(config, state, fmt, source, device=device, dtype=dtype)


def decoder_from_state(
    config: DecoderConfig, state: dict, fmt: str, source, *, device="cpu", dtype=torch.float32
) -> SEANetDecoder:
    """An eval-mode :class:`SEANetDecoder` for ``config`` from an upstream state dict (``fmt``: 'audiocraft' or
    'transformers'); ``source`` names where the state came from, for error messages.

    Nothing is allocated for the decoder before :func:`validate_architecture` has matched the architecture
    to the state's tensors; then the weights are filled and the decoder is run once on a two-frame input.
    """
    source = Path(source)
    skeleton = validate_architecture(config, state, fmt, source)
    decoder = _materialise(skeleton, source)  # in float64: weights are folded there and rounded once
    try:
        load_state(decoder, state, fmt, source)
    except MemoryError:
        raise CheckpointError(source, "out of memory while folding the weights") from None
    except RuntimeError as exc:
        if "alloc" not in str(exc):  # only the allocator's failures are the checkpoint's size
            raise
        raise CheckpointError(source, f"out of memory while folding the weights: {first_line(exc)}") from None
    _check_runs(decoder, source)
    return decoder.to(device=device, dtype=dtype).eval()


# ---------------------------------------------------------------------------------------------------
# Validation before allocating: the architecture a config describes must be the one the weights hold


def validate_architecture(config: DecoderConfig, state: dict, fmt: str, path) -> SEANetDecoder:
    """The decoder ``config`` describes, built on the meta device (no memory for its weights), once it
    is checked against ``state``: plausible sizes first (counted from the config alone), then every
    parameter's name and shape against the checkpoint's tensors, and no decoder tensor left over.
    Raises :class:`CheckpointError` naming ``path``."""
    path = Path(path)
    if fmt not in _DECODER_ROOT:
        raise ValueError(f"fmt must be one of {sorted(_DECODER_ROOT)}, got {fmt!r}")
    tensors = _decoder_tensors(state, fmt, path)
    check_plausible(config, tensors, path)
    try:
        with torch.device("meta"):
            skeleton = SEANetDecoder(config)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise CheckpointError(
            path, f"its config does not build a decoder: {type(exc).__name__}: {first_line(exc)}"
        ) from None
    _check_against_tensors(skeleton, tensors, fmt, path)
    return skeleton


def _decoder_tensors(state, fmt: str, path: Path) -> dict[str, torch.Tensor]:
    """The decoder's entries of an upstream state dict, each checked to be a dense floating-point CPU tensor."""
    if not isinstance(state, dict):
        raise CheckpointError(path, f"expected a state dict, found {type(state).__name__}")
    root = _DECODER_ROOT[fmt]
    tensors = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointError(path, f"state dict key {key!r} is not a string")
        if not key.startswith(root):
            continue
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(path, f"{key!r} is not a floating-point tensor ({type(value).__name__})")
        if value.layout != torch.strided or value.device.type != "cpu" or value.dtype not in _WEIGHT_DTYPES:
            raise CheckpointError(
                path, f"{key!r} is not a floating-point tensor ({value.dtype}, {value.layout}, on {value.device.type})"
            )
        tensors[key] = value
    if not tensors:
        raise CheckpointError(path, f"no decoder weights: no key starts with {root!r}")
    return tensors


def _check_against_tensors(skeleton: SEANetDecoder, tensors: dict, fmt: str, path: Path) -> None:
    """Every parameter of the (meta) skeleton has its upstream tensors, of the right shapes; no decoder
    tensor is left over. Shapes as upstream stores them: conv weights [out, in, k] (transposed: [in, out, k])."""
    used: set[str] = set()
    covered: set[int] = set()

    def need(key: str, shape: tuple, leading_only: bool = False) -> None:
        used.add(key)
        tensor = tensors.get(key)
        if tensor is None:
            raise CheckpointError(path, f"missing key {key!r}")
        fits = (
            (tensor.numel() == math.prod(shape) and tensor.dim() >= 1 and tensor.shape[0] == shape[0])
            if leading_only
            else tuple(tensor.shape) == tuple(shape)
        )
        if not fits:
            raise CheckpointError(
                path, f"{key!r} has shape {list(tensor.shape)}, the architecture in the config needs {list(shape)}"
            )

    for module, prefix, norm_prefix in _upstream_prefixes(skeleton, fmt):
        if isinstance(module, LSTM):
            for name, param in module.named_parameters():
                need(prefix + name, tuple(param.shape))
                covered.add(id(param))
            continue
        w = module.weight
        upstream = (w.shape[0], w.shape[1], w.shape[3])
        layout = _weight_layout(tensors, prefix)
        if layout is None:
            raise CheckpointError(path, f"missing key {prefix + 'weight'!r}")
        kind, keys = layout
        if kind == "weight_norm":
            need(keys[0], (upstream[0], 1, 1), leading_only=True)
            need(keys[1], upstream)
        elif kind == "spectral_norm":
            rows = upstream[1] if isinstance(module, ConvTranspose) else upstream[0]
            need(keys[0], upstream)
            need(keys[1], (rows,))
            need(keys[2], (math.prod(upstream) // rows,))
        else:
            need(keys[0], upstream)
        need(prefix + "bias", tuple(module.bias.shape))
        covered.update((id(module.weight), id(module.bias)))
        if module.norm is not None:
            for name, param in module.norm.named_parameters():
                need(norm_prefix + name, tuple(param.shape))
                covered.add(id(param))
    stray = [name for name, param in skeleton.named_parameters() if id(param) not in covered]
    stray += [name for name, _ in skeleton.named_buffers()]
    if stray:
        raise CheckpointError(
            path, f"its config builds parameters no checkpoint holds (e.g. from its activation settings): {stray[:5]}"
        )
    unexpected = sorted(k for k in tensors if k not in used)
    if unexpected:
        raise CheckpointError(
            path,
            f"decoder keys the config does not account for (architecture mismatch?): "
            f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}",
        )


def _materialise(skeleton: SEANetDecoder, path: Path) -> SEANetDecoder:
    try:
        # float64 storage straight away; not `to_empty()`, whose meta-tensor path imports sympy (a cold start's
        # half second), nor a float32 allocation converted afterwards
        return skeleton._apply(lambda t: torch.empty(t.shape, dtype=torch.float64))
    except (MemoryError, RuntimeError) as exc:
        count = sum(p.numel() for p in skeleton.parameters())
        raise CheckpointError(path, f"no memory for a decoder of {count:,} parameters: {first_line(exc)}") from None


def _check_runs(decoder: SEANetDecoder, path: Path) -> None:
    """Settings that shape no tensor (activation parameters, padding, ...) still have to work together."""
    # circular padding needs at least as many samples as it pads; the other modes take any length
    frames = max(2, decoder.config.kernel_size) if decoder.config.pad_mode == "circular" else 2
    try:
        with torch.no_grad():
            audio = decoder.eval()(torch.zeros(1, decoder.dimension, frames, dtype=torch.float64))
    except (MemoryError, RuntimeError, TypeError, ValueError, ArithmeticError) as exc:
        raise CheckpointError(
            path, f"the decoder built from it fails on a {frames}-frame input: {type(exc).__name__}: {first_line(exc)}"
        ) from None
    expected = (1, decoder.channels, frames * decoder.hop_length)
    if tuple(audio.shape) != expected:
        raise CheckpointError(
            path,
            f"the decoder built from it turns {frames} frames into shape {list(audio.shape)}, not {list(expected)}",
        )
