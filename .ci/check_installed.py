"""CI: the jasco_fast under test is the installed wheel, its compiled extension serves this torch, and (with
--cuda-kernels) its CUDA kernels are registered.

Run with the environment's python as a script (the script's folder, not the source tree, goes on sys.path):
    python .ci/check_installed.py --torch 2.14.1 [--cuda-kernels]
"""

import argparse
import sys
import warnings
from pathlib import Path

import torch

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import jasco_fast
    from jasco_fast import extension, ops

SOURCE_TREE = Path(__file__).resolve().parent.parent


def fail(message: str) -> None:
    sys.exit(f"check_installed: {message}")


parser = argparse.ArgumentParser()
parser.add_argument("--torch", required=True, help="the torch version this environment must have")
parser.add_argument("--cuda-kernels", action="store_true", help="the CUDA kernels must be registered")
args = parser.parse_args()

if torch.__version__.split("+")[0] != args.torch:
    fail(f"torch {torch.__version__} is installed, not {args.torch}")
where = Path(jasco_fast.__file__).resolve().parent
if where == SOURCE_TREE / "jasco_fast" or "site-packages" not in where.parts:
    fail(f"jasco_fast was imported from {where}, not from an installed wheel")
if not extension.STATUS.loaded:
    fail(f"the compiled extension did not load: {extension.STATUS.reason}")
if any(issubclass(w.category, extension.ExtensionWarning) for w in caught):
    fail("importing jasco_fast warned that its kernels are not loaded")
if not extension.STATUS.path.endswith(".abi3.so"):
    fail(f"{extension.STATUS.path} is not a limited-API (abi3) build")
keys = ("CPU", "CUDA") if args.cuda_kernels else ("CPU",)
if args.cuda_kernels and not torch.version.cuda:
    fail(f"torch {torch.__version__} is not a CUDA build")
for op in ("jasco_fast::denorm_transpose", "jasco_fast::codes_to_latents"):
    for key in keys:
        if not torch._C._dispatch_has_kernel_for_dispatch_key(op, key):
            fail(f"{op} has no {key} kernel in {where}")
for op in ("jasco_fast::elu_resblock", "jasco_fast::elu_conv", "jasco_fast::elu_conv_transpose"):
    if not torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU"):
        fail(f"{op} has no CPU kernel in {where}")
# lstm_skip and lstm_pack are device-generic C++ kernels; a PyTorch fallback registers only where they are missing
for op in ("jasco_fast::lstm_skip", "jasco_fast::lstm_pack"):
    if op in ops.FALLBACKS or not torch._C._dispatch_has_kernel_for_dispatch_key(op, "CompositeExplicitAutograd"):
        fail(f"{op} has no compiled kernel in {where}")
print(
    f"check_installed: torch {torch.__version__}, jasco_fast from {where} ({Path(extension.STATUS.path).name}): "
    f"{' and '.join(keys)} kernels registered"
)
