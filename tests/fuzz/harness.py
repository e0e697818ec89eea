"""Fuzzing the file readers: seeds in every format, mutations of them, a capped worker that runs them.

A *case* is a folder of files plus the entry to open and its kind ("checkpoint" or "latents"). Seeds
are real small files written by tests/checkpoints.py (transformers folders with model.safetensors or
pytorch_model.bin, audiocraft exports with their YAML xp.cfg, pointer files resolved through a Hugging
Face cache folder) and latent files (.npy, .pt, .safetensors). Mutations act on bytes (bit flips,
truncation, overwrites, lengths), on config.json values and types, on YAML text, on safetensors
headers, on unpickled state dicts, and replace pickles with ones that carry code.

The property, checked by :func:`check`: the worker answers with a decoder that decodes (or latents
that read), or with the documented error (CheckpointError / ValueError), within its memory and time
caps; no other exception, no crash, no hang, and no code from a pickle ever runs. A failing case is
saved in ``tests/fuzz/corpus/`` (see :func:`save_finding`), which every run replays.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
REPO = HERE.parent.parent
MARKER = "EXECUTED"  # what a code-carrying pickle would create in the case folder (the worker's cwd)
PER_CASE_SECONDS = int(os.environ.get("JASCO_FUZZ_CASE_SECONDS", "20"))
MEMORY_MB = int(os.environ.get("JASCO_FUZZ_MEMORY_MB", "1024"))

Files = dict  # relative path -> bytes


# --------------------------------------------------------------------------------------------------
# Seeds


def _folder_files(folder: Path) -> Files:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _torch_bytes(obj, legacy: bool = False) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def make_seeds(work: Path) -> dict[str, tuple[str, str, Files]]:
    """name -> (kind, entry, files) for every format."""
    import numpy as np
    from checkpoints import write_audiocraft_checkpoint, write_transformers_dir
    from safetensors.torch import load_file, save

    hf, _ = write_transformers_dir(work / "hf", seed=5)
    hf_files = _folder_files(hf)
    state = load_file(str(hf / "model.safetensors"))
    ac, _ = write_audiocraft_checkpoint(work / "ac" / "compression_state_dict.bin", seed=6)
    ac_pkg = torch.load(ac, weights_only=True)
    snapshot = "hub/models--facebook--encodec_32khz/snapshots/0123abcd/"
    latents = torch.randn(2, 5, 8)
    codes = torch.randint(0, 16, (2, 4, 5))  # [B, K, T] for a quantizer of 6 codebooks of 16 (tests' TINY_HF)
    return {
        "hf_safetensors": ("checkpoint", ".", hf_files),
        "hf_bin": (
            "checkpoint",
            ".",
            {"config.json": hf_files["config.json"], "pytorch_model.bin": _torch_bytes(state)},
        ),
        "hf_bin_legacy": (
            "checkpoint",
            ".",
            {"config.json": hf_files["config.json"], "pytorch_model.bin": _torch_bytes(state, legacy=True)},
        ),
        "audiocraft": (
            "checkpoint",
            "compression_state_dict.bin",
            {"compression_state_dict.bin": _torch_bytes(ac_pkg)},
        ),
        "audiocraft_legacy": (
            "checkpoint",
            "compression_state_dict.bin",
            {"compression_state_dict.bin": _torch_bytes(ac_pkg, legacy=True)},
        ),
        "pointer": (
            "checkpoint",
            "compression_state_dict.bin",
            {
                "compression_state_dict.bin": _torch_bytes(
                    {"pretrained": "facebook/encodec_32khz", "exported": True, "version": "1.3.0"}
                ),
                snapshot + "config.json": hf_files["config.json"],
                snapshot + "model.safetensors": hf_files["model.safetensors"],
                "hub/models--facebook--encodec_32khz/refs/main": b"0123abcd",
            },
        ),
        "latents_npy": ("latents", "x.npy", {"x.npy": _npy_bytes(np, latents.numpy())}),
        "latents_pt": ("latents", "x.pt", {"x.pt": _torch_bytes({"latents": latents})}),
        "latents_pt_legacy": ("latents", "x.pt", {"x.pt": _torch_bytes(latents[0], legacy=True)}),
        "latents_safetensors": ("latents", "x.safetensors", {"x.safetensors": save({"latents": latents})}),
        # EnCodec codes: integer files, told apart from latents by dtype (what `jasco-fast decode` does)
        "codes_npy": ("latents", "c.npy", {"c.npy": _npy_bytes(np, codes.numpy())}),
        "codes_pt": ("latents", "c.pt", {"c.pt": _torch_bytes({"codes": codes.to(torch.int32)})}),
        "codes_safetensors": ("latents", "c.safetensors", {"c.safetensors": save({"codes": codes})}),
    }


def _npy_bytes(np, array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# Mutations: pure functions of (files, parameters drawn by hypothesis) -> files


def mutate_bytes(data: bytes, ops: list[tuple]) -> bytes:
    """ops: ("flip", pos, bit) | ("truncate", pos) | ("overwrite", pos, bytes) | ("insert", pos, bytes) |
    ("delete", pos, n) | ("u64", pos, value): positions are taken modulo the length."""
    buf = bytearray(data)
    for op in ops:
        if not buf:
            break
        pos = op[1] % len(buf)
        if op[0] == "flip":
            buf[pos] ^= 1 << op[2]
        elif op[0] == "truncate":
            del buf[pos:]
        elif op[0] == "overwrite":
            buf[pos : pos + len(op[2])] = op[2]
        elif op[0] == "insert":
            buf[pos:pos] = op[2]
        elif op[0] == "delete":
            del buf[pos : pos + op[2]]
        elif op[0] == "u64":
            buf[pos : pos + 8] = struct.pack("<Q", op[2] % 2**64)
    return bytes(buf)


def mutate_json(data: bytes, edits: list[tuple]) -> bytes:
    """edits: ("set", key, value) | ("delete", key) | ("replace", document)."""
    doc = json.loads(data)
    for edit in edits:
        if edit[0] == "replace":
            doc = edit[1]
        elif isinstance(doc, dict) and edit[0] == "set":
            doc[edit[1]] = edit[2]
        elif isinstance(doc, dict):
            doc.pop(edit[1], None)
    return json.dumps(doc).encode()


def mutate_yaml(text: str, edits: list[tuple]) -> str:
    """edits: ("value", key, yaml snippet) sets the first ``key:`` line's value | ("text", pos, cut, insert)."""
    for edit in edits:
        if edit[0] == "value":
            text = re.sub(
                rf"^(\s*{re.escape(edit[1])}:).*$", lambda m: f"{m.group(1)} {edit[2]}", text, count=1, flags=re.M
            )
        else:
            pos = edit[1] % (len(text) + 1)
            text = text[:pos] + edit[3] + text[pos + edit[2] :]
    return text


def mutate_safetensors_header(data: bytes, edits: list[tuple]) -> bytes:
    """edits on the JSON header: ("field", entry index, field, value) | ("drop", index) | ("add", name,
    entry) | ("length", value): the last rewrites the 8-byte header length without touching the rest."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    body = data[8 + length :]
    forced_length = None
    names = [k for k in header if k != "__metadata__"]
    for edit in edits:
        if edit[0] == "field" and names:
            entry = header.get(names[edit[1] % len(names)])
            if isinstance(entry, dict):
                entry[edit[2]] = edit[3]
        elif edit[0] == "drop" and names:
            header.pop(names[edit[1] % len(names)], None)
        elif edit[0] == "add":
            header[edit[1]] = edit[2]
        elif edit[0] == "length":
            forced_length = edit[1] % 2**64
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if forced_length is None else forced_length) + raw + body


def mutate_state(data: bytes, edits: list[tuple], legacy: bool) -> bytes:
    """Structural edits of a torch-saved dict (a state dict, an audiocraft package, latents), re-saved:
    ("value", key index, replacement) | ("delete", key index) | ("add", key, value) | ("xp.cfg", text)."""
    obj = torch.load(io.BytesIO(data), weights_only=True)
    if not isinstance(obj, dict):
        obj = {"latents": obj}
    target = obj["best_state"] if isinstance(obj.get("best_state"), dict) else obj
    for edit in edits:
        keys = list(target)
        if edit[0] == "value" and keys:
            key = keys[edit[1] % len(keys)]
            target[key] = _replacement(target[key], edit[2])
        elif edit[0] == "delete" and keys:
            target.pop(keys[edit[1] % len(keys)])
        elif edit[0] == "add":
            target[edit[1]] = edit[2]
        elif edit[0] == "xp.cfg" and "xp.cfg" in obj:
            obj["xp.cfg"] = edit[1]
    return _torch_bytes(obj, legacy=legacy)


def _replacement(value, how):
    """A replacement for a tensor: another dtype or shape, sparse, strided oddly, or not a tensor."""
    if not isinstance(how, str):
        return how  # a plain value drawn by hypothesis
    if not isinstance(value, torch.Tensor):
        return value
    if how == "int":
        return value.to(torch.int64)
    if how == "half":
        return value.half()
    if how == "bfloat16":
        return value.bfloat16()
    if how == "float64":
        return value.double()
    if how == "complex":
        return value.to(torch.complex64)
    if how == "sparse":
        return value.reshape(-1).to_sparse()
    if how == "scalar":
        return value.reshape(-1)[:1].reshape(())
    if how == "transpose" and value.dim() >= 2:
        return value.transpose(0, -1)  # saved non-contiguous
    if how == "flatten":
        return value.reshape(-1)
    if how == "grow":
        return torch.cat([value.reshape(-1), value.reshape(-1)])
    if how == "nan":
        return torch.full_like(value, float("nan")) if value.is_floating_point() else value
    if how == "empty":
        return value.reshape(-1)[:0]
    if how == "meta":
        return torch.empty(value.shape, dtype=value.dtype, device="meta")
    return value


def deflate_zip(data: bytes, zeros: int) -> bytes:
    """The zip-format torch file ``data`` re-packed with deflate, plus an extra record of ``zeros`` zero
    bytes (0: a legitimately compressed file, which loads; large: a zip bomb, which must be refused)."""
    import zipfile

    try:
        source = zipfile.ZipFile(io.BytesIO(data))
        records = [(info.filename, source.read(info.filename)) for info in source.infolist()]
    except Exception:
        return data  # not a zip (legacy format)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in records:
            archive.writestr(name, content)
        if zeros and records:
            archive.writestr(records[0][0].split("/")[0] + "/padding", bytes(zeros))
    return out.getvalue()


class _CodeCarrier:
    """Unpickling runs ``call(*args)``: what a malicious checkpoint would do."""

    def __init__(self, call, args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def code_pickle(how: str, as_torch: bool) -> bytes:
    """A pickle that, if unpickled without weights_only, creates the file MARKER in the current folder
    (the worker runs each case inside its folder)."""
    import builtins

    marker = MARKER
    calls = {
        "open": (builtins.open, (marker, "w")),
        "system": (os.system, (f"touch {marker}",)),
        "exec": (builtins.exec, (f"open({marker!r}, 'w')",)),
        "subprocess": (subprocess.call, (["touch", marker],)),
    }
    call, args = calls[how]
    payload = {"best_state": {}, "xp.cfg": "", "pretrained": _CodeCarrier(call, args)}
    if as_torch:
        return _torch_bytes(payload)
    return pickle.dumps(payload, protocol=2)


# --------------------------------------------------------------------------------------------------
# Running cases


class Worker:
    """The capped subprocess (tests/fuzz/worker.py), restarted after a crash or a hang."""

    def __init__(self):
        self.proc = None
        self.started = 0

    def _start(self):
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "worker.py"),
                "--memory-mb",
                str(MEMORY_MB),
                "--seconds",
                str(PER_CASE_SECONDS),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.started += 1
        ready = self._read(120)
        if not ready or not ready.get("ready"):  # None (silent) or {"eof": True} (died)
            raise RuntimeError(f"the fuzz worker did not start: {ready}")

    def _read(self, seconds: float):
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(seconds):
            return None  # no answer in time
        line = self.proc.stdout.readline()
        return json.loads(line) if line else {"eof": True}

    def run(self, case: dict) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.proc.stdin.write(json.dumps(case) + "\n")
        self.proc.stdin.flush()
        answer = self._read(PER_CASE_SECONDS + 30)  # the worker's own alarm fires first unless C code hangs
        if answer is None:
            self.proc.kill()
            self.proc.wait()
            answer = {"outcome": "hang", "message": "no answer (stuck outside Python?)"}
            self.proc = None
        elif answer.get("eof"):
            answer = {"outcome": "crash", "message": f"worker died with exit status {self.proc.wait()}"}
            self.proc = None
        return answer

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def write_case(root: Path, files: Files) -> Path:
    folder = Path(tempfile.mkdtemp(dir=root))
    for rel, data in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def run(worker: Worker, root: Path, kind: str, entry: str, files: Files) -> tuple[dict, Path]:
    folder = write_case(root, files)
    answer = worker.run({"dir": str(folder), "kind": kind, "entry": entry})
    answer["code_ran"] = (folder / MARKER).exists()
    return answer, folder


def check(answer: dict, kind: str) -> str | None:
    """None when the property holds, else what went wrong."""
    if answer.get("code_ran"):
        return "a pickle's code ran"
    ok = {"checkpoint": ("decoder", "refused"), "latents": ("latents", "refused")}[kind]
    if answer["outcome"] not in ok:
        return (
            f"{answer['outcome']}: {answer.get('type', '')}: {answer.get('message', '')}\n{answer.get('traceback', '')}"
        )
    documented = {"checkpoint": "CheckpointError", "latents": "ValueError"}[kind]
    if answer["outcome"] == "refused" and answer["type"] != documented and kind == "checkpoint":
        return f"refused with {answer['type']}, not {documented}"
    return None


def save_finding(kind: str, entry: str, files: Files, problem: str, corpus: Path = CORPUS) -> Path:
    """Store a failing case in the corpus, where every later run replays it (JSON: files base64-coded)."""
    record = {
        "kind": kind,
        "entry": entry,
        "problem": problem.splitlines()[0][:300],
        "files": {rel: base64.b64encode(data).decode() for rel, data in sorted(files.items())},
    }
    text = json.dumps(record, indent=1)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    corpus.mkdir(parents=True, exist_ok=True)
    path = corpus / f"{kind}-{digest}.json"
    path.write_text(text)
    return path


def load_corpus(corpus: Path = CORPUS) -> list[tuple[str, str, str, Files]]:
    """(name, kind, entry, files) of every stored case."""
    cases = []
    for path in sorted(corpus.glob("*.json")):
        record = json.loads(path.read_text())
        files = {rel: base64.b64decode(data) for rel, data in record["files"].items()}
        cases.append((path.name, record["kind"], record["entry"], files))
    return cases


def replay(paths: list[str]) -> None:
    """Run stored cases and print each answer with its traceback: python tests/fuzz/harness.py FILE..."""
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    worker = Worker()
    with tempfile.TemporaryDirectory() as root:
        for path in paths:
            record = json.loads(Path(path).read_text())
            files = {rel: base64.b64decode(data) for rel, data in record["files"].items()}
            answer, _ = run(worker, Path(root), record["kind"], record["entry"], files)
            print(f"{path}: {check(answer, record['kind']) or 'property holds'}\n{json.dumps(answer, indent=1)}")
    worker.close()


if __name__ == "__main__":
    replay(sys.argv[1:])


__all__ = [
    "Worker",
    "make_seeds",
    "mutate_bytes",
    "mutate_json",
    "mutate_yaml",
    "mutate_safetensors_header",
    "mutate_state",
    "code_pickle",
    "run",
    "check",
    "save_finding",
    "load_corpus",
]
