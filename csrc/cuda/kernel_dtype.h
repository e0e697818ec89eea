// The CUDA kernels' DType of an ATen floating dtype, for the CUDA bindings (the kernels are torch-free).
#pragma once

#include <ATen/ATen.h>

#include "denorm_transpose_kernel.h"  // DType

namespace jasco_fast {

inline cuda::DType kernel_dtype(at::ScalarType t, const char* op) {
  switch (t) {
    case at::kFloat: return cuda::DType::kFloat32;
    case at::kDouble: return cuda::DType::kFloat64;
    case at::kHalf: return cuda::DType::kFloat16;
    case at::kBFloat16: return cuda::DType::kBFloat16;
    default: break;
  }
  TORCH_CHECK(false, op, ": unsupported dtype ", t);
  return cuda::DType::kFloat32;  // not reached
}

}  // namespace jasco_fast
