"""Builds jasco_fast._C: the CPU kernels always, the CUDA kernels when torch has CUDA and nvcc exists."""
import glob
import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def rel(pattern):
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


# Not torch.cuda.is_available(): a GPU-less build box with a CUDA torch should still build them.
with_cuda = bool(torch.version.cuda) and CUDA_HOME is not None and os.environ.get("JASCO_FAST_NO_CUDA") != "1"

sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
# OpenMP on compile AND link, else at::parallel_for runs on one thread.
extra_compile_args = {"cxx": ["-O3", "-fopenmp"]}
extra_link_args = ["-fopenmp"]
define_macros = []

if with_cuda:
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    sources += rel("csrc/cuda/*.cpp") + rel("csrc/cuda/*.cu")
    extra_compile_args["nvcc"] = ["-O3", "-lineinfo"]
    define_macros.append(("JASCO_FAST_WITH_CUDA", None))
    Extension = CUDAExtension
else:
    Extension = CppExtension

setup(
    ext_modules=[
        Extension(
            "jasco_fast._C",
            sources,
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
            define_macros=define_macros,
        )
    ],
    cmdclass={"build_ext": BuildExtension},
)
