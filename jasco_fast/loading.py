"""Loading EnCodec decoders from the checkpoint formats JASCO users have on disk.

* audiocraft exported compression model (``compression_state_dict.bin``, or a directory holding one):
  ``{'best_state': state_dict, 'xp.cfg': YAML, ...}``; the YAML is read with OmegaConf, as audiocraft
  writes it, so its interpolations resolve as they do upstream.
* audiocraft pointer file ``{'pretrained': 'facebook/encodec_32khz', ...}``: resolved to a local copy
  in the Hugging Face cache layout, never downloaded.
* transformers EnCodec directory: ``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``, weight
  norm stored as ``weight_g``/``weight_v`` or ``parametrizations.weight.original0``/``original1``.

Weight norm (and spectral norm) is folded into plain weights here, once. Pickles are read with
``weights_only=True``: a checkpoint that carries code is refused, never executed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import yaml

from jasco_fast.decoder import LSTM, Conv, ConvTranspose, DecoderConfig, ResBlock, SEANetDecoder

__all__ = ["CheckpointError", "load_decoder", "read_checkpoint", "audiocraft_config", "decoder_config_from_audiocraft",
           "decoder_config_from_transformers", "decoder_from_state"]

AUDIOCRAFT_FILE = "compression_state_dict.bin"
# Where each format keeps the decoder's Sequential / ModuleList in its state dict.
_DECODER_ROOT = {"audiocraft": "decoder.model.", "transformers": "decoder.layers."}
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: the message names the file and the problem."""

    def __init__(self, path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem


# ---------------------------------------------------------------------------------------------------
# Reading files


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler raises several types; all mean "not loadable safely"
        text = str(exc)
        if "weights_only" in text or "Unsupported global" in text or "Unsupported operand" in text:
            raise CheckpointError(path, "refused: the file holds Python objects beyond tensors and plain "
                                        "containers (it could execute code when loaded)") from None
        raise CheckpointError(path, f"not a readable torch checkpoint (truncated or corrupt?): "
                                    f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}") from None


def _load_state_file(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
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
    hf_home = Path(os.environ.get("HF_HOME", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"))
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
        if ref.is_file():
            candidates.append(snapshots / ref.read_text().strip())
        candidates += sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        for snap in candidates:
            if (snap / "config.json").is_file() and any((snap / w).is_file() for w in TRANSFORMERS_WEIGHTS):
                return snap
    return None


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
        raise CheckpointError(path, f"directory holds neither a transformers EnCodec model (config.json + "
                                    f"{' or '.join(TRANSFORMERS_WEIGHTS)}) nor an audiocraft {AUDIOCRAFT_FILE}")
    if path.name == "config.json":
        return _read_transformers_dir(path.parent)
    if path.suffix == ".safetensors":
        raise CheckpointError(path, "a bare safetensors file has no architecture; pass the directory holding "
                                    "it and its config.json")
    pkg = _torch_load(path)
    if not isinstance(pkg, dict):
        raise CheckpointError(path, f"expected a dict checkpoint, found {type(pkg).__name__}")
    if "pretrained" in pkg and "best_state" not in pkg:
        name = pkg["pretrained"]
        local = resolve_pretrained(str(name))
        if local is None:
            raise CheckpointError(path, f"points to the pretrained model {name!r}, which is not in the local "
                                        f"Hugging Face cache ({', '.join(str(d) for d in _hf_cache_dirs())}); "
                                        f"download it once (e.g. `huggingface-cli download {name}`) and pass "
                                        f"its directory (config.json + model.safetensors) instead")
        return _read_transformers_dir(local)
    if "best_state" in pkg and "xp.cfg" in pkg:
        return _read_audiocraft(path, pkg)
    raise CheckpointError(path, f"unrecognised checkpoint: keys {sorted(map(str, pkg))[:8]}; expected an "
                                f"audiocraft export ('best_state', 'xp.cfg') or pointer ('pretrained')")


def _read_transformers_dir(folder: Path):
    cfg_path = folder / "config.json"
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(cfg_path, f"unreadable config.json: {exc}") from None
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
        return {key: OmegaConf.to_container(conf[key], resolve=True) if OmegaConf.is_config(conf[key]) else conf[key]
                for key in AUDIOCRAFT_SECTIONS if key in conf}
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML: {_first_line(exc)}") from None
    except OmegaConfBaseException as exc:
        where = f" (at {exc.full_key})" if getattr(exc, "full_key", None) else ""
        raise ValueError(f"{_first_line(exc)}{where}") from None


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


_SEANET_FIELDS = {"dimension", "channels", "n_filters", "n_residual_layers", "ratios", "activation",
                  "activation_params", "final_activation", "final_activation_params", "norm", "norm_params",
                  "kernel_size", "last_kernel_size", "residual_kernel_size", "dilation_base", "causal",
                  "pad_mode", "true_skip", "compress", "lstm", "disable_norm_outer_blocks", "trim_right_ratio"}


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
    "hidden_size": ("dimension", 128), "audio_channels": ("channels", 1), "num_filters": ("n_filters", 32),
    "upsampling_ratios": ("ratios", [8, 5, 4, 2]), "num_residual_layers": ("n_residual_layers", 1),
    "num_lstm_layers": ("lstm", 2), "kernel_size": ("kernel_size", 7), "last_kernel_size": ("last_kernel_size", 7),
    "residual_kernel_size": ("residual_kernel_size", 3), "dilation_growth_rate": ("dilation_base", 2),
    "compress": ("compress", 2), "pad_mode": ("pad_mode", "reflect"), "use_causal_conv": ("causal", True),
    "trim_right_ratio": ("trim_right_ratio", 1.0), "norm_type": ("norm", "weight_norm"),
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


def _take_weight(state: dict, prefix: str, transposed: bool, used: set) -> torch.Tensor | None:
    def take(key):
        used.add(prefix + key)
        return state[prefix + key]

    if prefix + "weight_g" in state and prefix + "weight_v" in state:
        return _fold_weight_norm(take("weight_g"), take("weight_v"))
    if prefix + "parametrizations.weight.original0" in state:
        return _fold_weight_norm(take("parametrizations.weight.original0"), take("parametrizations.weight.original1"))
    if prefix + "weight_orig" in state:
        return _fold_spectral_norm(take("weight_orig"), take("weight_u"), take("weight_v"), transposed)
    if prefix + "weight" in state:
        return take("weight")
    return None


def _copy(path: Path, key: str, dst: torch.Tensor, src: torch.Tensor | None):
    if src is None:
        raise CheckpointError(path, f"missing key {key!r}")
    if not isinstance(src, torch.Tensor) or not src.is_floating_point():
        raise CheckpointError(path, f"{key!r} is not a floating-point tensor")
    if src.numel() != dst.numel() or src.shape[0] != dst.shape[0]:
        raise CheckpointError(path, f"{key!r} has shape {list(src.shape)}, the architecture in the config "
                                    f"needs {list(dst.shape)}")
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
        raise CheckpointError(path, f"decoder keys the config does not account for (architecture mismatch?): "
                                    f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    return decoder


def load_decoder(path, *, device="cpu", dtype=torch.float32) -> SEANetDecoder:
    """Load the EnCodec decoder from a checkpoint file or directory (formats in the module docstring).

    Returns an eval-mode :class:`SEANetDecoder` with folded weights on ``device`` in ``dtype``.
    """
    config, state, fmt, source = read_checkpoint(path)
    return decoder_from_state(config, state, fmt, source, device=device, dtype=dtype)


def decoder_from_state(config: DecoderConfig, state: dict, fmt: str, source, *, device="cpu",
                       dtype=torch.float32) -> SEANetDecoder:
    """An eval-mode :class:`SEANetDecoder` for ``config`` from an upstream state dict (``fmt``: 'audiocraft' or
    'transformers'); ``source`` names where the state came from, for error messages."""
    with torch.device("meta"):
        skeleton = SEANetDecoder(config)
    # folded in float64 and rounded once, to whatever dtype is asked for
    decoder = skeleton.to_empty(device="cpu").double()
    load_state(decoder, state, fmt, source)
    return decoder.to(device=device, dtype=dtype).eval()
