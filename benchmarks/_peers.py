"""The decoder's peers for ``bench_decode.py --peers``: the same EnCodec 32 kHz decoder, the same weights,
run by other implementations a user could pick, each as a function latents [B, T, D] -> audio [B, C, S]
that includes JASCO's ``latents * std + mean`` and the transpose (every implementation does the same work).
A function with ``static_shape = True`` serves only the shape of the benchmark's latents.

A peer whose package is missing raises :class:`NotInstalled` when built; the benchmark reports it as
"not installed" and goes on. The optional packages come with ``pip install -e ".[bench]"`` (``make bench-deps``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import ENCODEC_32KHZ, ready_decoder
from torch import nn

from jasco_fast import JASCO_LATENT_MEAN as MEAN
from jasco_fast import JASCO_LATENT_STD as STD
from jasco_fast import reference

DecodeFn = Callable[[torch.Tensor], torch.Tensor]


class NotInstalled(RuntimeError):
    """An optional package a peer needs is missing."""


def need(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise NotInstalled(f"not installed ({module}: {exc})") from None


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------------------------------
# One set of weights for everyone: a transformers EncodecModel at facebook/encodec_32khz's architecture,
# saved with save_pretrained and read back by jasco_fast.load_decoder (the path a real checkpoint takes).


def write_transformers_checkpoint(folder: Path, seed: int = 0) -> Path:
    """A random-weight transformers EnCodec 32 kHz folder (transformers' own initialisation)."""
    transformers = need("transformers")
    torch.manual_seed(seed)
    model = transformers.EncodecModel(transformers.EncodecConfig(**ENCODEC_32KHZ)).eval()
    model.save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------------------------------
# Peers. Each builder takes the shared setup and returns (decode function, notes).


def transformers_eager(setup: dict) -> tuple[DecodeFn, str]:
    """What released JASCO runs: transformers' EncodecModel decoder, weight norm recomputed every call."""
    transformers = need("transformers")
    model = transformers.EncodecModel.from_pretrained(setup["checkpoint"]).eval()
    decoder = model.decoder

    @torch.no_grad()
    def run(latents):
        return decoder((latents * STD + MEAN).permute(0, 2, 1))

    return run, f"transformers {version('transformers')}"


def transformers_compiled(setup: dict) -> tuple[DecodeFn, str]:
    """torch.compile with default options, given its best shot: transformers' padding helper is one Python
    function called at every layer's shape, and dynamo's default limit of 8 recompiles per function would
    leave most layers eager."""
    run, notes = transformers_eager(setup)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.no_grad()(torch.compile(run)), notes + ", torch.compile (default options, recompile_limit 64)"


class _PadConv(nn.Module):
    """A stride-1 conv of the reference with its padding as constants: the same arithmetic for any input
    longer than the padding, with no Python arithmetic on the length (the ONNX tracer would freeze it)."""

    def __init__(self, conv):
        super().__init__()
        self.conv, self.norm, self.pad_mode = conv.conv, conv.norm, conv.pad_mode
        total = (self.conv.kernel_size[0] - 1) * self.conv.dilation[0]
        if self.conv.stride[0] != 1:
            raise ValueError("the SEANet decoder's convolutions have stride 1")
        self.left, self.right = (total, 0) if conv.causal else (total - total // 2, total // 2)

    def forward(self, x):
        return self.norm(self.conv(F.pad(x, (self.left, self.right), self.pad_mode)))


class _TrimConvTranspose(nn.Module):
    """A transposed conv of the reference with its trim as constants (negative slice end: dynamic-length safe)."""

    def __init__(self, convtr):
        super().__init__()
        self.convtr, self.norm = convtr.convtr, convtr.norm
        total = self.convtr.kernel_size[0] - self.convtr.stride[0]
        self.right = math.ceil(total * convtr.trim_right_ratio) if convtr.causal else total // 2
        self.left = total - self.right

    def forward(self, x):
        y = self.norm(self.convtr(x))
        return y[..., self.left : -self.right] if self.right else y[..., self.left :]


class _ExportedDecode(nn.Module):
    """latents [B, T, D] -> audio: JASCO's denormalise + transpose, then the reference decoder with weight
    norm folded (``remove_parametrizations``) and its padding/trim made length-free for the ONNX tracer."""

    def __init__(self, decoder):
        super().__init__()
        # a reference of its own: removing the parametrizations of a deep copy would break the original's
        model = reference.ReferenceDecoder(decoder).model
        for module in list(model.modules()):
            if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)) and nn.utils.parametrize.is_parametrized(module):
                nn.utils.parametrize.remove_parametrizations(module, "weight")
        self.model = self._swap(model)

    @classmethod
    def _swap(cls, module: nn.Module) -> nn.Module:
        kinds = {"_EagerConv": _PadConv, "_EagerConvTranspose": _TrimConvTranspose}
        if type(module).__name__ in kinds:
            return kinds[type(module).__name__](module)
        for name, child in module.named_children():
            setattr(module, name, cls._swap(child))
        return module

    def forward(self, latents):
        return self.model((latents * STD + MEAN).permute(0, 2, 1))


def export_onnx(setup: dict) -> Path:
    """The reference decoder as ONNX (legacy TorchScript exporter, opset 17, dynamic B and T), once per run.

    torch 2.13's dynamo exporter fails on this model (its LSTM decomposition stacks per-step outputs of
    symbolic length), so the legacy exporter it is; its tracer records Python arithmetic on the length
    as constants, hence _ExportedDecode. The export is checked at two lengths by the benchmark.
    """
    if "onnx_path" not in setup:
        need("onnx")
        path = Path(setup["workdir"]) / "decoder.onnx"
        module = _ExportedDecode(setup["decoder"]).eval()
        example = torch.randn(1, 64, setup["decoder"].config.dimension)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                str(path),
                dynamo=False,
                opset_version=17,
                input_names=["latents"],
                output_names=["audio"],
                dynamic_axes={"latents": {0: "batch", 1: "frames"}, "audio": {0: "batch", 2: "samples"}},
            )
        setup["onnx_path"] = path
    return setup["onnx_path"]


def onnxruntime_cpu(setup: dict) -> tuple[DecodeFn, str]:
    ort = need("onnxruntime")
    path = export_onnx(setup)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # idle pool threads must not spin: in one process they would steal the cores of the next implementation
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(latents):
        return torch.from_numpy(session.run(None, {"latents": latents.numpy()})[0])

    return run, f"onnxruntime {version('onnxruntime')}, CPUExecutionProvider, float32, dynamic shape"


def _openvino(setup: dict, precision: str) -> tuple[DecodeFn, str]:
    ov = need("openvino")
    path = export_onnx(setup)
    core = ov.Core()
    model = core.read_model(str(path))
    # a static input shape: under the bf16 hint this OpenVINO failed on the dynamic one (FACTS.md)
    model.reshape({"latents": list(setup["latents"].shape)})
    compiled = core.compile_model(
        model, "CPU", {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": torch.get_num_threads()}
    )
    request = compiled.create_infer_request()

    def run(latents):
        return torch.from_numpy(request.infer({"latents": latents.numpy()})[compiled.output(0)].copy())

    run.static_shape = True  # the benchmark checks other lengths only where the shape is dynamic
    return run, (
        f"openvino {version('openvino')}, CPU, INFERENCE_PRECISION_HINT={precision}, "
        f"static input shape {list(setup['latents'].shape)}"
    )


def openvino_f32(setup: dict) -> tuple[DecodeFn, str]:
    return _openvino(setup, "f32")


def openvino_bf16(setup: dict) -> tuple[DecodeFn, str]:
    return _openvino(setup, "bf16")


# jasco_fast's modes: name -> LatentDecoder keyword arguments. A new mode (e.g. a mixed-precision keyword
# another branch adds) is one line here; a keyword this LatentDecoder does not take is reported, not a crash.
MODES: dict[str, dict] = {
    "jasco_fast, backend='eager'": dict(backend="eager"),
    "jasco_fast (default)": {},
    "jasco_fast, backend='inductor'": dict(backend="inductor"),
    # the ahead-of-time artifact (built now if the cache lacks it), every call in one pass
    "jasco_fast, backend='aot', one pass": dict(backend="aot", chunk_frames=None),
    "jasco_fast, bfloat16": dict(dtype=torch.bfloat16),
    # the reduced-precision mode: bfloat16 convolutions, the LSTM's recurrent matrices streamed as int8
    "jasco_fast, bfloat16, int8 recurrent": dict(dtype=torch.bfloat16, recurrent_dtype=torch.int8),
    "jasco_fast, float32, int8 recurrent": dict(recurrent_dtype=torch.int8),
    # 12-bit integer convolutions (AVX2's vpmaddwd) with the int8 recurrence
    "jasco_fast, float32, int8 recurrent, int12 convolutions": dict(recurrent_dtype=torch.int8, conv_format="int12"),
    # the automatic mode: what this CPU class's row of jasco_fast.modes.AUTO_MODES picks
    "jasco_fast, dtype='auto'": dict(dtype="auto"),
    # float16 runs on the CPU but several times slower than float32 (docs/performance.md, "CPU peers"); its accuracy is in
    # bench_fidelity.py. Time it with:  "jasco_fast, float16": dict(dtype=torch.float16),
}
BASELINE = "jasco_fast (default)"  # every ratio is time / this mode's time in the same round


def jasco_fast_mode(kwargs: dict) -> Callable[[dict], tuple[DecodeFn, str]]:
    def build(setup: dict) -> tuple[DecodeFn, str]:
        try:
            fast = ready_decoder(setup["decoder"], **kwargs)  # artifacts built and loaded when "aot"
        except TypeError as exc:
            raise NotInstalled(f"not available in this jasco_fast ({exc})") from None
        notes = (
            f"backend {fast.backend!r}, dtype {str(fast.dtype).replace('torch.', '')}, "
            + (f"recurrent {str(fast.recurrent_dtype).replace('torch.', '')}, " if fast.recurrent_dtype else "")
            + (f"{fast.conv_format} convolutions, " if getattr(fast, "conv_format", None) else "")
            + f"chunk_frames {fast.chunk_frames}"
        )
        if fast.backend == "aot":
            notes += f", {len(fast.artifact_status())} artifacts loaded"
        return torch.no_grad()(fast), notes

    return build


PEERS: dict[str, Callable[[dict], tuple[DecodeFn, str]]] = {
    "transformers eager (what released JASCO runs)": transformers_eager,
    "transformers + torch.compile": transformers_compiled,
    "ONNX Runtime, CPU, float32": onnxruntime_cpu,
    "OpenVINO, CPU, float32": openvino_f32,
    "OpenVINO, CPU, bf16 inference hint": openvino_bf16,
    **{name: jasco_fast_mode(kwargs) for name, kwargs in MODES.items()},
}
