"""CI: the package installed in the CUDA environment is the one under test and has its CUDA kernels.

Run with that environment's python as a script (the script's folder, not the source tree, goes on sys.path).
"""

import sys
from pathlib import Path

import torch

import jasco_fast

SOURCE_TREE = Path(__file__).resolve().parent.parent


def fail(message: str) -> None:
    sys.exit(f"check_cuda_build: {message}")


if not torch.version.cuda:
    fail(f"torch {torch.__version__} is not a CUDA build")
where = Path(jasco_fast.__file__).resolve()
if where.parent == SOURCE_TREE / "jasco_fast":
    fail(f"jasco_fast was imported from the source tree ({where}), not from the installed package")
OPS_WITH_DEVICE_KERNELS = ("jasco_fast::denorm_transpose", "jasco_fast::codes_to_latents")
for op in OPS_WITH_DEVICE_KERNELS:
    for key in ("CPU", "CUDA"):
        if not torch._C._dispatch_has_kernel_for_dispatch_key(op, key):
            fail(f"{op} has no {key} kernel in {where.parent}")
print(
    f"check_cuda_build: torch {torch.__version__} (CUDA {torch.version.cuda}), jasco_fast from {where.parent}: "
    f"CPU and CUDA kernels of {', '.join(OPS_WITH_DEVICE_KERNELS)} registered"
)
