"""`make wheel` / `make wheel-cuda`: the repaired wheel is one cp310-abi3 manylinux_2_28 x86_64 file holding one shared
library, which `auditwheel show` finds consistent with manylinux_2_28 (or an older, more compatible policy) and which
needs no library outside the policy (torch's functions are reached through stubs: csrc/torch_symbols.cpp).

    python .ci/check_wheel.py dist/cpu/*.whl        (auditwheel on PATH)
"""

import json
import re
import subprocess
import sys
import zipfile

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
if report["external_libs"]:
    fail(f"it needs libraries outside the manylinux policy: {sorted(report['external_libs'])}")
tag = re.fullmatch(r"manylinux_(\d+)_(\d+)_x86_64", report["overall_tag"])
if not tag or (int(tag[1]), int(tag[2])) > POLICY:
    fail(f"auditwheel show: {report['overall_tag']}, not manylinux_2_28 or older: {report['versioned_symbols']}")
print(f"check_wheel: {name}: auditwheel show finds it consistent with {report['overall_tag']}")
