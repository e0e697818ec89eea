// The extension module. The ops' schemas are defined in Python (jasco_fast/extension.py), so that they exist, with
// their PyTorch fallbacks, where this library cannot load; each device file registers its kernels for them.
//
// Built on PyTorch's stable ABI and Python's limited API: one binary serves every torch from its target
// (TORCH_TARGET_VERSION, set by setup.py) on and every CPython 3 from 3.10 (a cp310-abi3 wheel).
#include <Python.h>

const char* jasco_fast_unresolved_symbols();  // torch_symbols.cpp

extern "C" {
// `import jasco_fast._C` loads this shared library, which runs the kernels' registrations.
PyObject* PyInit__C(void) {
  const char* missing = jasco_fast_unresolved_symbols();
  if (*missing != '\0') {
    PyErr_Format(PyExc_ImportError, "the loaded torch lacks functions jasco_fast._C calls: %s", missing);
    return nullptr;
  }
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

// libstdc++'s inline code (GCC >= 11) reads glibc 2.32's __libc_single_threaded to skip atomic reference
// counts; setup.py renames that read to this variable (0: "maybe multi-threaded", always atomic, as before glibc
// 2.32), so that the binary needs glibc 2.28 at most (manylinux_2_28).
__attribute__((visibility("hidden"))) char jasco_fast_libc_single_threaded = 0;
}
