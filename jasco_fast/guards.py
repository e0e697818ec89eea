"""Guards against hostile or damaged checkpoint files, applied before anything large is allocated or parsed.

Every reader of an untrusted file goes through these: sizes bounded and checked against the file (config text,
safetensors headers, zip records: no zip bomb), YAML aliases and OmegaConf interpolations counted before they
are expanded (no "billion laughs"), config.json field types, and the architecture a config describes counted
from the config alone and compared with the weights the file holds. Each failure is a :class:`CheckpointError`
naming the file. The format readers (jasco_fast/loading.py) use them.
"""

from __future__ import annotations

import functools
import json
import math
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml

from jasco_fast.errors import first_line

if TYPE_CHECKING:
    from jasco_fast.decoder import DecoderConfig

__all__ = [
    "CheckpointError",
    "checkpoint_errors",
    "read_text_file",
    "read_safetensors_header",
    "check_torch_zip",
    "check_xp_cfg",
    "check_transformers_config",
    "check_plausible",
    "parameter_count",
]


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: the message names the file and the problem."""

    def __init__(self, path, problem: str):
        if len(problem) > 600:  # a hostile file can put megabytes into a value the message quotes
            problem = problem[:600] + " ..."
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem


# ---------------------------------------------------------------------------------------------------
# Reading untrusted files: bounded sizes, and every failure a CheckpointError naming the file

MAX_TEXT_BYTES = 4 << 20  # config.json / xp.cfg: real ones are a few kB
MAX_YAML_NODES = 200_000  # after expanding aliases (a "billion laughs" YAML expands exponentially)
MAX_INTERPOLATED = 10_000_000  # values and characters after expanding ${...} interpolations
_REFERENCE = re.compile(r"\$\{([^${}]+)\}")  # an innermost OmegaConf interpolation
MAX_SAFETENSORS_HEADER = 100 << 20  # the safetensors library's own limit
_SAFETENSORS_ITEMSIZE = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
}


def checkpoint_errors(func):
    """Report what the system raises while reading ``path`` (the first argument) as a CheckpointError:
    running out of memory on sizes a damaged file declares, I/O errors, nesting too deep to parse."""

    @functools.wraps(func)
    def wrapper(path, *args, **kwargs):
        try:
            return func(path, *args, **kwargs)
        except CheckpointError:
            raise
        except MemoryError:
            raise CheckpointError(
                path, "out of memory while reading it (a damaged file declaring huge sizes?)"
            ) from None
        except RecursionError:
            raise CheckpointError(path, "nested too deeply to read (corrupt?)") from None
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
            raise CheckpointError(path, f"cannot read it{where}: {exc.strerror or exc}") from None

    return wrapper


def regular_file(path: Path) -> int:
    """The size of ``path``, which must be a regular file: a FIFO would block the reader forever and a
    device such as /dev/zero never ends."""
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(path, "not a regular file")
    return info.st_size


def read_text_file(path: Path, limit: int = MAX_TEXT_BYTES) -> str:
    """A small UTF-8 text file, refused (CheckpointError) when larger than ``limit`` bytes."""
    size = regular_file(path)
    if size > limit:
        raise CheckpointError(path, f"{size} bytes, too large for a config file (at most {limit})")
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:  # grew since stat
        raise CheckpointError(path, f"more than {limit} bytes, too large for a config file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(path, f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None


def read_safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name -> (dtype, shape) from a safetensors file's header, checked against the file's size
    before anything is allocated: the 8-byte header length, the JSON, each tensor's offsets and size."""
    path = Path(path)
    corrupt = "not a readable safetensors file (truncated or corrupt?): "
    size = regular_file(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(path, corrupt + f"{size} bytes, shorter than the 8-byte header length")
        length = int.from_bytes(head, "little")
        if length > size - 8 or length > MAX_SAFETENSORS_HEADER:
            raise CheckpointError(path, corrupt + f"header length {length} does not fit the file's {size} bytes")
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(path, corrupt + f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise CheckpointError(path, corrupt + "header is not a JSON object")
    data_size = size - 8 - length
    tensors, spans = {}, []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("dtype"), str)
            and entry["dtype"] in _SAFETENSORS_ITEMSIZE
            and isinstance(entry.get("shape"), list)
            and isinstance(entry.get("data_offsets"), list)
            and len(entry["data_offsets"]) == 2
            and all(type(v) is int and v >= 0 for v in entry["shape"] + entry["data_offsets"])
        )
        if not ok:
            raise CheckpointError(path, corrupt + f"bad header entry for {name!r}")
        begin, end = entry["data_offsets"]
        nbytes = math.prod(entry["shape"]) * _SAFETENSORS_ITEMSIZE[entry["dtype"]]
        if not begin <= end <= data_size or end - begin != nbytes:
            raise CheckpointError(
                path,
                corrupt + f"tensor {name!r} ({entry['dtype']} {entry['shape']}) does not "
                f"fit its data offsets {entry['data_offsets']} in {data_size} bytes",
            )
        tensors[name] = (entry["dtype"], tuple(entry["shape"]))
        spans.append((begin, end, name))
    spans.sort()
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
        if begin < end:
            raise CheckpointError(path, corrupt + f"tensors {first!r} and {second!r} overlap")
    return tensors


def check_xp_cfg(path: Path, text) -> None:
    """An audiocraft 'xp.cfg' must be YAML text of bounded size whose aliases expand to a bounded tree."""
    if not isinstance(text, str):
        if isinstance(text, dict):
            return  # an already parsed config: torch.load built it, and it is bounded by the file size
        raise CheckpointError(path, f"bad 'xp.cfg': expected YAML text, found {type(text).__name__}")
    if len(text) > MAX_TEXT_BYTES:
        raise CheckpointError(path, f"bad 'xp.cfg': {len(text)} characters, too large for a config")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise CheckpointError(path, f"bad 'xp.cfg': not valid YAML: {first_line(exc)}") from None
    # Expanded size of the node graph, each shared (aliased) node counted once per reference.
    sizes: dict[int, int] = {}
    stack = [(root, False)] if root is not None else []
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes and sizes[id(node)] >= 0:
            continue
        children = (
            [c for pair in node.value for c in pair]
            if isinstance(node, yaml.MappingNode)
            else list(node.value)
            if isinstance(node, yaml.SequenceNode)
            else []
        )
        if children_done:
            sizes[id(node)] = min(1 + sum(sizes[id(c)] for c in children), MAX_YAML_NODES + 1)
            continue
        if sizes.get(id(node)) == -1:
            raise CheckpointError(path, "bad 'xp.cfg': a YAML alias refers to itself (a recursive config)")
        sizes[id(node)] = -1  # on the current path
        stack.append((node, True))
        for child in children:
            if sizes.get(id(child)) == -1:
                raise CheckpointError(path, "bad 'xp.cfg': a YAML alias refers to itself (a recursive config)")
            if id(child) not in sizes:
                stack.append((child, False))
    if root is not None and sizes[id(root)] > MAX_YAML_NODES:
        raise CheckpointError(path, f"bad 'xp.cfg': its aliases expand to more than {MAX_YAML_NODES} values")
    if _interpolated_size(yaml.safe_load(text)) > MAX_INTERPOLATED:
        raise CheckpointError(
            path,
            f"bad 'xp.cfg': its ${{...}} interpolations expand to more than {MAX_INTERPOLATED} values and characters",
        )


def _interpolated_size(cfg) -> int:
    """Values plus characters of ``cfg`` once every OmegaConf ``${...}`` is expanded, computed without
    expanding (each referenced node's size is computed once): resolving copies what a reference names,
    so references to references grow exponentially, like YAML aliases. Capped at MAX_INTERPOLATED + 1."""
    cap = MAX_INTERPOLATED + 1
    memo: dict[tuple, int] = {}

    def node_at(keys: tuple):
        node = cfg
        for key in keys:
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                return None
        return node

    def size_at(keys: tuple) -> int:
        if keys not in memo:
            memo[keys] = 1  # while being computed: a reference cycle counts once (the resolver refuses it)
            memo[keys] = size(node_at(keys), keys)
        return memo[keys]

    def size(node, here: tuple) -> int:
        if isinstance(node, dict):
            return min(cap, 1 + sum(size_at(here + (k,)) for k in node if isinstance(k, str)))
        if isinstance(node, list):
            return min(cap, 1 + sum(size_at(here + (str(i),)) for i in range(len(node))))
        if not isinstance(node, str):
            return 1
        total = len(node)
        for ref in _REFERENCE.findall(node):
            if ":" in ref:  # a resolver such as oc.env: its value is not in the config
                continue
            dots = len(ref) - len(ref.lstrip("."))
            parent = here[:-1]
            base = parent[: len(parent) - dots + 1] if dots else ()
            total = min(cap, total + size_at(base + tuple(ref.lstrip(".").split("."))))
        return total

    return size_at(())


def check_torch_zip(path: Path) -> None:
    """A zip-format torch file must not expand beyond its size: torch.save stores records uncompressed,
    but torch.load also inflates compressed ones, so a few MB of zeros could declare gigabytes."""
    import zipfile

    size = regular_file(path)
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except Exception:  # not a zip (a legacy pickle) or a damaged one: torch.load reports it
        return
    if declared > 4 * size + (1 << 20):
        raise CheckpointError(path, f"its zip records expand to {declared} bytes from a {size}-byte file (a zip bomb?)")


# transformers config.json fields (see _HF_FIELDS) -> the JSON type they must have
_HF_INT_FIELDS = (
    "hidden_size",
    "audio_channels",
    "num_filters",
    "num_residual_layers",
    "num_lstm_layers",
    "kernel_size",
    "last_kernel_size",
    "residual_kernel_size",
    "dilation_growth_rate",
    "compress",
    "sampling_rate",
)
_HF_BOOL_FIELDS = ("use_causal_conv", "use_conv_shortcut")
_HF_STR_FIELDS = ("pad_mode", "norm_type", "model_type")
_MAX_INT = 2**31 - 1


def check_transformers_config(path: Path, raw) -> None:
    """Types and ranges of the config.json fields the decoder is built from, before anything is built."""
    if not isinstance(raw, dict):
        raise CheckpointError(path, f"config.json holds a JSON {type(raw).__name__}, expected an object")
    problems = []
    for name in _HF_INT_FIELDS:
        if name in raw and not (type(raw[name]) is int and 0 <= raw[name] <= _MAX_INT):
            problems.append(f"{name} must be an integer in [0, {_MAX_INT}], got {raw[name]!r}")
    for name in _HF_BOOL_FIELDS:
        if name in raw and type(raw[name]) is not bool:
            problems.append(f"{name} must be true or false, got {raw[name]!r}")
    for name in _HF_STR_FIELDS:
        if name in raw and not isinstance(raw[name], str):
            problems.append(f"{name} must be a string, got {raw[name]!r}")
    if "trim_right_ratio" in raw and not (
        type(raw["trim_right_ratio"]) in (int, float) and math.isfinite(raw["trim_right_ratio"])
    ):
        problems.append(f"trim_right_ratio must be a number, got {raw['trim_right_ratio']!r}")
    ratios = raw.get("upsampling_ratios", [1])
    if not (
        isinstance(ratios, list) and 1 <= len(ratios) <= 32 and all(type(r) is int and 1 <= r <= 2**16 for r in ratios)
    ):
        problems.append(f"upsampling_ratios must be a list of 1 to 32 integers in [1, 65536], got {ratios!r}")
    if problems:
        raise CheckpointError(path, "; ".join(problems))


# ---------------------------------------------------------------------------------------------------
# Plausible architectures: what a config describes, counted from the config alone, against the weights held

PLAUSIBLE_FACTOR = 10  # a config may describe at most this many times the values the weights hold
MAX_STAGES = 32  # upsampling stages (EnCodec has 4)
MAX_HOP = 1 << 20  # samples per latent frame (EnCodec 32 kHz: 640)
MAX_CONV_PADDING = 1 << 16  # samples a dilated residual convolution pads with (EnCodec: 2)


def parameter_count(config: DecoderConfig) -> tuple[int, int]:
    """(at least how many tensors, at most how many values) the decoder of ``config`` has, counted
    from the config alone (Python ints: no overflow, no allocation). Mirrors SEANetDecoder.__init__."""
    group_norm = 2 if config.norm == "time_group_norm" else 0

    def conv(cin: int, cout: int, kernel: int) -> int:
        return cout * cin * kernel + cout + group_norm * cout

    shortcut = 0 if config.true_skip else 1
    convs = 2 + len(config.ratios) * (1 + config.n_residual_layers * (2 + shortcut))
    tensors = 2 * convs + 4 * config.lstm
    mult = 2 ** len(config.ratios)
    values = conv(config.dimension, mult * config.n_filters, config.kernel_size)
    values += config.lstm * 8 * ((mult * config.n_filters) ** 2 + mult * config.n_filters)
    for ratio in config.ratios:
        dim = mult * config.n_filters // 2
        hidden = dim // config.compress
        values += conv(mult * config.n_filters, dim, 2 * ratio)
        values += config.n_residual_layers * (
            conv(dim, hidden, config.residual_kernel_size) + conv(hidden, dim, 1) + shortcut * conv(dim, dim, 1)
        )
        mult //= 2
    values += conv(config.n_filters, config.channels, config.last_kernel_size)
    return tensors, values


def check_plausible(config: DecoderConfig, tensors: dict, path: Path) -> None:
    # Activations are built from the config by name: only torch's elementwise activation modules, whose
    # construction cannot allocate or loop (a module such as Transformer or Embedding could, by its
    # arguments), and no argument placing anything outside the meta device.
    for name in ("activation", "final_activation"):
        cls = getattr(torch.nn, getattr(config, name) or "Identity")
        if cls is not torch.nn.Identity and (
            cls.__module__ != "torch.nn.modules.activation" or cls is torch.nn.MultiheadAttention
        ):
            raise CheckpointError(
                path, f"its config's {name} {getattr(config, name)!r} is not an elementwise activation"
            )
    for name in ("activation_params", "final_activation_params", "norm_params"):
        if {"device", "dtype"} & set(getattr(config, name) or {}):
            raise CheckpointError(path, f"its config's {name} may not set a device or dtype")
    if len(config.ratios) > MAX_STAGES:
        raise CheckpointError(path, f"its config has {len(config.ratios)} upsampling stages (at most {MAX_STAGES})")
    if config.hop_length > MAX_HOP:
        raise CheckpointError(path, f"its config upsamples each frame {config.hop_length}x (at most {MAX_HOP})")
    need, values = parameter_count(config)
    if need > len(tensors):
        raise CheckpointError(
            path,
            f"its config describes a decoder of at least {need} tensors, the checkpoint "
            f"holds {len(tensors)} (architecture mismatch?)",
        )
    held = sum(t.numel() for t in tensors.values())
    if values > PLAUSIBLE_FACTOR * held:
        raise CheckpointError(
            path,
            f"its config describes a decoder of {values:,} parameters, more than "
            f"{PLAUSIBLE_FACTOR}x the {held:,} values of the checkpoint's decoder tensors "
            f"(a damaged config?)",
        )
    exponent = max(config.n_residual_layers - 1, 0)
    if config.dilation_base > 1 and (
        exponent > 64 or (config.residual_kernel_size - 1) * config.dilation_base**exponent > MAX_CONV_PADDING
    ):
        raise CheckpointError(
            path,
            f"its config dilates the residual convolutions to more than {MAX_CONV_PADDING} "
            f"samples (dilation_base {config.dilation_base}, {config.n_residual_layers} layers)",
        )
    if config.sample_rate > _MAX_INT:
        raise CheckpointError(path, f"its config's sample rate {config.sample_rate} is implausible")
