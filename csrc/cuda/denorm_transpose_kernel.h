// CUDA kernels of jasco_fast::denorm_transpose behind a launcher on raw pointers, free of torch
// headers so that nvcc compiles them without a CUDA build of torch.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace jasco_fast {
namespace cuda {

enum class Dtype : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

struct DenormTransposeArgs {
  const void* in;  // latents [B, T, D] with element strides (sb, st, sd)
  Dtype in_dtype;
  int64_t B, T, D, sb, st, sd;
  void* out;  // contiguous [B, D, T], or [B, T, D] memory when channels_last
  Dtype out_dtype;
  bool channels_last;
  // Device arrays in the compute type (double for float64 latents, else float), 1 or D elements each.
  const void* mean;
  int64_t mean_numel;
  const void* std;
  int64_t std_numel;
};

// out = latents * std + mean, transposed to [B, D, T] and cast, on `stream`; returns the launch status.
cudaError_t denorm_transpose_launch(const DenormTransposeArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace jasco_fast
