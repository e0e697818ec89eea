// What the CUDA bindings share over the stable ABI: the kernels' DType of a floating dtype (the kernels are
// torch-free), the current stream, and CUDA error checks.
#pragma once

#include <cuda_runtime.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>  // aoti_torch_get_current_cuda_stream (USE_CUDA)
#include <torch/csrc/stable/accelerator.h>

#include "../stable.h"
#include "denorm_transpose_kernel.h"  // DType

namespace jasco_fast {

inline cuda::DType kernel_dtype(ScalarType t, const char* op) {
  switch (t) {
    case kFloat: return cuda::DType::kFloat32;
    case kDouble: return cuda::DType::kFloat64;
    case kHalf: return cuda::DType::kFloat16;
    case kBFloat16: return cuda::DType::kBFloat16;
    default: break;
  }
  JF_CHECK_TYPE(false, op, ": unsupported dtype ", dtype_name(t));
  return cuda::DType::kFloat32;  // not reached
}

#define JF_CUDA_CHECK(expr)                                                                              \
  do {                                                                                                   \
    const cudaError_t jf_status = (expr);                                                                \
    JF_CHECK(jf_status == cudaSuccess, "CUDA error: ", cudaGetErrorString(jf_status), " (", #expr, ")"); \
  } while (0)

// The stream torch works on for the tensor's device (CUDA graphs, reduce-overhead).
inline cudaStream_t current_stream(const Tensor& t) {
  void* stream = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(t.get_device_index(), &stream));
  return static_cast<cudaStream_t>(stream);
}

// Makes a device current for a scope (c10::cuda::CUDAGuard's job).
using DeviceGuard = torch::stable::accelerator::DeviceGuard;

}  // namespace jasco_fast
