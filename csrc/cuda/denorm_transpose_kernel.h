// CUDA kernels of jasco_fast::denorm_transpose on raw pointers (no torch headers: this header is shared by
// the .cu file, compiled by nvcc alone, and by the torch binding in denorm_transpose.cpp).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace jasco_fast {
namespace cuda {

// Grid limits. The tiled transpose maps 32 time steps to each block along the grid's x axis (at most
// 2^31 - 1 blocks), so it covers T <= kMaxTimeSteps; channels and batch entries are grid-strided (any size).
constexpr int kTileT = 32;
constexpr int64_t kMaxGridX = 2147483647;
constexpr int64_t kMaxGridYZ = 65535;
constexpr int64_t kMaxTimeSteps = kMaxGridX * kTileT;

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

struct DenormTransposeArgs {
  const void* in;  // latents [B, T, D], element strides (sb, st, sd), any values (0 from expand included)
  void* out;       // [B, D, T] contiguous, or [B, T, D] contiguous memory when channels_last
  DType in_dtype;
  DType out_dtype;
  // mean/std in the compute type (float64 when in_dtype or out_dtype is float64, else float32), device
  // pointers to 1 or D values; mean_step/std_step are 0 for a scalar, 1 for per-channel statistics.
  const void* mean;
  const void* std;
  int64_t mean_step;
  int64_t std_step;
  int64_t B, T, D;
  int64_t sb, st, sd;
  bool channels_last;
};

// Enqueues the kernel on `stream` and returns the launch status (cudaGetLastError after the launch);
// cudaErrorInvalidValue for an unsupported dtype or T > kMaxTimeSteps (check both before calling).
cudaError_t launch_denorm_transpose(const DenormTransposeArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace jasco_fast
