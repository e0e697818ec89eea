"""`make wheel` / `make wheel-cuda`: the repaired wheel is one cp310-abi3 manylinux_2_28 x86_64 file whose binary needs
nothing newer than manylinux_2_28 and no library beyond that policy's but torch's and CUDA's own.

    python .ci/check_wheel.py dist/cpu/*.whl        (auditwheel on PATH)

`auditwheel show` reports such a wheel's overall tag as linux_x86_64: it has no --exclude, so the torch libraries
that `repair --exclude` rightly left out count against it. This check reads its JSON instead: the tag its symbol
versions allow (`sym_tag`) and the external libraries, which must be torch's (the installed torch provides them).
"""

import json
import re
import subprocess
import sys
import zipfile

# The libraries the extension links and the installed torch provides (setup.py; auditwheel repair --exclude).
TORCH_LIBS = {"libc10.so", "libtorch.so", "libtorch_cpu.so", "libtorch_cuda.so", "libc10_cuda.so", "libcudart.so.13"}
POLICY = (2, 28)


def fail(message: str) -> None:
    sys.exit(f"check_wheel: {message}")


(wheel,) = sys.argv[1:]
name = wheel.rsplit("/", 1)[-1]
if not re.search(r"-cp310-abi3-(\S+\.)?manylinux_2_28_x86_64(\.\S+)?\.whl$", name):
    fail(f"{name} is not tagged cp310-abi3 ... manylinux_2_28_x86_64")
binaries = [n for n in zipfile.ZipFile(wheel).namelist() if ".so" in n.rsplit("/", 1)[-1]]
if binaries != ["jasco_fast/_C.abi3.so"]:
    fail(f"the wheel's shared libraries are {binaries}, not jasco_fast/_C.abi3.so alone (nothing vendored)")
shown = subprocess.run(["auditwheel", "show", "--json", wheel], capture_output=True, text=True, check=True)
report = json.loads(shown.stdout)
sym = re.fullmatch(r"manylinux_(\d+)_(\d+)_x86_64", report["sym_tag"])
if not sym or (int(sym[1]), int(sym[2])) > POLICY:
    fail(f"its symbol versions need {report['sym_tag']}, newer than manylinux_2_28: {report['versioned_symbols']}")
others = set(report["external_libs"]) - TORCH_LIBS
if others:
    fail(f"it needs libraries outside the manylinux_2_28 policy that torch does not provide: {sorted(others)}")
print(
    f"check_wheel: {name}: symbol versions allow {report['sym_tag']}; beyond the policy's libraries it needs only "
    f"torch's ({', '.join(sorted(report['external_libs']))})"
)
