"""What the benchmark scripts share: the device's name and writing the results file."""
from __future__ import annotations

import json
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"CPU ({torch.get_num_threads()} threads)"


def write_result(result: dict, name: str, device: str, quick: bool, out: Path | None) -> Path:
    """benchmarks/results/<name>_<device>[_quick].json unless `out` is given."""
    path = out or RESULTS / f"{name}_{device}{'_quick' if quick else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return path
