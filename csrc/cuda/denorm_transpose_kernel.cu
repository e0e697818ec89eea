// CUDA kernels of jasco_fast::denorm_transpose. No torch headers: see denorm_transpose_kernel.h.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "denorm_transpose_kernel.h"

namespace jasco_fast {
namespace cuda {
namespace {

constexpr int kTile = 32;  // a 32 x 32 tile per block, 32 x 8 threads
constexpr int kRows = 8;

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ double to_acc(double v) { return v; }

// Multiply, then add, each rounded: the two roundings of `latents * std + mean` (no FMA contraction).
__device__ __forceinline__ float mul_add(float x, float s, float m) { return __fadd_rn(__fmul_rn(x, s), m); }
__device__ __forceinline__ double mul_add(double x, double s, double m) { return __dadd_rn(__dmul_rn(x, s), m); }

template <typename Out>
__device__ __forceinline__ Out from_acc(float v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ double from_acc<double>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// float64 arithmetic: rounded to float first for the narrow types, as the CPU kernel does.
template <typename Out>
__device__ __forceinline__ Out from_acc(double v) { return from_acc<Out>(static_cast<float>(v)); }
template <>
__device__ __forceinline__ double from_acc<double>(double v) { return v; }

// Classic tiled transpose: coalesced reads along D into shared memory (padded against bank
// conflicts), coalesced writes along T out of it.
template <typename In, typename Out, typename Acc>
__global__ void __launch_bounds__(kTile * kRows) transpose_kernel(const In* __restrict__ in, Out* __restrict__ out,
                                                                   const Acc* __restrict__ mean, int64_t mean_step,
                                                                   const Acc* __restrict__ std, int64_t std_step,
                                                                   int64_t B, int64_t T, int64_t D, int64_t sb,
                                                                   int64_t st, int64_t sd) {
  __shared__ Acc tile[kTile][kTile + 1];
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t d0 = static_cast<int64_t>(blockIdx.y) * kTile;
  for (int64_t b = blockIdx.z; b < B; b += gridDim.z) {
    for (int j = threadIdx.y; j < kTile; j += kRows) {
      const int64_t t = t0 + j, d = d0 + threadIdx.x;
      if (t < T && d < D)
        tile[j][threadIdx.x] = mul_add(to_acc(in[b * sb + t * st + d * sd]), std[d * std_step], mean[d * mean_step]);
    }
    __syncthreads();
    for (int j = threadIdx.y; j < kTile; j += kRows) {
      const int64_t d = d0 + j, t = t0 + threadIdx.x;
      if (t < T && d < D) out[(b * D + d) * T + t] = from_acc<Out>(tile[threadIdx.x][j]);
    }
    __syncthreads();
  }
}

// channels_last: the output's memory order is the input's [B, T, D]; an elementwise grid-stride pass.
template <typename In, typename Out, typename Acc>
__global__ void scale_shift_kernel(const In* __restrict__ in, Out* __restrict__ out, const Acc* __restrict__ mean,
                                   int64_t mean_step, const Acc* __restrict__ std, int64_t std_step, int64_t T,
                                   int64_t D, int64_t sb, int64_t st, int64_t sd, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t d = i % D, r = i / D;
    const In v = in[(r / T) * sb + (r % T) * st + d * sd];
    out[i] = from_acc<Out>(mul_add(to_acc(v), std[d * std_step], mean[d * mean_step]));
  }
}

// The same for contiguous float32 in and out with D % 4 == 0 and 16-byte aligned buffers: float4
// loads and stores.
__global__ void scale_shift_float4_kernel(const float4* __restrict__ in, float4* __restrict__ out,
                                          const float* __restrict__ mean, int64_t mean_step,
                                          const float* __restrict__ std, int64_t std_step, int64_t D, int64_t n4) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n4;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t d = (i * 4) % D;
    float4 v = in[i];
    v.x = mul_add(v.x, std[d * std_step], mean[d * mean_step]);
    v.y = mul_add(v.y, std[(d + 1) * std_step], mean[(d + 1) * mean_step]);
    v.z = mul_add(v.z, std[(d + 2) * std_step], mean[(d + 2) * mean_step]);
    v.w = mul_add(v.w, std[(d + 3) * std_step], mean[(d + 3) * mean_step]);
    out[i] = v;
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename In, typename Out, typename Acc>
cudaError_t launch_typed(const DenormTransposeArgs& a, cudaStream_t stream) {
  const In* in = static_cast<const In*>(a.in);
  Out* out = static_cast<Out*>(a.out);
  const Acc* mean = static_cast<const Acc*>(a.mean);
  const Acc* std = static_cast<const Acc*>(a.std);
  const int64_t mean_step = a.mean_numel == 1 ? 0 : 1, std_step = a.std_numel == 1 ? 0 : 1;
  if (a.channels_last) {
    const int64_t n = a.B * a.T * a.D;
    constexpr int threads = 256;
    const bool contiguous = a.sd == 1 && a.st == a.D && a.sb == a.T * a.D;
    if constexpr (sizeof(In) == 4 && sizeof(Out) == 4 && sizeof(Acc) == 4) {
      if (contiguous && a.D % 4 == 0 && aligned16(in) && aligned16(out)) {
        const int64_t n4 = n / 4;
        const int blocks = static_cast<int>(std::min<int64_t>((n4 + threads - 1) / threads, 65535));
        scale_shift_float4_kernel<<<blocks, threads, 0, stream>>>(reinterpret_cast<const float4*>(in),
                                                                  reinterpret_cast<float4*>(out), mean, mean_step,
                                                                  std, std_step, a.D, n4);
        return cudaGetLastError();
      }
    }
    const int blocks = static_cast<int>(std::min<int64_t>((n + threads - 1) / threads, 65535));
    scale_shift_kernel<In, Out, Acc><<<blocks, threads, 0, stream>>>(in, out, mean, mean_step, std, std_step, a.T,
                                                                      a.D, a.sb, a.st, a.sd, n);
    return cudaGetLastError();
  }
  const int64_t tiles_t = (a.T + kTile - 1) / kTile, tiles_d = (a.D + kTile - 1) / kTile;
  if (tiles_t > 2147483647 || tiles_d > 65535) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(tiles_t), static_cast<unsigned>(tiles_d),
                  static_cast<unsigned>(std::min<int64_t>(a.B, 65535)));
  transpose_kernel<In, Out, Acc><<<grid, dim3(kTile, kRows), 0, stream>>>(in, out, mean, mean_step, std, std_step,
                                                                          a.B, a.T, a.D, a.sb, a.st, a.sd);
  return cudaGetLastError();
}

template <typename In, typename Acc>
cudaError_t launch_out(const DenormTransposeArgs& a, cudaStream_t stream) {
  switch (a.out_dtype) {
    case Dtype::kFloat32: return launch_typed<In, float, Acc>(a, stream);
    case Dtype::kFloat64: return launch_typed<In, double, Acc>(a, stream);
    case Dtype::kFloat16: return launch_typed<In, __half, Acc>(a, stream);
    case Dtype::kBFloat16: return launch_typed<In, __nv_bfloat16, Acc>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t denorm_transpose_launch(const DenormTransposeArgs& a, cudaStream_t stream) {
  if (a.B == 0 || a.T == 0 || a.D == 0) return cudaSuccess;
  switch (a.in_dtype) {
    case Dtype::kFloat32: return launch_out<float, float>(a, stream);
    case Dtype::kFloat64: return launch_out<double, double>(a, stream);
    case Dtype::kFloat16: return launch_out<__half, float>(a, stream);
    case Dtype::kBFloat16: return launch_out<__nv_bfloat16, float>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace jasco_fast
