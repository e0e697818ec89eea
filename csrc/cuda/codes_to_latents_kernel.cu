// CUDA kernel of jasco_fast::codes_to_latents: out[b, :, t] = sum over k < K of codebooks[k, codes[b, k, t], :],
// accumulated in codebook order in float32 (float64 when the codebooks or the output are float64), rounded
// once to the output dtype.
//
// One thread per output element, the fastest thread index along the output's contiguous axis, so writes are
// coalesced in both layouts: channels_last (d fastest) also reads each codebook row coalesced; [B, D, T]
// (t fastest) gathers rows of the small, cache-resident codebooks. Out-of-range codes are skipped (never read
// through) and reported through args.first_bad.
#include "codes_to_latents_kernel.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace jasco_fast {
namespace cuda {
namespace {

__device__ __forceinline__ float to_acc(float v, float) { return v; }
__device__ __forceinline__ float to_acc(__half v, float) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v, float) { return __bfloat162float(v); }
__device__ __forceinline__ double to_acc(double v, double) { return v; }
__device__ __forceinline__ double to_acc(float v, double) { return static_cast<double>(v); }
__device__ __forceinline__ double to_acc(__half v, double) { return static_cast<double>(__half2float(v)); }
__device__ __forceinline__ double to_acc(__nv_bfloat16 v, double) { return static_cast<double>(__bfloat162float(v)); }

// Rounded to nearest even; float64 -> float16/bfloat16 through float32, as PyTorch's CPU casts do.
template <typename out_t>
struct Store;
template <>
struct Store<float> {
  __device__ static float from(float v) { return v; }
  __device__ static float from(double v) { return __double2float_rn(v); }
};
template <>
struct Store<double> {
  __device__ static double from(float v) { return v; }
  __device__ static double from(double v) { return v; }
};
template <>
struct Store<__half> {
  __device__ static __half from(float v) { return __float2half_rn(v); }
  __device__ static __half from(double v) { return __float2half_rn(__double2float_rn(v)); }
};
template <>
struct Store<__nv_bfloat16> {
  __device__ static __nv_bfloat16 from(float v) { return __float2bfloat16_rn(v); }
  __device__ static __nv_bfloat16 from(double v) { return __float2bfloat16_rn(__double2float_rn(v)); }
};

template <typename code_t, typename cb_t, typename out_t, typename acc_t>
__global__ void codes_to_latents_kernel(CodesToLatentsArgs a, int64_t n) {
  const code_t* codes = static_cast<const code_t*>(a.codes);
  const cb_t* codebooks = static_cast<const cb_t*>(a.codebooks);
  out_t* out = static_cast<out_t*>(a.out);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    int64_t b, t, d;
    if (a.channels_last) {  // i = (b * T + t) * D + d
      d = i % a.D;
      const int64_t bt = i / a.D;
      t = bt % a.T;
      b = bt / a.T;
    } else {  // i = (b * D + d) * T + t
      t = i % a.T;
      const int64_t bd = i / a.T;
      d = bd % a.D;
      b = bd / a.D;
    }
    const code_t* c = codes + b * a.sb + t * a.st;
    acc_t acc = acc_t(0);
    for (int64_t k = 0; k < a.K; ++k) {
      const int64_t code = static_cast<int64_t>(c[k * a.sk]);
      if (code < 0 || code >= a.S) {
        if (d == 0) atomicMin(a.first_bad, static_cast<unsigned long long>((b * a.K + k) * a.T + t));
        continue;
      }
      // the rounding of each addition is the same as the CPU kernel's: a plain add, no contraction
      acc = acc + to_acc(codebooks[(k * a.S + code) * a.D + d], acc_t(0));
    }
    out[i] = Store<out_t>::from(acc);
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename code_t, typename cb_t, typename out_t, typename acc_t>
cudaError_t launch_typed(const CodesToLatentsArgs& a, cudaStream_t stream) {
  const int64_t n = a.B * a.T * a.D;
  if (n == 0) return cudaSuccess;
  constexpr int threads = 256;
  const int64_t blocks = ceil_div(n, threads);
  const unsigned grid = static_cast<unsigned>(blocks < 65536 * 8 ? blocks : 65536 * 8);  // grid-stride loop
  codes_to_latents_kernel<code_t, cb_t, out_t, acc_t><<<grid, threads, 0, stream>>>(a, n);
  return cudaGetLastError();
}

template <typename code_t, typename cb_t>
cudaError_t dispatch_out(const CodesToLatentsArgs& a, cudaStream_t stream) {
  const bool wide = a.codebook_dtype == DType::kFloat64;  // float64 arithmetic for float64 codebooks or output
  switch (a.out_dtype) {
    case DType::kFloat32:
      return wide ? launch_typed<code_t, cb_t, float, double>(a, stream)
                  : launch_typed<code_t, cb_t, float, float>(a, stream);
    case DType::kFloat64: return launch_typed<code_t, cb_t, double, double>(a, stream);
    case DType::kFloat16:
      return wide ? launch_typed<code_t, cb_t, __half, double>(a, stream)
                  : launch_typed<code_t, cb_t, __half, float>(a, stream);
    case DType::kBFloat16:
      return wide ? launch_typed<code_t, cb_t, __nv_bfloat16, double>(a, stream)
                  : launch_typed<code_t, cb_t, __nv_bfloat16, float>(a, stream);
  }
  return cudaErrorInvalidValue;
}

template <typename code_t>
cudaError_t dispatch_codebooks(const CodesToLatentsArgs& a, cudaStream_t stream) {
  switch (a.codebook_dtype) {
    case DType::kFloat32: return dispatch_out<code_t, float>(a, stream);
    case DType::kFloat64: return dispatch_out<code_t, double>(a, stream);
    case DType::kFloat16: return dispatch_out<code_t, __half>(a, stream);
    case DType::kBFloat16: return dispatch_out<code_t, __nv_bfloat16>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_codes_to_latents(const CodesToLatentsArgs& args, cudaStream_t stream) {
  switch (args.code_dtype) {
    case CodeDType::kInt64: return dispatch_codebooks<int64_t>(args, stream);
    case CodeDType::kInt32: return dispatch_codebooks<int32_t>(args, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace jasco_fast
