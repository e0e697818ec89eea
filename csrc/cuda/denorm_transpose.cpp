// The torch binding of the CUDA kernels: built only against a CUDA build of torch.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../denorm_transpose.h"
#include "denorm_transpose_kernel.h"

namespace jasco_fast {
namespace {

cuda::Dtype kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cuda::Dtype::kFloat32;
    case at::kDouble: return cuda::Dtype::kFloat64;
    case at::kHalf: return cuda::Dtype::kFloat16;
    case at::kBFloat16: return cuda::Dtype::kBFloat16;
    default: TORCH_CHECK(false, "denorm_transpose: unsupported dtype ", t);
  }
}

at::Tensor denorm_transpose_cuda(const at::Tensor& latents, const at::Tensor& mean, const at::Tensor& std,
                                 std::optional<at::ScalarType> dtype, bool channels_last) {
  const at::ScalarType out_dtype = check_inputs(latents, mean, std, dtype);
  const c10::cuda::CUDAGuard guard(latents.device());
  at::Tensor out = make_output(latents, out_dtype, channels_last);
  if (out.numel() == 0) return out;
  // The statistics in the compute type, as the kernel reads them (a few bytes; same stream).
  const at::ScalarType acc = latents.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor m = mean.to(acc).contiguous(), s = std.to(acc).contiguous();
  cuda::DenormTransposeArgs args{latents.const_data_ptr(), kernel_dtype(latents.scalar_type()),
                                 latents.size(0), latents.size(1), latents.size(2),
                                 latents.stride(0), latents.stride(1), latents.stride(2),
                                 out.data_ptr(), kernel_dtype(out_dtype), channels_last,
                                 m.const_data_ptr(), m.numel(), s.const_data_ptr(), s.numel()};
  // The current stream, so the op is ordered with the rest of the graph (and CUDA-graph capturable).
  C10_CUDA_CHECK(cuda::denorm_transpose_launch(args, at::cuda::getCurrentCUDAStream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(jasco_fast, CUDA, m) { m.impl("denorm_transpose", &denorm_transpose_cuda); }

}  // namespace jasco_fast
