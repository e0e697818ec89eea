"""The fuzz worker: a subprocess that reads cases one per stdin line and answers one JSON line each.

It runs under a memory cap (``RLIMIT_AS``, set once the imports are done: the address space they use
plus ``--memory-mb``) and gives each case ``--seconds`` (SIGALRM raises ``CaseTimeout``, a
BaseException, so no ``except Exception`` in the code under test can swallow it; a hang in C code
that never returns to Python is caught by the parent's wall clock instead).

A case: ``{"dir": folder, "kind": "checkpoint" | "latents", "entry": path inside the folder}``.
The answer: ``{"outcome": "decoder" | "latents" | "refused" | "unexpected" | "timeout", "type",
"message", "traceback"}``. "refused" means the documented error (CheckpointError for checkpoints,
ValueError for latents); "unexpected" is any other exception, or a decoder that does not decode.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
import traceback
from pathlib import Path


class CaseTimeout(BaseException):
    pass


def _on_alarm(signum, frame):
    raise CaseTimeout()


def run_case(case: dict) -> dict:
    import torch

    from jasco_fast.io import is_codes, load_tensor, read_codes, read_latents
    from jasco_fast.loading import CheckpointError, load_decoder

    if case["kind"] == "selftest":  # proves the caps hold: see test_fuzz.test_worker_caps
        if case["action"] == "allocate":
            bytearray(case["bytes"])
        elif case["action"] == "sleep":
            import time

            time.sleep(case["seconds_to_sleep"])
        elif case["action"] == "abort":
            os.abort()
        return {"outcome": "selftest done"}
    folder = Path(case["dir"])
    entry = folder / case["entry"]
    os.chdir(folder)  # where a code-carrying pickle, were it ever run, would leave its marker
    # a pointer file resolves in the case's own Hugging Face cache, never the machine's
    os.environ["HF_HUB_CACHE"] = str(folder / "hub")
    os.environ["HF_HOME"] = str(folder / "hf_home")
    if case["kind"] == "checkpoint":
        try:
            decoder = load_decoder(entry)
        except CheckpointError as exc:
            return {"outcome": "refused", "type": type(exc).__name__, "message": str(exc)[:400]}
        with torch.no_grad():  # a decoder that loads must decode
            audio = decoder(torch.randn(2, decoder.dimension, 3))
        if tuple(audio.shape) != (2, decoder.channels, 3 * decoder.hop_length) or not torch.isfinite(audio).all():
            raise AssertionError(f"loaded decoder gives audio of shape {list(audio.shape)}")
        return {"outcome": "decoder"}
    # an input file as `jasco-fast decode` reads it: one tensor, then latents (float) or codes (integer)
    try:
        tensor = load_tensor(entry)
        if is_codes(tensor):
            codes, _ = read_codes(entry, tensor, case.get("codebooks", 6), case.get("codebook_size", 16))
        else:
            latents, _ = read_latents(entry, case.get("dimension", 8), tensor)
    except ValueError as exc:
        return {"outcome": "refused", "type": type(exc).__name__, "message": str(exc)[:400]}
    if is_codes(tensor):
        if codes.dtype != torch.int64 or codes.dim() != 3 or codes.min() < 0 or codes.max() >= 16:
            raise AssertionError(f"read_codes returned {codes.dtype} {list(codes.shape)}")
        return {"outcome": "latents"}
    if latents.dtype != torch.float32 or latents.dim() != 3 or not torch.isfinite(latents).all():
        raise AssertionError(f"read_latents returned {latents.dtype} {list(latents.shape)}")
    return {"outcome": "latents"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--memory-mb", type=int, default=1024)
    parser.add_argument("--seconds", type=int, default=20)
    args = parser.parse_args()

    import numpy  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch
    import yaml  # noqa: F401

    import jasco_fast.cli  # noqa: F401  (all imports before the cap)
    import jasco_fast.loading  # noqa: F401

    torch.set_num_threads(1)  # the cap counts address space; every extra thread's stack is some
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * resource.getpagesize()
    cap = used + args.memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    signal.signal(signal.SIGALRM, _on_alarm)
    print(json.dumps({"ready": True, "cap_mb": cap // 2**20}), flush=True)
    for line in sys.stdin:
        case = json.loads(line)
        signal.alarm(case.get("seconds", args.seconds))
        try:
            answer = run_case(case)
        except CaseTimeout:
            answer = {"outcome": "timeout", "type": "CaseTimeout", "message": f"over {args.seconds} s"}
        except BaseException as exc:  # noqa: BLE001 - the finding itself
            answer = {
                "outcome": "unexpected",
                "type": type(exc).__name__,
                "message": str(exc)[:400],
                "traceback": traceback.format_exc()[-3000:],
            }
        finally:
            signal.alarm(0)
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
