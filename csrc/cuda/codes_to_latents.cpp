// CUDA binding of jasco_fast::codes_to_latents (built only with a CUDA torch, JASCO_FAST_WITH_CUDA).
// Same checks and output allocation as the CPU kernel (../codes_to_latents.h); the kernel itself is in
// codes_to_latents_kernel.cu. Codes are read with their strides as they are (no copy).
//
// Out-of-range codes: the kernel skips them (no illegal memory access) and lowers a device-side flag to the
// first one's index; the flag is read back after the kernel (one device sync) and the call raises the same
// error as on CPU. While the stream is being captured into a CUDA graph, no sync is allowed: the check is
// skipped there and out-of-range codes contribute nothing to the sum.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../codes_to_latents.h"
#include "codes_to_latents_kernel.h"
#include "kernel_dtype.h"

namespace jasco_fast {
namespace {

at::Tensor codes_to_latents_cuda(const at::Tensor& codes, const at::Tensor& codebooks,
                                 std::optional<at::ScalarType> dtype, bool channels_last) {
  const at::ScalarType out_dtype = check_code_inputs(codes, codebooks, dtype);
  TORCH_CHECK(codes.is_cuda(), "codes_to_latents: the CUDA kernel got codes on ", codes.device());
  const c10::cuda::CUDAGuard guard(codes.device());
  at::Tensor out = make_code_output(codes, codebooks, out_dtype, channels_last);
  if (out.numel() == 0) return out;
  const at::Tensor cb = codebooks.contiguous();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream(codes.get_device()).stream();
  at::Tensor first_bad = at::empty({1}, codes.options().dtype(at::kLong));
  C10_CUDA_CHECK(cudaMemsetAsync(first_bad.mutable_data_ptr(), 0xFF, sizeof(int64_t), stream));

  cuda::CodesToLatentsArgs args{};
  args.codes = codes.const_data_ptr();
  args.code_dtype = codes.scalar_type() == at::kLong ? cuda::CodeDType::kInt64 : cuda::CodeDType::kInt32;
  args.codebooks = cb.const_data_ptr();
  args.codebook_dtype = kernel_dtype(cb.scalar_type(), "codes_to_latents");
  args.out = out.mutable_data_ptr();
  args.out_dtype = kernel_dtype(out_dtype, "codes_to_latents");
  args.B = codes.size(0);
  args.K = codes.size(1);
  args.T = codes.size(2);
  args.S = cb.size(1);
  args.D = cb.size(2);
  args.sb = codes.stride(0);
  args.sk = codes.stride(1);
  args.st = codes.stride(2);
  args.channels_last = channels_last;
  args.first_bad = reinterpret_cast<unsigned long long*>(first_bad.mutable_data_ptr());
  C10_CUDA_CHECK(cuda::launch_codes_to_latents(args, stream));

  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  if (capture == cudaStreamCaptureStatusNone) {
    const int64_t bad = first_bad.item<int64_t>();  // all ones (-1): every code was in range
    if (bad != -1) {
      const int64_t K = codes.size(1), T = codes.size(2);
      fail_bad_code(codes, bad, codes[bad / (K * T)][(bad / T) % K][bad % T].item<int64_t>(), cb.size(1));
    }
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(jasco_fast, CUDA, m) { m.impl("codes_to_latents", &codes_to_latents_cuda); }

}  // namespace jasco_fast
