// CUDA kernels of jasco_fast::denorm_transpose: out[b, d, t] = latents[b, t, d] * std[d] + mean[d], cast to the
// output dtype, in one pass over memory. Compute type: float32, float64 when input or output is float64.
//
// channels_last=False: classic shared-memory tiled transpose. A block of 32 x 8 threads moves a tile of
// 32 time steps x (32 * VEC) channels: reads are coalesced along D (VEC contiguous elements per thread,
// one vector load when aligned), writes are coalesced along T; the tile's rows are padded by one element
// so the column reads of the write phase are free of bank conflicts.
// channels_last=True: an elementwise pass over [B, T, D] memory (vector loads/stores of 4 elements when
// the input is contiguous and both pointers are aligned, a strided scalar loop otherwise).
#include "denorm_transpose_kernel.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace jasco_fast {
namespace cuda {
namespace {

constexpr int kRowsPerPass = 8;  // blockDim.y

// ---- conversions: load to the compute type, store rounded to nearest even -------------------------
// float64 -> float16/bfloat16 goes through float32 (two roundings), as PyTorch's CPU casts and the CPU
// kernel do, so every device returns the same bits.
template <typename acc_t, typename T>
struct Cvt;
template <>
struct Cvt<float, float> {
  __device__ static float load(float v) { return v; }
  __device__ static float store(float v) { return v; }
};
template <>
struct Cvt<float, __half> {
  __device__ static float load(__half v) { return __half2float(v); }
  __device__ static __half store(float v) { return __float2half_rn(v); }
};
template <>
struct Cvt<float, __nv_bfloat16> {
  __device__ static float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};
template <>
struct Cvt<double, double> {
  __device__ static double load(double v) { return v; }
  __device__ static double store(double v) { return v; }
};
template <>
struct Cvt<double, float> {
  __device__ static double load(float v) { return static_cast<double>(v); }
  __device__ static float store(double v) { return __double2float_rn(v); }
};
template <>
struct Cvt<double, __half> {
  __device__ static double load(__half v) { return static_cast<double>(__half2float(v)); }
  __device__ static __half store(double v) { return __float2half_rn(__double2float_rn(v)); }
};
template <>
struct Cvt<double, __nv_bfloat16> {
  __device__ static double load(__nv_bfloat16 v) { return static_cast<double>(__bfloat162float(v)); }
  __device__ static __nv_bfloat16 store(double v) { return __float2bfloat16_rn(__double2float_rn(v)); }
};

// Multiply, then add, each rounded (nvcc would otherwise contract to an FMA): the two roundings of JASCO's
// `latents * std + mean`, and the same values as the CPU kernel.
__device__ __forceinline__ float mul_add(float x, float s, float m) { return __fadd_rn(__fmul_rn(x, s), m); }
__device__ __forceinline__ double mul_add(double x, double s, double m) { return __dadd_rn(__dmul_rn(x, s), m); }

// VEC contiguous elements moved by one load/store instruction (VEC * sizeof(T) <= 16 bytes in use here).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename in_t, typename out_t, typename acc_t>
struct Params {
  const in_t* in;
  out_t* out;
  const acc_t* mean;
  const acc_t* std;
  int64_t mean_step, std_step;
  int64_t B, T, D;
  int64_t sb, st, sd;
};

// ---- channels_last=False: tiled transpose -------------------------------------------------------------
// VEC > 1 requires sd == 1, st and sb multiples of VEC, D a multiple of VEC and `in` aligned to VEC elements
// (checked by the launcher), so every vector load is aligned and inside the row.
template <typename in_t, typename out_t, typename acc_t, int VEC>
__global__ void __launch_bounds__(32 * kRowsPerPass) transpose_kernel(Params<in_t, out_t, acc_t> p) {
  constexpr int kTileD = 32 * VEC;
  __shared__ acc_t tile[kTileT][kTileD + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kTileT;
  // Grid-stride over channel tiles and batch entries: any D and B fit the grid (y and z are capped at 65535).
  for (int64_t d0 = static_cast<int64_t>(blockIdx.y) * kTileD; d0 < p.D;
       d0 += static_cast<int64_t>(gridDim.y) * kTileD) {
    for (int64_t b = blockIdx.z; b < p.B; b += gridDim.z) {
      const in_t* in_b = p.in + b * p.sb;
      // load: rows t0 + r, channels d0 + tx * VEC .. + VEC - 1
#pragma unroll
      for (int r = ty; r < kTileT; r += kRowsPerPass) {
        const int64_t t = t0 + r;
        const int64_t d = d0 + static_cast<int64_t>(tx) * VEC;
        if (t < p.T) {
          if constexpr (VEC > 1) {
            if (d < p.D) {  // D % VEC == 0: the whole pack is inside the row
              const Pack<in_t, VEC> v = *reinterpret_cast<const Pack<in_t, VEC>*>(in_b + t * p.st + d);
#pragma unroll
              for (int j = 0; j < VEC; ++j)
                tile[r][tx * VEC + j] =
                    mul_add(Cvt<acc_t, in_t>::load(v.v[j]), p.std[(d + j) * p.std_step], p.mean[(d + j) * p.mean_step]);
            }
          } else if (d < p.D) {
            tile[r][tx] = mul_add(Cvt<acc_t, in_t>::load(in_b[t * p.st + d * p.sd]), p.std[d * p.std_step],
                                  p.mean[d * p.mean_step]);
          }
        }
      }
      __syncthreads();
      // store: channel rows d0 + c, time steps t0 + tx (coalesced along T)
      const int64_t t = t0 + tx;
      if (t < p.T) {
#pragma unroll 4
        for (int c = ty; c < kTileD; c += kRowsPerPass) {
          const int64_t d = d0 + c;
          if (d < p.D) p.out[(b * p.D + d) * p.T + t] = Cvt<acc_t, out_t>::store(tile[tx][c]);
        }
      }
      __syncthreads();  // the tile is reused for the next (channel tile, batch entry)
    }
  }
}

// ---- channels_last=True: elementwise -------------------------------------------------------------------
constexpr int kVec = 4;

// Contiguous input, `in` and `out` aligned to kVec elements: n = B * T * D elements, kVec per thread.
template <typename in_t, typename out_t, typename acc_t>
__global__ void scale_shift_vec_kernel(Params<in_t, out_t, acc_t> p, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * kVec;
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * kVec; i < n; i += stride) {
    if (i + kVec <= n) {
      const Pack<in_t, kVec> v = *reinterpret_cast<const Pack<in_t, kVec>*>(p.in + i);
      Pack<out_t, kVec> o;
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const int64_t d = (i + j) % p.D;
        o.v[j] = Cvt<acc_t, out_t>::store(
            mul_add(Cvt<acc_t, in_t>::load(v.v[j]), p.std[d * p.std_step], p.mean[d * p.mean_step]));
      }
      *reinterpret_cast<Pack<out_t, kVec>*>(p.out + i) = o;
    } else {
      for (int64_t k = i; k < n; ++k) {
        const int64_t d = k % p.D;
        p.out[k] = Cvt<acc_t, out_t>::store(
            mul_add(Cvt<acc_t, in_t>::load(p.in[k]), p.std[d * p.std_step], p.mean[d * p.mean_step]));
      }
    }
  }
}

// Any input strides: one element per thread step, output index = (b * T + t) * D + d.
template <typename in_t, typename out_t, typename acc_t>
__global__ void scale_shift_strided_kernel(Params<in_t, out_t, acc_t> p, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t d = i % p.D, bt = i / p.D, t = bt % p.T, b = bt / p.T;
    const acc_t x = Cvt<acc_t, in_t>::load(p.in[b * p.sb + t * p.st + d * p.sd]);
    p.out[i] = Cvt<acc_t, out_t>::store(mul_add(x, p.std[d * p.std_step], p.mean[d * p.mean_step]));
  }
}

// ---- launch -----------------------------------------------------------------------------------------------
bool aligned(const void* ptr, size_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename in_t, typename out_t, typename acc_t, int VEC>
cudaError_t launch_transpose(const Params<in_t, out_t, acc_t>& p, cudaStream_t stream) {
  const int64_t gx = ceil_div(p.T, kTileT), gy = ceil_div(p.D, 32 * VEC);
  if (p.T > kMaxTimeSteps) return cudaErrorInvalidValue;  // the binding refuses it first, with a message
  const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy < kMaxGridYZ ? gy : kMaxGridYZ),
                  static_cast<unsigned>(p.B < kMaxGridYZ ? p.B : kMaxGridYZ));
  transpose_kernel<in_t, out_t, acc_t, VEC><<<grid, dim3(32, kRowsPerPass), 0, stream>>>(p);
  return cudaGetLastError();
}

unsigned elementwise_blocks(int64_t work, int threads) {
  const int64_t blocks = ceil_div(work, threads);
  return static_cast<unsigned>(blocks < 65536 * 8 ? blocks : 65536 * 8);  // grid-stride loops cover the rest
}

template <typename in_t, typename out_t, typename acc_t>
cudaError_t launch_typed(const DenormTransposeArgs& a, cudaStream_t stream) {
  Params<in_t, out_t, acc_t> p{static_cast<const in_t*>(a.in),
                               static_cast<out_t*>(a.out),
                               static_cast<const acc_t*>(a.mean),
                               static_cast<const acc_t*>(a.std),
                               a.mean_step,
                               a.std_step,
                               a.B,
                               a.T,
                               a.D,
                               a.sb,
                               a.st,
                               a.sd};
  const int64_t n = a.B * a.T * a.D;
  if (n == 0) return cudaSuccess;
  if (a.channels_last) {
    constexpr int threads = 256;
    const bool contiguous = a.sd == 1 && (a.T == 1 || a.st == a.D) && (a.B == 1 || a.sb == a.T * a.D);
    if (contiguous && aligned(a.in, sizeof(in_t) * kVec) && aligned(a.out, sizeof(out_t) * kVec)) {
      scale_shift_vec_kernel<in_t, out_t, acc_t>
          <<<elementwise_blocks(ceil_div(n, kVec), threads), threads, 0, stream>>>(p, n);
    } else {
      scale_shift_strided_kernel<in_t, out_t, acc_t><<<elementwise_blocks(n, threads), threads, 0, stream>>>(p, n);
    }
    return cudaGetLastError();
  }
  // 16-byte vector loads along D for 4-byte inputs (4 per thread), 8-byte ones for 2-byte inputs (4 per
  // thread); float64 keeps one element per thread (its 32 x 33 tile is already 8.4 KB).
  constexpr int VEC = sizeof(in_t) <= 4 ? 4 : 1;
  const bool vec_ok = a.sd == 1 && a.D % VEC == 0 && (a.T == 1 || a.st % VEC == 0) && (a.B == 1 || a.sb % VEC == 0) &&
                      aligned(a.in, sizeof(in_t) * VEC);
  if (VEC > 1 && vec_ok) return launch_transpose<in_t, out_t, acc_t, VEC>(p, stream);
  return launch_transpose<in_t, out_t, acc_t, 1>(p, stream);
}

template <typename T>
struct IsDouble {
  static constexpr bool value = false;
};
template <>
struct IsDouble<double> {
  static constexpr bool value = true;
};

template <typename in_t>
cudaError_t dispatch_out(const DenormTransposeArgs& a, cudaStream_t stream) {
  if constexpr (IsDouble<in_t>::value) {  // float64 input: float64 arithmetic whatever the output
    switch (a.out_dtype) {
      case DType::kFloat32: return launch_typed<in_t, float, double>(a, stream);
      case DType::kFloat64: return launch_typed<in_t, double, double>(a, stream);
      case DType::kFloat16: return launch_typed<in_t, __half, double>(a, stream);
      case DType::kBFloat16: return launch_typed<in_t, __nv_bfloat16, double>(a, stream);
    }
  } else {  // float64 arithmetic only for a float64 output
    switch (a.out_dtype) {
      case DType::kFloat32: return launch_typed<in_t, float, float>(a, stream);
      case DType::kFloat64: return launch_typed<in_t, double, double>(a, stream);
      case DType::kFloat16: return launch_typed<in_t, __half, float>(a, stream);
      case DType::kBFloat16: return launch_typed<in_t, __nv_bfloat16, float>(a, stream);
    }
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_denorm_transpose(const DenormTransposeArgs& args, cudaStream_t stream) {
  switch (args.in_dtype) {
    case DType::kFloat32: return dispatch_out<float>(args, stream);
    case DType::kFloat64: return dispatch_out<double>(args, stream);
    case DType::kFloat16: return dispatch_out<__half>(args, stream);
    case DType::kBFloat16: return dispatch_out<__nv_bfloat16>(args, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace jasco_fast
