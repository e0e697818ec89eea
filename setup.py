"""Builds jasco_fast._C: the CPU kernels always; the CUDA kernels when torch is a CUDA build and nvcc exists.

    pip install --no-build-isolation .        # against the torch already installed; no environment needed
    python -m build --wheel --no-isolation    # a cp310-abi3 wheel (`make wheel` also repairs and checks it)

The extension uses only PyTorch's stable ABI (TORCH_TARGET_VERSION = jasco_fast/extension.py's TORCH_TARGET) and
Python's limited API, so one build loads in that torch and every later one, on every CPython >= 3.10; it links no
torch library (stub_linking_build_ext), so its wheel is manylinux_2_28.

The CUDA toolchain is found without help (see `find_cuda_home`, `torch_cuda_wheel_dirs`): CUDA_HOME (or
CUDA_PATH) when set, else the folder of the toolkit that nvcc belongs to, and the include/lib folders of the
nvidia-* wheels that the installed torch depends on (torch's CUDA headers include cuSPARSE/cuBLAS headers,
which a bare toolkit may lack). Knobs: JASCO_FAST_NO_CUDA=1 builds the CPU kernels only;
TORCH_CUDA_ARCH_LIST picks the GPU architectures (default "8.0;9.0": A100, H100/H200).
On a ROCm torch the CUDA sources are not built (see docs/gpu.md).
"""

import ast
import glob
import os
import shutil
import subprocess
import sys

import torch
from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
RUNTIME_HEADER = os.path.join("include", "cuda_runtime_api.h")
DEFAULT_CUDA_HOME = "/usr/local/cuda"


PY_LIMITED_API = "cp310"  # as pyproject.toml's requires-python


def torch_target():
    """(major, minor) of jasco_fast/extension.py's TORCH_TARGET, read without importing the package."""
    tree = ast.parse(open(os.path.join(HERE, "jasco_fast", "extension.py")).read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "TORCH_TARGET":
            return ast.literal_eval(node.value)
    raise RuntimeError("jasco_fast/extension.py defines no TORCH_TARGET")


# The libraries torch's cpp_extension links an extension against; this one reaches them through stubs instead
# (csrc/torch_symbols.cpp).
TORCH_LIBRARIES = {"c10", "torch", "torch_cpu", "torch_python", "c10_cuda", "torch_cuda", "cudart"}


def undefined_symbols(objects):
    """The symbols the object files use and do not define (nm)."""
    listed = subprocess.run(["nm", "-u", "--format=just-symbols", *objects], capture_output=True, text=True, check=True)
    defined = subprocess.run(
        ["nm", "--defined-only", "--format=just-symbols", *objects], capture_output=True, text=True, check=True
    )
    return sorted(set(listed.stdout.split()) - set(defined.stdout.split()))


# The functions reached through stubs: torch's stable C ABI, the OpenMP and CUDA runtimes torch loads, and whatever
# else torch's libraries define that the objects call (a classic link binds those to torch as well: e.g. the
# libstdc++ functions newer than manylinux_2_28 that torch carries, such as std::__throw_bad_array_new_length).
TORCH_SYMBOL_PREFIXES = ("aoti_torch_", "torch_", "GOMP_", "omp_", "cuda", "__cuda")
TORCH_SHARED_LIBRARIES = ("libc10.so", "libtorch_cpu.so", "libtorch.so", "libtorch_cuda.so", "libc10_cuda.so")


def torch_functions():
    """The functions torch's own libraries define (nm -D: text symbols)."""
    folder = os.path.join(os.path.dirname(torch.__file__), "lib")
    libraries = [os.path.join(folder, name) for name in TORCH_SHARED_LIBRARIES]
    listed = subprocess.run(
        ["nm", "-D", "--defined-only", *(lib for lib in libraries if os.path.exists(lib))],
        capture_output=True,
        text=True,
        check=True,
    )
    return {
        fields[2] for fields in map(str.split, listed.stdout.splitlines()) if len(fields) == 3 and fields[1] in "TWi"
    }


def write_torch_stubs(symbols, folder):
    """torch_stubs.S (a hidden `jmp *slot` per symbol) and torch_stub_table.cpp (names and slots), for
    csrc/torch_symbols.cpp to fill at load."""
    os.makedirs(folder, exist_ok=True)
    asm = ["    .text"]
    for i, name in enumerate(symbols):
        asm += [
            f"    .globl {name}",
            f"    .hidden {name}",
            f"    .type {name}, @function",
            f"{name}:",
            f"    jmp *jasco_fast_torch_symbol_slots+{8 * i}(%rip)",
            f"    .size {name}, .-{name}",
        ]
    asm.append('    .section .note.GNU-stack,"",@progbits')
    table = [
        "#include <cstdint>",
        'extern "C" {',
        '__attribute__((visibility("hidden"))) extern const char* const jasco_fast_torch_symbol_names[] = {',
        *(f'    "{name}",' for name in symbols),
        "};",
        f'__attribute__((visibility("hidden"))) void* jasco_fast_torch_symbol_slots[{max(len(symbols), 1)}];',
        f'__attribute__((visibility("hidden"))) extern const int64_t jasco_fast_torch_symbol_count = {len(symbols)};',
        "}",
    ]
    paths = os.path.join(folder, "torch_stubs.S"), os.path.join(folder, "torch_stub_table.cpp")
    for path, lines in zip(paths, (asm, table)):
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
    return paths


def rel(pattern):
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


def warn(message):
    print(f"\nWARNING (jasco_fast build): {message}\n", file=sys.stderr, flush=True)


def _toolkit_of_nvcc(nvcc):
    """Toolkit folders nvcc may belong to: beside its real path (symlinks resolved), then the TOP that nvcc
    itself reports (it may be a wrapper script in another folder, e.g. /usr/local/bin/nvcc), then the
    conventional place."""
    yield os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    try:  # a dry run prints nvcc's settings, among them `#$ TOP=<toolkit>/bin/..`; it compiles nothing
        dry = subprocess.run(
            [nvcc, "--dryrun", "-E", "-x", "cu", os.devnull, "-o", os.devnull],
            capture_output=True,
            text=True,
            timeout=60,
        )
        for line in (dry.stdout + dry.stderr).splitlines():
            if line.startswith("#$ TOP="):
                yield os.path.realpath(line.split("=", 1)[1].strip())
    except (OSError, subprocess.SubprocessError):
        pass
    yield DEFAULT_CUDA_HOME


def find_cuda_home():
    """The CUDA toolkit folder (the one holding include/cuda_runtime_api.h), or None when there is no nvcc."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]  # the user's word; a wrong one fails loudly in the compiler
    default_nvcc = os.path.join(DEFAULT_CUDA_HOME, "bin", "nvcc")
    nvcc = shutil.which("nvcc") or (default_nvcc if os.access(default_nvcc, os.X_OK) else None)
    if nvcc is None:
        return None
    for home in _toolkit_of_nvcc(nvcc):
        if os.path.isfile(os.path.join(home, RUNTIME_HEADER)) and os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return home
    return None


def torch_cuda_wheel_dirs():
    """(include folders, library folders) of the nvidia-*/cuda-* wheels that the installed torch depends on,
    followed through their own dependencies (torch -> cuda-toolkit[cublas,...] -> nvidia-cublas, ...)."""
    from importlib import metadata

    try:
        from packaging.requirements import Requirement
        from packaging.utils import canonicalize_name
    except ImportError:  # setuptools carries its own copy
        from setuptools._vendor.packaging.requirements import Requirement
        from setuptools._vendor.packaging.utils import canonicalize_name

    includes, libs, seen = [], [], set()
    todo = [("torch", frozenset())]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for text in dist.requires or []:
            req = Requirement(text)
            dep = canonicalize_name(req.name)
            if not dep.startswith(("nvidia-", "cuda-")):
                continue
            if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
                continue
            todo.append((dep, frozenset(req.extras)))
        if name == "torch":
            continue
        for f in dist.files or []:
            parts = f.parts
            if "include" in parts[:-1] and f.name.endswith((".h", ".hpp", ".cuh")):
                folder = str(dist.locate_file(os.path.join(*parts[: parts.index("include") + 1])))
                if folder not in includes:
                    includes.append(folder)
            elif ".so" in f.name and len(parts) > 1 and parts[-2] in ("lib", "lib64"):
                folder = str(dist.locate_file(os.path.join(*parts[:-1])))
                if folder not in libs:
                    libs.append(folder)
    return includes, libs


def cuda_plan():
    """(build the CUDA kernels?, CUDA_HOME). Decided on torch's build, not torch.cuda.is_available(): a
    GPU-less build box with a CUDA torch (CI) still builds them."""
    if os.environ.get("JASCO_FAST_NO_CUDA") == "1":
        return False, None
    if getattr(torch.version, "hip", None):
        warn(
            f"torch {torch.__version__} is a ROCm build: the CUDA kernels are not compiled for HIP; AMD GPUs "
            f"run the op's PyTorch implementation. Building the CPU kernels only."
        )
        return False, None
    if not torch.version.cuda:
        return False, None
    home = find_cuda_home()
    if home is None:
        nvcc = shutil.which("nvcc")
        why = (
            "nvcc was not found"
            if nvcc is None
            else f"{nvcc} belongs to no toolkit folder holding {RUNTIME_HEADER} and bin/nvcc"
        )
        warn(
            f"torch {torch.__version__} is a CUDA {torch.version.cuda} build but {why}: building the CPU "
            f"kernels only (CUDA tensors use the op's PyTorch implementation). For the CUDA kernels install "
            f"the CUDA {torch.version.cuda} toolkit or set CUDA_HOME to it, then rebuild."
        )
        return False, None
    return True, home


def stub_linking_build_ext(base):
    """torch's BuildExtension, linking against no torch library: the stubs of write_torch_stubs reach the functions
    the objects call from torch and from the OpenMP and CUDA runtimes it loads, so the library needs only libstdc++,
    libgcc_s, libm and libc (manylinux_2_28)."""

    class BuildExtension(base):
        def build_extension(self, ext):
            link = self.compiler.link_shared_object

            def link_without_torch(objects, output, *args, libraries=None, **kwargs):
                functions = torch_functions()
                wanted = [
                    s for s in undefined_symbols(objects) if s.startswith(TORCH_SYMBOL_PREFIXES) or s in functions
                ]
                folder = os.path.join(self.build_temp, "torch_stubs")
                stub_objects = []
                for source in write_torch_stubs(wanted, folder):
                    obj = source + ".o"
                    compile_args = ["-c", "-fPIC", source, "-o", obj]
                    cxx = os.environ.get("CXX", "c++")
                    subprocess.run([cxx, *compile_args], check=True)
                    stub_objects.append(obj)
                libraries = [lib for lib in libraries or [] if lib not in TORCH_LIBRARIES]
                print(f"jasco_fast build: {len(wanted)} torch functions through stubs, no torch library linked")
                return link(objects + stub_objects, output, *args, libraries=libraries, **kwargs)

            self.compiler.link_shared_object = link_without_torch
            try:
                return super().build_extension(ext)
            finally:
                self.compiler.link_shared_object = link

    return BuildExtension


def main():
    with_cuda, cuda_home = cuda_plan()
    if with_cuda:
        # torch's cpp_extension guesses CUDA_HOME from nvcc's folder at import time: decide it before the import.
        os.environ["CUDA_HOME"] = cuda_home
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    from torch.utils import cpp_extension

    if with_cuda:
        cpp_extension.CUDA_HOME = cuda_home  # in case something imported cpp_extension before us

    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    major, minor = torch_target()
    defines = [
        # the stable ABI of that torch and no later one: the binary loads in it and every later torch
        f"-DTORCH_TARGET_VERSION=0x{major:02x}{minor:02x}000000000000",
        "-DPy_LIMITED_API=0x030A0000",  # cp310-abi3
        # see csrc/registration.cpp: keeps the binary within glibc 2.28 (manylinux_2_28)
        "-D__libc_single_threaded=jasco_fast_libc_single_threaded",
    ]
    # OpenMP on compile only (the LSTM kernel's own threads): its GOMP_* / omp_* symbols resolve to the libgomp.so.1
    # that torch's libtorch_cpu loads (torch/lib in torch's wheels), so the process keeps one OpenMP runtime and the
    # wheel no dependency to vendor. -ffp-contract=off: no fused multiply-add, so `x * std + mean` rounds twice,
    # bit-exact with the eager expression on every architecture (GCC contracts a*b+c on aarch64 and with -mfma by
    # default). C++17: C++20's library additions would need a newer libstdc++ than manylinux_2_28's.
    extra_compile_args = {"cxx": ["-O3", "-std=c++17", "-fopenmp", "-ffp-contract=off", *defines]}
    extra_link_args = []
    include_dirs, library_dirs = [], []

    if with_cuda:
        sources += rel("csrc/cuda/*.cpp") + rel("csrc/cuda/*.cu")
        # The kernel rounds multiply and add separately itself (__fmul_rn / __fadd_rn).
        extra_compile_args["nvcc"] = ["-O3", "-lineinfo", *defines]
        extra_compile_args["cxx"].append("-DUSE_CUDA")  # the CUDA stream shim of the stable ABI
        wheel_includes, wheel_libs = torch_cuda_wheel_dirs()
        # The toolkit's own headers first: the wheels only fill in what it lacks (cusparse.h, cublas_v2.h, ...).
        include_dirs = [os.path.join(cuda_home, "include")] + wheel_includes
        library_dirs = wheel_libs
        extension = cpp_extension.CUDAExtension
        print(
            f"jasco_fast build: CUDA kernels for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}, "
            f"CUDA_HOME={cuda_home}, {len(wheel_includes)} include folder(s) from torch's nvidia wheels",
            flush=True,
        )
    else:
        extension = cpp_extension.CppExtension

    setup(
        ext_modules=[
            extension(
                "jasco_fast._C",
                sources,
                include_dirs=include_dirs,
                library_dirs=library_dirs,
                extra_compile_args=extra_compile_args,
                extra_link_args=extra_link_args,
                py_limited_api=True,
            )
        ],
        cmdclass={"build_ext": stub_linking_build_ext(cpp_extension.BuildExtension)},
        options={
            "bdist_wheel": {"py_limited_api": PY_LIMITED_API},
            # One build folder per torch build: objects compiled against one torch never link into another's.
            "build": {"build_base": os.path.join("build", f"torch-{torch.__version__}")},
        },
    )


if __name__ == "__main__":  # pip and `python setup.py` run it so; tests import the functions above
    main()
