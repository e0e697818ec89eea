// CUDA kernel of jasco_fast::codes_to_latents on raw pointers (no torch headers: shared by the .cu file,
// compiled by nvcc alone, and by the torch binding in codes_to_latents.cpp).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "denorm_transpose_kernel.h"  // DType

namespace jasco_fast {
namespace cuda {

enum class CodeDType : int { kInt64 = 0, kInt32 = 1 };

struct CodesToLatentsArgs {
  const void* codes;  // [B, K, T], element strides (sb, sk, st)
  CodeDType code_dtype;
  const void* codebooks;  // [num_codebooks, S, D] contiguous
  DType codebook_dtype;
  void* out;  // [B, D, T] contiguous, or [B, T, D] contiguous memory when channels_last
  DType out_dtype;
  int64_t B, K, T, S, D;
  int64_t sb, sk, st;
  bool channels_last;
  // Device pointer, set to all ones (0xFF bytes) before the launch: the kernel lowers it (atomicMin) to the
  // flat index b * K * T + k * T + t of every out-of-range code, which is never read through.
  unsigned long long* first_bad;
};

// Enqueues the kernel on `stream` and returns the launch status (cudaGetLastError after the launch);
// cudaErrorInvalidValue for an unsupported dtype or a grid that is too large.
cudaError_t launch_codes_to_latents(const CodesToLatentsArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace jasco_fast
