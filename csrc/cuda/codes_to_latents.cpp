// CUDA binding of jasco_fast::codes_to_latents (built only with a CUDA torch, JASCO_FAST_WITH_CUDA).
// Same checks and output allocation as the CPU kernel (../codes_to_latents.h); the kernel itself is in
// codes_to_latents_kernel.cu. Codes are read with their strides as they are (no copy).
//
// Out-of-range codes: the kernel skips them (no illegal memory access) and lowers a device-side flag to the
// first one's index; the flag is read back after the kernel (one device sync) and the call raises the same
// error as on CPU. While the stream is being captured into a CUDA graph, no sync is allowed: the check is
// skipped there and out-of-range codes contribute nothing to the sum.
#include "../codes_to_latents.h"
#include "binding.h"
#include "codes_to_latents_kernel.h"

namespace jasco_fast {
namespace {

// One value of device memory, read back on the stream.
template <typename T>
T read_back(const T* device_ptr, cudaStream_t stream) {
  T value{};
  JF_CUDA_CHECK(cudaMemcpyAsync(&value, device_ptr, sizeof(value), cudaMemcpyDeviceToHost, stream));
  JF_CUDA_CHECK(cudaStreamSynchronize(stream));
  return value;
}

Tensor codes_to_latents_cuda(Tensor codes, Tensor codebooks, std::optional<ScalarType> dtype, bool channels_last) {
  const ScalarType out_dtype = check_code_inputs(codes, codebooks, dtype);
  JF_CHECK(codes.is_cuda(), "codes_to_latents: the CUDA kernel got codes on ", device_name(codes));
  const DeviceGuard guard(codes.get_device_index());
  Tensor out = make_code_output(codes, codebooks, out_dtype, channels_last);
  if (out.numel() == 0) return out;
  const Tensor cb = codebooks.is_contiguous() ? codebooks : torch::stable::contiguous(codebooks);
  cudaStream_t stream = current_stream(codes);
  Tensor first_bad = torch::stable::new_empty(codes, {1}, kLong);
  JF_CUDA_CHECK(cudaMemsetAsync(first_bad.mutable_data_ptr(), 0xFF, sizeof(int64_t), stream));

  cuda::CodesToLatentsArgs args{};
  args.codes = codes.const_data_ptr();
  args.code_dtype = codes.scalar_type() == kLong ? cuda::CodeDType::kInt64 : cuda::CodeDType::kInt32;
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
  JF_CUDA_CHECK(cuda::launch_codes_to_latents(args, stream));

  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  JF_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  if (capture == cudaStreamCaptureStatusNone) {
    const int64_t bad =
        read_back(first_bad.const_data_ptr<int64_t>(), stream);  // all ones (-1): every code was in range
    if (bad != -1) {
      const int64_t K = codes.size(1), T = codes.size(2);
      const int64_t at = bad / (K * T) * codes.stride(0) + (bad / T) % K * codes.stride(1) + bad % T * codes.stride(2);
      const int64_t value = codes.scalar_type() == kLong ? read_back(codes.const_data_ptr<int64_t>() + at, stream)
                                                         : read_back(codes.const_data_ptr<int32_t>() + at, stream);
      fail_bad_code(codes, bad, value, cb.size(1));
    }
  }
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(jasco_fast, CUDA, m) { m.impl("codes_to_latents", TORCH_BOX(&codes_to_latents_cuda)); }

}  // namespace jasco_fast
