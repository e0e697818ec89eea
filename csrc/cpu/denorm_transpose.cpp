// CPU kernel of jasco_fast::denorm_transpose: out[b, d, t] = latents[b, t, d] * std[d] + mean[d], cast to the
// output dtype, in one pass over memory.
//
// Portability: the binary is built without -m flags. The float32/float16/bfloat16 fast paths are compiled
// for AVX2 + F16C with function-level target attributes and chosen at run time (cpu_isa.h: JASCO_FAST_ISA caps it);
// other CPUs, float64 and inputs whose D axis is not contiguous take the plain (auto-vectorised) loops.
// No FMA anywhere: multiply then add, the same two roundings as JASCO's `latents * std + mean`.
#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>

#include "../denorm_transpose.h"
#include "cpu_isa.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define JASCO_FAST_X86 1
#endif

namespace jasco_fast {
namespace {

struct Geometry {
  int64_t B, T, D;
  int64_t sb, st, sd;  // input strides, in elements
};

// Blocked transpose tiles of kTileT time steps x kTileD channels, chosen by measurement on [16, 1500, 128]
// float32 (docs/design/denorm-transpose.md): long runs along T keep the 16 output rows of a tile
// streaming, and the tile's 16 channels are one 64-byte line of each float32 input row.
constexpr int64_t kTileT = 512;
constexpr int64_t kTileD = 16;
// Output lines are prefetched for writing this many elements ahead of the 8 x 8 blocks.
constexpr int64_t kPrefetchOut = 128;

#ifdef JASCO_FAST_X86
#define JF_AVX2 __attribute__((target("avx2,f16c,prfchw")))

bool has_avx2() {
  static const bool yes = cpu_isa_capped_by("JASCO_FAST_ISA") >= CpuIsa::avx2 && __builtin_cpu_supports("f16c") &&
                          __builtin_cpu_supports("prfchw");
  return yes;
}

// 8 values -> float32 lanes (exact for every input dtype).
JF_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
JF_AVX2 inline __m256 load8(const Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
JF_AVX2 inline __m256 load8(const BFloat16* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

// Rows a and b, 4 values each -> [a0..a3 | b0..b3] as float32 lanes. For float32 the second half is a
// memory-operand vinsertf128 (a load, not a shuffle), which keeps the 8 x 8 transpose below at 16 shuffles.
JF_AVX2 inline __m128 load4(const float* p) { return _mm_loadu_ps(p); }
JF_AVX2 inline __m128 load4(const Half* p) {
  return _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}
JF_AVX2 inline __m128 load4(const BFloat16* p) {
  const __m128i w = _mm_cvtepu16_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  return _mm_castsi128_ps(_mm_slli_epi32(w, 16));
}
template <typename in_t>
JF_AVX2 inline __m256 load4x2(const in_t* a, const in_t* b) {
  return _mm256_insertf128_ps(_mm256_castps128_ps256(load4(a)), load4(b), 1);
}

// float32 lanes -> 8 values, rounded to nearest even exactly as Half / BFloat16 do.
JF_AVX2 inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
JF_AVX2 inline void store8(Half* p, __m256 v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
JF_AVX2 inline void store8(BFloat16* p, __m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), nan);  // c10's NaN
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}

// One tile: in at (t0, d0) with row stride st (D contiguous), out at (d0, t0) with row stride T.
// Full 8 x 8 blocks in registers, the ragged edges in scalar code. Each block: rows t..t+3 paired with
// t+4..t+7 by 128-bit halves at load time, scale and shift, then unpack + shuffle (16 shuffles per 64 values)
// give the 8 channel rows.
template <typename in_t, typename out_t>
JF_AVX2 void transpose_tile_avx2(const in_t* in, int64_t st, out_t* out, int64_t T, const float* s, const float* m,
                                 int64_t tn, int64_t dn) {
  const int64_t tn8 = tn / 8 * 8, dn8 = dn / 8 * 8;
  auto block = [&](int64_t t, int64_t d) JF_AVX2 {
    const in_t* row = in + t * st;
    const __m256 S0 = _mm256_broadcast_ps(reinterpret_cast<const __m128*>(s + d));
    const __m256 S1 = _mm256_broadcast_ps(reinterpret_cast<const __m128*>(s + d + 4));
    const __m256 M0 = _mm256_broadcast_ps(reinterpret_cast<const __m128*>(m + d));
    const __m256 M1 = _mm256_broadcast_ps(reinterpret_cast<const __m128*>(m + d + 4));
    __m256 r[8];  // r[i]: rows t+i | t+i+4, channels d..d+3 (i < 4) or d+4..d+7 (i >= 4)
    for (int i = 0; i < 4; ++i) {
      r[i] = _mm256_add_ps(_mm256_mul_ps(load4x2(row + i * st + d, row + (i + 4) * st + d), S0), M0);
      r[i + 4] = _mm256_add_ps(_mm256_mul_ps(load4x2(row + i * st + d + 4, row + (i + 4) * st + d + 4), S1), M1);
    }
    for (int h = 0; h < 2; ++h) {  // h = 0: channels d..d+3, h = 1: d+4..d+7
      const __m256 t0 = _mm256_unpacklo_ps(r[4 * h + 0], r[4 * h + 1]);
      const __m256 t1 = _mm256_unpackhi_ps(r[4 * h + 0], r[4 * h + 1]);
      const __m256 t2 = _mm256_unpacklo_ps(r[4 * h + 2], r[4 * h + 3]);
      const __m256 t3 = _mm256_unpackhi_ps(r[4 * h + 2], r[4 * h + 3]);
      out_t* o = out + (d + 4 * h) * T + t;
      store8(o, _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0)));
      store8(o + T, _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2)));
      store8(o + 2 * T, _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0)));
      store8(o + 3 * T, _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2)));
    }
  };
  for (int64_t t = 0; t < tn8; t += 8) {
    if (t % 16 == 0 && t + kPrefetchOut < tn)
      for (int64_t d = 0; d < dn; ++d) __builtin_prefetch(out + d * T + t + kPrefetchOut, 1, 3);
    for (int64_t d = 0; d < dn8; d += 8) block(t, d);
  }
  for (int64_t d = 0; d < dn; ++d)  // the last tn % 8 time steps, every channel
    for (int64_t t = tn8; t < tn; ++t)
      out[d * T + t] = static_cast<out_t>(static_cast<float>(in[t * st + d]) * s[d] + m[d]);
  for (int64_t d = dn8; d < dn; ++d)  // the last dn % 8 channels of the full time steps
    for (int64_t t = 0; t < tn8; ++t)
      out[d * T + t] = static_cast<out_t>(static_cast<float>(in[t * st + d]) * s[d] + m[d]);
}

// rows consecutive rows of n values (source rows src_stride apart, destination rows contiguous).
template <typename in_t, typename out_t>
JF_AVX2 void scale_shift_rows_avx2(const in_t* src, int64_t src_stride, out_t* dst, const float* s, const float* m,
                                   int64_t n, int64_t rows) {
  for (int64_t r = 0; r < rows; ++r, src += src_stride, dst += n) {
    int64_t d = 0;
    for (; d + 8 <= n; d += 8)
      store8(dst + d, _mm256_add_ps(_mm256_mul_ps(load8(src + d), _mm256_loadu_ps(s + d)), _mm256_loadu_ps(m + d)));
    for (; d < n; ++d) dst[d] = static_cast<out_t>(static_cast<float>(src[d]) * s[d] + m[d]);
  }
}

template <typename in_t, typename out_t, typename acc_t>
constexpr bool kHasAvx2Path =
    std::is_same_v<acc_t, float> && !std::is_same_v<in_t, double> && !std::is_same_v<out_t, double>;
#endif

// channels_last=True: the output's memory order is [B, T, D], the input's logical order, so this is a
// streaming elementwise pass over rows of D values.
template <typename in_t, typename out_t, typename acc_t>
void scale_shift(const in_t* in, out_t* out, const acc_t* mean, const acc_t* std, const Geometry& g) {
  const int64_t grain = std::max<int64_t>(1, kGrainSize / g.D);
  torch::stable::parallel_for(0, g.B * g.T, grain, [&](int64_t r0, int64_t r1) {
    int64_t b = r0 / g.T, t = r0 % g.T;
    while (r0 < r1) {  // runs of rows inside one batch entry
      const int64_t rows = std::min(r1 - r0, g.T - t);
      const in_t* src = in + b * g.sb + t * g.st;
      out_t* dst = out + r0 * g.D;
      bool done = false;
#ifdef JASCO_FAST_X86
      if constexpr (kHasAvx2Path<in_t, out_t, acc_t>) {
        if (g.sd == 1 && has_avx2()) {
          scale_shift_rows_avx2(src, g.st, dst, std, mean, g.D, rows);
          done = true;
        }
      }
#endif
      for (int64_t r = 0; !done && r < rows; ++r, src += g.st, dst += g.D) {
        if (g.sd == 1) {
          for (int64_t d = 0; d < g.D; ++d) dst[d] = static_cast<out_t>(static_cast<acc_t>(src[d]) * std[d] + mean[d]);
        } else {
          for (int64_t d = 0; d < g.D; ++d)
            dst[d] = static_cast<out_t>(static_cast<acc_t>(src[d * g.sd]) * std[d] + mean[d]);
        }
      }
      r0 += rows, t = 0, ++b;
    }
  });
}

// channels_last=False: a blocked transpose into contiguous [B, D, T]. Plain path: each tile is scaled into
// a small buffer row by row (reads along D), then written out row by row (writes along T).
template <typename in_t, typename out_t, typename acc_t>
void scale_shift_transpose(const in_t* in, out_t* out, const acc_t* mean, const acc_t* std, const Geometry& g) {
  constexpr int64_t TT = kTileT, TD = kTileD;
  const int64_t nt = (g.T + TT - 1) / TT, nd = (g.D + TD - 1) / TD;
  const int64_t grain = std::max<int64_t>(1, kGrainSize / (TT * TD));
  torch::stable::parallel_for(0, g.B * nt * nd, grain, [&](int64_t i0, int64_t i1) {
    std::vector<acc_t> tile;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / (nt * nd), t0 = (i / nd) % nt * TT, d0 = i % nd * TD;
      const int64_t tn = std::min(TT, g.T - t0), dn = std::min(TD, g.D - d0);
      const acc_t* m = mean + d0;
      const acc_t* s = std + d0;
      const in_t* src = in + b * g.sb + t0 * g.st + d0 * g.sd;
      out_t* dst = out + (b * g.D + d0) * g.T + t0;
#ifdef JASCO_FAST_X86
      if constexpr (kHasAvx2Path<in_t, out_t, acc_t>) {
        if (g.sd == 1 && has_avx2()) {
          transpose_tile_avx2(src, g.st, dst, g.T, s, m, tn, dn);
          continue;
        }
      }
#endif
      tile.resize(TT * TD);
      for (int64_t t = 0; t < tn; ++t, src += g.st) {
        acc_t* row = tile.data() + t * TD;
        for (int64_t d = 0; d < dn; ++d) row[d] = static_cast<acc_t>(src[d * g.sd]) * s[d] + m[d];
      }
      for (int64_t d = 0; d < dn; ++d, dst += g.T)
        for (int64_t t = 0; t < tn; ++t) dst[t] = static_cast<out_t>(tile[t * TD + d]);
    }
  });
}

// mean/std broadcast to D values in the compute type.
template <typename acc_t>
std::vector<acc_t> per_channel(const Tensor& s, int64_t D) {
  // read where they are, in any floating dtype and stride (1 or D values): a dispatcher call (to, contiguous)
  // costs about a microsecond, a fifth of a small call
  const int64_t n = s.numel(), step = s.dim() == 0 ? 0 : s.stride(0);
  std::vector<acc_t> out(D);
  dispatch_float(s.scalar_type(), "denorm_transpose", [&](auto tag) {
    using s_t = decltype(tag);
    const s_t* p = s.const_data_ptr<s_t>();
    for (int64_t d = 0; d < D; ++d) out[d] = static_cast<acc_t>(p[n == 1 ? 0 : d * step]);
  });
  return out;
}

template <typename acc_t>
void run(const Tensor& latents, const Tensor& mean, const Tensor& std, Tensor& out, bool channels_last) {
  const Geometry g{latents.size(0),   latents.size(1),   latents.size(2),
                   latents.stride(0), latents.stride(1), latents.stride(2)};
  const std::vector<acc_t> m = per_channel<acc_t>(mean, g.D), s = per_channel<acc_t>(std, g.D);
  dispatch_float(latents.scalar_type(), "denorm_transpose", [&](auto in_tag) {
    using in_t = decltype(in_tag);
    const in_t* in = latents.const_data_ptr<in_t>();
    dispatch_float(out.scalar_type(), "denorm_transpose", [&](auto out_tag) {
      using out_t = decltype(out_tag);
      if (channels_last) {
        scale_shift<in_t, out_t, acc_t>(in, out.mutable_data_ptr<out_t>(), m.data(), s.data(), g);
      } else {
        scale_shift_transpose<in_t, out_t, acc_t>(in, out.mutable_data_ptr<out_t>(), m.data(), s.data(), g);
      }
    });
  });
}

Tensor denorm_transpose_cpu(Tensor latents, Tensor mean, Tensor std, std::optional<ScalarType> dtype,
                            bool channels_last) {
  const ScalarType out_dtype = check_inputs(latents, mean, std, dtype);
  Tensor out = make_output(latents, out_dtype, channels_last);
  if (out.numel() == 0) return out;
  // float64 arithmetic when latents or the output are float64, float32 otherwise (also for half /
  // bfloat16, as PyTorch's opmath does)
  if (latents.scalar_type() == kDouble || out_dtype == kDouble) {
    run<double>(latents, mean, std, out, channels_last);
  } else {
    run<float>(latents, mean, std, out, channels_last);
  }
  return out;
}

// The path scale_shift / scale_shift_transpose take for float32/float16/bfloat16 with contiguous D.
std::string cpu_fast_path() {
#ifdef JASCO_FAST_X86
  return has_avx2() ? "avx2+f16c" : "portable";
#else
  return "portable";
#endif
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(jasco_fast, CPU, m) { m.impl("denorm_transpose", TORCH_BOX(&denorm_transpose_cpu)); }

// No tensor arguments, so no backend key to dispatch on: a device-independent kernel.
STABLE_TORCH_LIBRARY_IMPL(jasco_fast, CompositeImplicitAutograd, m) {
  m.impl("cpu_fast_path", TORCH_BOX(&cpu_fast_path));
}

}  // namespace jasco_fast
