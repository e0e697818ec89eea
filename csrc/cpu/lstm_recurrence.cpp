// CPU kernel of jasco_fast::lstm_skip at small batch (B <= kLstmRecurrenceMaxBatch).
//
// At B = 1 every step of an LSTM multiplies the whole recurrent matrix W_hh [4C, C] by one vector: the time
// goes into streaming W_hh (16 MB per layer in float32 for C = 1024), not into arithmetic. So, layer by layer:
//   1. the input projections of all T frames at once, one GEMM (ATen: oneDNN / AMX);
//   2. the recurrence, in ONE OpenMP parallel region per layer, synchronised once per step. The hidden units
//      go in groups of 16; whoever runs a group computes all four gate rows of its units, so the cell update
//      needs nothing from other threads. Each thread owns a fixed range of groups and reads the same part of
//      W_hh every step (its share stays in its own caches when it fits: the 8-bit format at C = 1024 is 2 MB
//      per thread on 2 threads), in alternating directions, so that the part its L2 still holds from the
//      step before comes first; a thread that has lost its core has its groups taken over (run_layer).
// W_hh is packed (jasco_fast::lstm_pack, once per weights; else once per call) into tiles that the matvec
// streams front to back: tile = TW packed rows
// (packed row p: unit group p / 64, gate (p % 64) / 16, unit 16 * (p / 64) + p % 16) x all C inputs,
// stored k-major ([k][TW]), so one vector load is TW consecutive rows at input k and no horizontal sums are
// needed. Formats: float32; bfloat16 kept 16-bit (two inputs k, k+1 per 32-bit lane: the high half is a
// float32 after masking, the low half after a 16-bit shift); int8 with a float32 scale per row, multiplied
// in integers by h in fixed point (vpdpbusd on AVX512-VNNI with a 16-bit h, tile_vnni; vpmaddubsw on other
// AVX2 CPUs with a 7-bit h, tile_maddubs; one tile layout), or widened to float32 where neither applies.
// State and the cell are float32 for every input dtype; so is accumulation, except the int32 sums of the
// integer int8 matvecs.
//
// Portability: built without -m flags. The matvec tiles, the cell and the int8 quantiser are compiled for
// AVX-512 and for AVX2 + FMA (tile_vnni for AVX512-VNNI), with function-level target attributes, and chosen
// at run time (cpu_isa(): __builtin_cpu_supports, lowered by JASCO_FAST_LSTM_ISA); other CPUs run plain
// loops (the same numbers up to float32 rounding, and the int8 format in float32 arithmetic).
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "../lstm_recurrence.h"
#include "../stable.h"
#include "cpu_isa.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define JASCO_FAST_X86 1
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*() (`__m512 __Y = __Y;`), which -Wall reports
// as uninitialised at every inlined use: a known false positive.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace jasco_fast {
namespace {

// kInt8Vnni: the int8 rows of kInt8, multiplied with integer dot products (vpdpbusd) by the hidden state in
// 16-bit fixed point (see VnniTileFn); CPUs with AVX512-VNNI. kInt8Maddubs: the same rows and tile layout,
// multiplied with vpmaddubsw by the hidden state in 7-bit fixed point (see tile_maddubs); CPUs with AVX2 but
// not AVX512-VNNI.
enum class WeightFormat { kFloat32, kBFloat16, kInt8, kInt8Vnni, kInt8Maddubs };

// How the integer matvecs get h: kVnniBytes (quantize_h: two offset bytes per input), kU7 (quantize_h7: one).
enum class HqFormat { kNone, kVnniBytes, kU7 };

constexpr int64_t kUnitGroup = 16;              // hidden units per group (a thread owns whole groups)
constexpr int64_t kGroupRows = 4 * kUnitGroup;  // packed gate rows per group: i, f, g, o of 16 units

// One tile of the matvec: pre[b * kGroupRows + r] = sum_k W[r, k] * h[b * h_stride + k] for the TW rows r of
// the tile (times the row scale for int8). `k_steps`: inputs (pairs of inputs for bfloat16). `ld`: the packed
// width, rows per input step in memory (>= TW: a pack serves every batch size, whose tiles are narrower).
using TileFn = void (*)(const void* tile, int64_t k_steps, int64_t ld, const float* h, int64_t h_stride,
                        const float* scale, float* pre);

// ---------------------------------------------------------------------------------------------------------
// Portable tiles: plain loops over the same packed layout.
template <WeightFormat F, int TW, int NB>
void tile_portable(const void* tile, int64_t k_steps, int64_t ld, const float* h, int64_t h_stride, const float* scale,
                   float* pre) {
  float acc[NB][TW] = {};
  for (int64_t k = 0; k < k_steps; ++k) {
    for (int r = 0; r < TW; ++r) {
      if constexpr (F == WeightFormat::kFloat32) {
        const float w = static_cast<const float*>(tile)[k * ld + r];
        for (int b = 0; b < NB; ++b) acc[b][r] += w * h[b * h_stride + k];
      } else if constexpr (F == WeightFormat::kBFloat16) {
        const uint32_t pair = static_cast<const uint32_t*>(tile)[k * ld + r];
        const uint32_t lo_bits = pair << 16, hi_bits = pair & 0xFFFF0000u;
        float lo, hi;
        std::memcpy(&lo, &lo_bits, 4);
        std::memcpy(&hi, &hi_bits, 4);
        for (int b = 0; b < NB; ++b) acc[b][r] += lo * h[b * h_stride + 2 * k] + hi * h[b * h_stride + 2 * k + 1];
      } else {
        const float w = static_cast<float>(static_cast<const int8_t*>(tile)[k * ld + r]);
        for (int b = 0; b < NB; ++b) acc[b][r] += w * h[b * h_stride + k];
      }
    }
  }
  for (int b = 0; b < NB; ++b)
    for (int r = 0; r < TW; ++r) pre[b * kGroupRows + r] = F == WeightFormat::kInt8 ? acc[b][r] * scale[r] : acc[b][r];
}

#ifdef JASCO_FAST_X86
#define JF_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma,avx2")))
#define JF_AVX2_FMA __attribute__((target("avx2,fma")))

// The instruction set the kernel uses (cpu_isa.h): JASCO_FAST_LSTM_ISA ("avx512", "avx2", "portable"; read once) lowers
// it, so that tests reach every path on one machine.
CpuIsa cpu_isa() {
  static const CpuIsa isa = cpu_isa_capped_by("JASCO_FAST_LSTM_ISA");
  return isa;
}
bool has_avx512() { return cpu_isa() >= CpuIsa::avx512; }
bool has_avx2_fma() { return cpu_isa() != CpuIsa::portable; }
// Integer dot products for the int8 format; JASCO_FAST_LSTM_ISA=avx512 keeps AVX-512 without them.
bool has_avx512_vnni() { return cpu_isa() == CpuIsa::avx512_vnni; }

// V vectors of 16 rows x NB batch columns of accumulators.
template <WeightFormat F, int V, int NB>
JF_AVX512 void tile_avx512(const void* tile, int64_t k_steps, int64_t ld, const float* h, int64_t h_stride,
                           const float* scale, float* pre) {
  __m512 acc[V][NB];
  for (int v = 0; v < V; ++v)
    for (int b = 0; b < NB; ++b) acc[v][b] = _mm512_setzero_ps();
  if constexpr (F == WeightFormat::kFloat32) {
    const float* p = static_cast<const float*>(tile);
    for (int64_t k = 0; k < k_steps; ++k, p += ld) {
      __m512 w[V];
      for (int v = 0; v < V; ++v) w[v] = _mm512_loadu_ps(p + 16 * v);
      for (int b = 0; b < NB; ++b) {
        const __m512 x = _mm512_set1_ps(h[b * h_stride + k]);
        for (int v = 0; v < V; ++v) acc[v][b] = _mm512_fmadd_ps(w[v], x, acc[v][b]);
      }
    }
  } else if constexpr (F == WeightFormat::kBFloat16) {
    const uint32_t* p = static_cast<const uint32_t*>(tile);
    const __m512i high_half = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
    for (int64_t k = 0; k < k_steps; ++k, p += ld) {
      __m512 lo[V], hi[V];  // inputs 2k and 2k + 1
      for (int v = 0; v < V; ++v) {
        const __m512i pair = _mm512_loadu_si512(p + 16 * v);
        lo[v] = _mm512_castsi512_ps(_mm512_slli_epi32(pair, 16));
        hi[v] = _mm512_castsi512_ps(_mm512_and_si512(pair, high_half));
      }
      for (int b = 0; b < NB; ++b) {
        const __m512 x0 = _mm512_set1_ps(h[b * h_stride + 2 * k]);
        const __m512 x1 = _mm512_set1_ps(h[b * h_stride + 2 * k + 1]);
        for (int v = 0; v < V; ++v) acc[v][b] = _mm512_fmadd_ps(hi[v], x1, _mm512_fmadd_ps(lo[v], x0, acc[v][b]));
      }
    }
  } else {
    const int8_t* p = static_cast<const int8_t*>(tile);
    for (int64_t k = 0; k < k_steps; ++k, p += ld) {
      __m512 w[V];
      for (int v = 0; v < V; ++v)
        w[v] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * v))));
      for (int b = 0; b < NB; ++b) {
        const __m512 x = _mm512_set1_ps(h[b * h_stride + k]);
        for (int v = 0; v < V; ++v) acc[v][b] = _mm512_fmadd_ps(w[v], x, acc[v][b]);
      }
    }
  }
  for (int v = 0; v < V; ++v) {
    const __m512 s = F == WeightFormat::kInt8 ? _mm512_loadu_ps(scale + 16 * v) : _mm512_set1_ps(1.0f);
    for (int b = 0; b < NB; ++b) _mm512_storeu_ps(pre + b * kGroupRows + 16 * v, _mm512_mul_ps(acc[v][b], s));
  }
}

// V vectors of 8 rows x NB batch columns of accumulators (16 registers: V * NB <= 8).
template <WeightFormat F, int V, int NB>
JF_AVX2_FMA void tile_avx2(const void* tile, int64_t k_steps, int64_t ld, const float* h, int64_t h_stride,
                           const float* scale, float* pre) {
  __m256 acc[V][NB];
  for (int v = 0; v < V; ++v)
    for (int b = 0; b < NB; ++b) acc[v][b] = _mm256_setzero_ps();
  if constexpr (F == WeightFormat::kFloat32) {
    const float* p = static_cast<const float*>(tile);
    for (int64_t k = 0; k < k_steps; ++k, p += ld) {
      __m256 w[V];
      for (int v = 0; v < V; ++v) w[v] = _mm256_loadu_ps(p + 8 * v);
      for (int b = 0; b < NB; ++b) {
        const __m256 x = _mm256_broadcast_ss(h + b * h_stride + k);
        for (int v = 0; v < V; ++v) acc[v][b] = _mm256_fmadd_ps(w[v], x, acc[v][b]);
      }
    }
  } else if constexpr (F == WeightFormat::kBFloat16) {
    const uint32_t* p = static_cast<const uint32_t*>(tile);
    const __m256i high_half = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
    for (int64_t k = 0; k < k_steps; ++k, p += ld) {
      __m256 lo[V], hi[V];
      for (int v = 0; v < V; ++v) {
        const __m256i pair = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 8 * v));
        lo[v] = _mm256_castsi256_ps(_mm256_slli_epi32(pair, 16));
        hi[v] = _mm256_castsi256_ps(_mm256_and_si256(pair, high_half));
      }
      for (int b = 0; b < NB; ++b) {
        const __m256 x0 = _mm256_broadcast_ss(h + b * h_stride + 2 * k);
        const __m256 x1 = _mm256_broadcast_ss(h + b * h_stride + 2 * k + 1);
        for (int v = 0; v < V; ++v) acc[v][b] = _mm256_fmadd_ps(hi[v], x1, _mm256_fmadd_ps(lo[v], x0, acc[v][b]));
      }
    }
  } else {
    const int8_t* p = static_cast<const int8_t*>(tile);
    for (int64_t k = 0; k < k_steps; ++k, p += ld) {
      __m256 w[V];
      for (int v = 0; v < V; ++v)
        w[v] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * v))));
      for (int b = 0; b < NB; ++b) {
        const __m256 x = _mm256_broadcast_ss(h + b * h_stride + k);
        for (int v = 0; v < V; ++v) acc[v][b] = _mm256_fmadd_ps(w[v], x, acc[v][b]);
      }
    }
  }
  for (int v = 0; v < V; ++v) {
    const __m256 s = F == WeightFormat::kInt8 ? _mm256_loadu_ps(scale + 8 * v) : _mm256_set1_ps(1.0f);
    for (int b = 0; b < NB; ++b) _mm256_storeu_ps(pre + b * kGroupRows + 8 * v, _mm256_mul_ps(acc[v][b], s));
  }
}

// The int8 format with integer arithmetic. Widening every int8 weight to float32 (sign-extend, convert, FMA:
// three instructions per 16 weights) made the int8 matvec instruction-bound, slower in bytes/s than float32
// (measured on Zen 5); vpdpbusd does 64 multiply-adds of bytes in one. It multiplies unsigned bytes by signed
// ones, so h (|h| <= 1: h = sigmoid(o) tanh(c)) goes in as two unsigned bytes per input: a = 127 h,
// hi = round(a), lo = round(254 (a - hi)), each stored + 128, so that h = (hi + lo / 254) / 127 to 1.6e-5
// (a 16-bit fixed point, far finer than the int8 weights). The sums are exact in int32; the + 128 offsets
// are taken out with 128 x the row's sum of q. Tile layout: [k / 4][TW rows][4 inputs k] bytes.
using VnniTileFn = void (*)(const void* tile, int64_t k4_steps, int64_t ld, const uint8_t* hq, int64_t hq_stride,
                            const float* scale, const int32_t* rowsum, float* pre);

#define JF_AVX512_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma,avx2")))

// V vectors of 16 rows x NB batch columns, two accumulators each (hi and lo bytes of h): 2 V NB <= 16.
// hq: batch column b's hi bytes at hq + 2 b hq_stride, its lo bytes hq_stride after them.
template <int V, int NB>
JF_AVX512_VNNI void tile_vnni(const void* tile, int64_t k4_steps, int64_t ld, const uint8_t* hq, int64_t hq_stride,
                              const float* scale, const int32_t* rowsum, float* pre) {
  __m512i hi[V][NB], lo[V][NB];
  for (int v = 0; v < V; ++v)
    for (int b = 0; b < NB; ++b) hi[v][b] = lo[v][b] = _mm512_setzero_si512();
  const int32_t* p = static_cast<const int32_t*>(tile);
  for (int64_t k = 0; k < k4_steps; ++k, p += ld) {
    __m512i w[V];
    for (int v = 0; v < V; ++v) w[v] = _mm512_loadu_si512(p + 16 * v);
    for (int b = 0; b < NB; ++b) {
      int32_t xh, xl;
      std::memcpy(&xh, hq + 2 * b * hq_stride + 4 * k, 4);
      std::memcpy(&xl, hq + (2 * b + 1) * hq_stride + 4 * k, 4);
      const __m512i vh = _mm512_set1_epi32(xh), vl = _mm512_set1_epi32(xl);
      for (int v = 0; v < V; ++v) {
        hi[v][b] = _mm512_dpbusd_epi32(hi[v][b], vh, w[v]);
        lo[v][b] = _mm512_dpbusd_epi32(lo[v][b], vl, w[v]);
      }
    }
  }
  for (int v = 0; v < V; ++v) {
    const __m512 s = _mm512_mul_ps(_mm512_loadu_ps(scale + 16 * v), _mm512_set1_ps(1.0f / 127));
    const __m512i offset = _mm512_slli_epi32(_mm512_loadu_si512(rowsum + 16 * v), 7);  // 128 sum_k q
    for (int b = 0; b < NB; ++b) {
      const __m512 fh = _mm512_cvtepi32_ps(_mm512_sub_epi32(hi[v][b], offset));
      const __m512 fl = _mm512_cvtepi32_ps(_mm512_sub_epi32(lo[v][b], offset));
      _mm512_storeu_ps(pre + b * kGroupRows + 16 * v,
                       _mm512_mul_ps(_mm512_fmadd_ps(fl, _mm512_set1_ps(1.0f / 254), fh), s));
    }
  }
}

// The int8 format with integer arithmetic on AVX2 (no vpdpbusd). vpmaddubsw multiplies 32 unsigned bytes by 32
// signed ones and adds pairs into int16 with saturation; vpmaddwd with ones adds those pairs into int32 (the
// sum of four products vpdpbusd makes, so the tiles are tile_vnni's, [k / 4][TW rows][4 inputs k] bytes):
// three instructions per 32 weights, against vpmovsxbw + vpmaddwd + add per 16 with h as int16 (1.5x the time;
// benchmarks/bench_avx2_integer.py). No pair sum may saturate: |q| <= 127 and u <= 127, so h goes in as one
// unsigned 7-bit byte, u = round(63 h) + 64 (quantize_h7; |h| <= 1), h = (u - 64) / 63 to 0.5 / 63. The
// + 64 offsets are taken out with 64 x the row's sum of q. That step costs 4 dB of the decode's worst-case SNR
// (52.5 -> 48.5 dB, bench_avx2_integer.py); the int32 sums are exact up to kMaddubsMaxInputs inputs.
constexpr int64_t kMaddubsMaxInputs = std::numeric_limits<int32_t>::max() / (127 * 127);  // |sum of u q|

// V vectors of 8 rows x NB batch columns of int32 accumulators. The accumulators are GCC vectors: with
// _mm256_add_epi32 GCC 12 copied each one to another register every step, and spilled one at V = 8.
typedef int32_t Int32x8 __attribute__((vector_size(32)));
// hq: batch column b's bytes at hq + 2 b hq_stride (the layout of tile_vnni's hi bytes).
template <int V, int NB>
JF_AVX2_FMA void tile_maddubs(const void* tile, int64_t k4_steps, int64_t ld, const uint8_t* hq, int64_t hq_stride,
                              const float* scale, const int32_t* rowsum, float* pre) {
  const int32_t* p = static_cast<const int32_t*>(tile);
  const __m256i ones = _mm256_set1_epi16(1);
  Int32x8 acc[V][NB];
  for (int v = 0; v < V; ++v)
    for (int b = 0; b < NB; ++b) acc[v][b] = Int32x8{};
  for (int64_t k = 0; k < k4_steps; ++k, p += ld) {
    __m256i x[NB];
    for (int b = 0; b < NB; ++b) {
      int32_t quad;
      std::memcpy(&quad, hq + 2 * b * hq_stride + 4 * k, 4);
      x[b] = _mm256_set1_epi32(quad);
    }
    for (int v = 0; v < V; ++v) {
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 8 * v));
      for (int b = 0; b < NB; ++b)
        acc[v][b] += reinterpret_cast<Int32x8>(_mm256_madd_epi16(_mm256_maddubs_epi16(x[b], w), ones));
    }
  }
  for (int v = 0; v < V; ++v) {
    const __m256 s = _mm256_mul_ps(_mm256_loadu_ps(scale + 8 * v), _mm256_set1_ps(1.0f / 63));
    const __m256i offset = _mm256_slli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rowsum + 8 * v)), 6);
    for (int b = 0; b < NB; ++b) {
      const __m256i sum = _mm256_sub_epi32(reinterpret_cast<__m256i>(acc[v][b]), offset);  // 64 sum_k q
      _mm256_storeu_ps(pre + b * kGroupRows + 8 * v, _mm256_mul_ps(_mm256_cvtepi32_ps(sum), s));
    }
  }
}
#endif

// The tile kernel and its width (rows) for this CPU, format and batch: as many accumulators as the
// registers hold (AVX-512: V * NB <= 16 of 32 registers; AVX2: <= 8 of 16), TW dividing kGroupRows.
struct Tiling {
  TileFn fn;
  int64_t width;
};

template <WeightFormat F, int NB>
Tiling tiling_for() {
#ifdef JASCO_FAST_X86
  if (has_avx512()) {
    constexpr int V = NB <= 4 ? 4 : 2;
    return {&tile_avx512<F, V, NB>, 16 * V};
  }
  if (has_avx2_fma()) {
    constexpr int V = NB <= 2 ? 4 : (NB <= 4 ? 2 : 1);
    return {&tile_avx2<F, V, NB>, 8 * V};
  }
#endif
  return {&tile_portable<F, 16, NB>, 16};
}

#ifdef JASCO_FAST_X86
struct VnniTiling {
  VnniTileFn fn;
  int64_t width;
};

template <bool kVnni, int NB>
VnniTiling vnni_tiling_for() {
  constexpr int V = NB <= 2 ? 4 : (NB <= 4 ? 2 : 1);
  if constexpr (kVnni) return {&tile_vnni<V, NB>, 16 * V};
  constexpr int VM = NB == 1 ? 8 : V;  // tile_maddubs keeps one weight vector live: B = 1 has room for 64 rows
  return {&tile_maddubs<VM, NB>, 8 * VM};
}

// The integer matvec of the int8 format for batch B: tile_vnni (kVnni) or tile_maddubs.
template <bool kVnni>
VnniTiling vnni_tiling_for(int64_t B) {
  switch (B) {
    case 1: return vnni_tiling_for<kVnni, 1>();
    case 2: return vnni_tiling_for<kVnni, 2>();
    case 3: return vnni_tiling_for<kVnni, 3>();
    case 4: return vnni_tiling_for<kVnni, 4>();
    case 5: return vnni_tiling_for<kVnni, 5>();
    case 6: return vnni_tiling_for<kVnni, 6>();
    case 7: return vnni_tiling_for<kVnni, 7>();
    default: return vnni_tiling_for<kVnni, 8>();
  }
}
#endif

// The packed format and h's format of the int8 integer matvec on this CPU (kInt8 / kNone: float tiles).
std::pair<WeightFormat, HqFormat> int8_integer_path() {
#ifdef JASCO_FAST_X86
  if (has_avx512_vnni()) return {WeightFormat::kInt8Vnni, HqFormat::kVnniBytes};
  if (has_avx2_fma()) return {WeightFormat::kInt8Maddubs, HqFormat::kU7};
#endif
  return {WeightFormat::kInt8, HqFormat::kNone};
}

template <WeightFormat F>
Tiling tiling_for(int64_t B) {
  switch (B) {
    case 1: return tiling_for<F, 1>();
    case 2: return tiling_for<F, 2>();
    case 3: return tiling_for<F, 3>();
    case 4: return tiling_for<F, 4>();
    case 5: return tiling_for<F, 5>();
    case 6: return tiling_for<F, 6>();
    case 7: return tiling_for<F, 7>();
    default: return tiling_for<F, 8>();
  }
}

Tiling tiling_for(WeightFormat f, int64_t B) {
  switch (f) {
    case WeightFormat::kFloat32: return tiling_for<WeightFormat::kFloat32>(B);
    case WeightFormat::kBFloat16: return tiling_for<WeightFormat::kBFloat16>(B);
    default: return tiling_for<WeightFormat::kInt8>(B);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Packing W_hh [4C, C] into tiles.

// A packed W_hh, read in place from a pack (see PackHeader): pointers into `owner`.
struct PackedRecurrent {
  WeightFormat format;
  int64_t C, groups, width, k_steps, tile_bytes;
  int64_t row_bytes;      // bytes of one row at one input step: tile_bytes / (k_steps * width)
  const uint8_t* data;    // the tiles, one after another
  const float* scale;     // int8 formats: [groups * kGroupRows] float32 in packed row order; else nullptr
  const int32_t* rowsum;  // kInt8Vnni, kInt8Maddubs: [groups * kGroupRows] int32, sum of each packed row's q
  Tensor owner;
};

// The original row of packed row p (-1 for padding units beyond C).
inline int64_t original_row(int64_t p, int64_t C) {
  const int64_t unit = p / kGroupRows * kUnitGroup + p % kUnitGroup;
  return unit < C ? (p % kGroupRows) / kUnitGroup * C + unit : -1;
}

// int8 rows: scale = max |w| / 127 (1 for a zero row), q = round-half-even(w / scale) clamped to +-127, all in
// float32 (exactly what dequantized_int8_rows computes with ATen ops). Returns the scale.
// Rows of float32 or bfloat16 weights (bfloat16 -> float32 is exact).
template <typename w_t>
float quantize_row_portable(const w_t* w, int64_t C, int8_t* q) {
  float amax = 0.0f;
  for (int64_t k = 0; k < C; ++k) amax = std::max(amax, std::fabs(static_cast<float>(w[k])));
  float s = amax / 127.0f;
  if (s == 0.0f) s = 1.0f;
  for (int64_t k = 0; k < C; ++k)
    q[k] = static_cast<int8_t>(std::clamp(std::nearbyint(static_cast<float>(w[k]) / s), -127.0f, 127.0f));
  return s;
}

#ifdef JASCO_FAST_X86
// The same arithmetic 16 lanes at a time (max is exact in any order; division and round-to-nearest-even are
// the IEEE operations), so both give identical bytes.
JF_AVX512 inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
JF_AVX512 inline __m512 load16(const BFloat16* p) {
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

template <typename w_t>
JF_AVX512 float quantize_row_avx512(const w_t* w, int64_t C, int8_t* q) {
  __m512 vmax = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= C; k += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(load16(w + k)));
  float amax = _mm512_reduce_max_ps(vmax);
  for (; k < C; ++k) amax = std::max(amax, std::fabs(static_cast<float>(w[k])));
  float s = amax / 127.0f;
  if (s == 0.0f) s = 1.0f;
  const __m512 vs = _mm512_set1_ps(s), lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
  for (k = 0; k + 16 <= C; k += 16) {
    const __m512 r =
        _mm512_roundscale_ps(_mm512_div_ps(load16(w + k), vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512i qi = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(r, lo), hi));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + k), _mm512_cvtsepi32_epi8(qi));
  }
  for (; k < C; ++k)
    q[k] = static_cast<int8_t>(std::clamp(std::nearbyint(static_cast<float>(w[k]) / s), -127.0f, 127.0f));
  return s;
}

JF_AVX2_FMA inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
JF_AVX2_FMA inline __m256 load8(const BFloat16* p) {
  const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
}

template <typename w_t>
JF_AVX2_FMA float quantize_row_avx2(const w_t* w, int64_t C, int8_t* q) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 vmax = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= C; k += 8) vmax = _mm256_max_ps(vmax, _mm256_and_ps(load8(w + k), abs_mask));
  float lanes[8];
  _mm256_storeu_ps(lanes, vmax);
  float amax = 0.0f;
  for (const float m : lanes) amax = std::max(amax, m);
  for (; k < C; ++k) amax = std::max(amax, std::fabs(static_cast<float>(w[k])));
  float s = amax / 127.0f;
  if (s == 0.0f) s = 1.0f;
  const __m256 vs = _mm256_set1_ps(s), lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  for (k = 0; k + 8 <= C; k += 8) {
    const __m256 r = _mm256_round_ps(_mm256_div_ps(load8(w + k), vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256i qi = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi));
    const __m128i q16 = _mm_packs_epi32(_mm256_castsi256_si128(qi), _mm256_extracti128_si256(qi, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + k), _mm_packs_epi16(q16, q16));
  }
  for (; k < C; ++k)
    q[k] = static_cast<int8_t>(std::clamp(std::nearbyint(static_cast<float>(w[k]) / s), -127.0f, 127.0f));
  return s;
}
#endif

template <typename w_t>
float quantize_row(const w_t* w, int64_t C, int8_t* q) {
#ifdef JASCO_FAST_X86
  if (has_avx512()) return quantize_row_avx512(w, C, q);
  if (has_avx2_fma()) return quantize_row_avx2(w, C, q);
#endif
  return quantize_row_portable(w, C, q);
}

// Tile t holds packed rows t * width ... + width - 1, k-major: tile[k * width + r]. The copies go in blocks
// of kPackBlock inputs, so the block of the tile being written stays in L1 while each source row is read
// front to back.
constexpr int64_t kPackBlock = 16;

template <typename src_t, typename dst_t, typename Get>
void transpose_into_tile(dst_t* tile, int64_t width, int64_t k_steps, const src_t* const* rows, Get get) {
  for (int64_t k0 = 0; k0 < k_steps; k0 += kPackBlock) {
    const int64_t k1 = std::min(k_steps, k0 + kPackBlock);
    for (int64_t r = 0; r < width; ++r)
      for (int64_t k = k0; k < k1; ++k) tile[k * width + r] = rows[r] ? get(rows[r], k) : dst_t(0);
  }
}

// A pack (jasco_fast::lstm_pack) is one uint8 tensor of one segment per layer: a PackHeader, then (int8
// formats) the row scales and row sums, then the tiles. Its size depends on C, the weights' dtype and the
// recurrent format family only (segment_bytes), not on this CPU: the layout (WeightFormat, width) is in the
// header, and lstm_skip refuses a pack whose layout is not the one this process packs for.
constexpr uint64_t kPackMagic = 0x4b41504d54534c4aULL;  // "JLSTMPAK"
constexpr int64_t kPackVersion = 2;                     // 2: the AVX2 int8 tiles take tile_vnni's layout
struct PackHeader {                                     // 64 bytes: the sections after it stay 64-byte aligned
  uint64_t magic;
  int64_t version, format, width, rows, cols, dtype, bytes;  // rows, cols: W_hh's [4C, C]; bytes: the segment's
};
static_assert(sizeof(PackHeader) == 64);

const char* format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::kFloat32: return "float32";
    case WeightFormat::kBFloat16: return "bfloat16";
    case WeightFormat::kInt8: return "int8 (float tiles)";
    case WeightFormat::kInt8Vnni: return "int8 (avx512_vnni tiles)";
    case WeightFormat::kInt8Maddubs: return "int8 (avx2_u7 tiles)";
  }
  return "?";
}

bool is_int8(WeightFormat f) {
  return f == WeightFormat::kInt8 || f == WeightFormat::kInt8Vnni || f == WeightFormat::kInt8Maddubs;
}

// The integer matvecs' layout: 4 inputs per 32-bit lane ([k / 4][rows][4] bytes), with row sums.
bool is_quad_int8(WeightFormat f) { return f == WeightFormat::kInt8Vnni || f == WeightFormat::kInt8Maddubs; }

// The width this process packs `format` in: the tile width at B = 1, the widest; every batch's tiles are
// TW = ld / 1, 2, 4 or 8 of it (tiling_for, vnni_tiling_for), which read a pack through `ld`.
int64_t pack_width(WeightFormat format) {
#ifdef JASCO_FAST_X86
  if (format == WeightFormat::kInt8Vnni) return vnni_tiling_for<true>(1).width;
  if (format == WeightFormat::kInt8Maddubs) return vnni_tiling_for<false>(1).width;
#endif
  return tiling_for(format == WeightFormat::kFloat32    ? WeightFormat::kFloat32
                    : format == WeightFormat::kBFloat16 ? WeightFormat::kBFloat16
                                                        : WeightFormat::kInt8,
                    1)
      .width;
}

// The layout this process packs a recurrent format (lstm_skip's resolved recurrent dtype) in.
WeightFormat packed_format_for(ScalarType recurrent) {
  if (recurrent == kChar) return int8_integer_path().first;
  return recurrent == kBFloat16 ? WeightFormat::kBFloat16 : WeightFormat::kFloat32;
}

int64_t packed_rows(int64_t C) { return (C + kUnitGroup - 1) / kUnitGroup * kGroupRows; }

// A segment's bytes for C, by family (the Python fake kernel states the same rule): every int8 layout gets
// room for scales, row sums and 4 x ceil(C / 4) bytes per row, the largest of them.
int64_t segment_bytes(WeightFormat format, int64_t C) {
  const int64_t rows = packed_rows(C);
  if (format == WeightFormat::kFloat32) return 64 + rows * C * 4;
  if (format == WeightFormat::kBFloat16) return 64 + rows * ((C + 1) / 2) * 4;
  return 64 + rows * 8 + rows * ((C + 3) / 4) * 4;
}

// The geometry of a segment of `format`, `width` for C (pointers unset).
PackedRecurrent packed_geometry(WeightFormat format, int64_t width, int64_t C) {
  PackedRecurrent p{};
  p.format = format;
  p.C = C;
  p.groups = (C + kUnitGroup - 1) / kUnitGroup;
  p.width = width;
  const bool quads = is_quad_int8(format);
  p.k_steps = format == WeightFormat::kBFloat16 ? (C + 1) / 2 : quads ? (C + 3) / 4 : C;
  p.row_bytes = format == WeightFormat::kInt8 ? 1 : 4;
  p.tile_bytes = p.k_steps * width * p.row_bytes;
  return p;
}

// Packs w_hh [4C, C] (CPU, float32 or bfloat16) into `seg` (segment_bytes(format, C) bytes, zeroed).
void pack_recurrent_into(const Tensor& w_hh, WeightFormat format, int64_t width, uint8_t* seg) {
  const int64_t C = w_hh.size(1), rows = packed_rows(C), tiles = rows / width;
  const PackedRecurrent p = packed_geometry(format, width, C);
  const PackHeader header{kPackMagic,
                          kPackVersion,
                          static_cast<int64_t>(format),
                          width,
                          w_hh.size(0),
                          C,
                          static_cast<int64_t>(w_hh.scalar_type()),
                          segment_bytes(format, C)};
  std::memcpy(seg, &header, sizeof header);
  const bool quads = is_quad_int8(format);
  if (quads) format = WeightFormat::kInt8;  // the same rows, another tile layout
  float* scale = nullptr;
  int32_t* rowsum = nullptr;
  uint8_t* out = seg + 64;
  if (format == WeightFormat::kInt8) {
    scale = reinterpret_cast<float*>(seg + 64);
    if (quads) rowsum = reinterpret_cast<int32_t*>(seg + 64 + rows * 4);
    out = seg + 64 + rows * 8;
  }
  // bfloat16 tiles from float32 weights: rounded to nearest even by ATen's conversion
  // (int8 reads float32 or bfloat16 rows as they are)
  const Tensor w = format == WeightFormat::kBFloat16 ? torch::stable::contiguous(torch::stable::to(w_hh, kBFloat16))
                   : format == WeightFormat::kInt8 && w_hh.scalar_type() == kBFloat16
                       ? torch::stable::contiguous(w_hh)
                       : torch::stable::contiguous(torch::stable::to(w_hh, kFloat));
  const bool bf16_source = w.scalar_type() == kBFloat16;

  torch::stable::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    std::vector<const void*> src(width);
    std::vector<int8_t> quantized(format == WeightFormat::kInt8 ? width * C : 0);
    for (int64_t t = t0; t < t1; ++t) {
      uint8_t* tile = out + t * p.tile_bytes;
      for (int64_t r = 0; r < width; ++r) {
        const int64_t row = original_row(t * width + r, C);
        src[r] = nullptr;
        if (rowsum) rowsum[t * width + r] = 0;
        if (row < 0) {
          if (scale) scale[t * width + r] = 1.0f;
        } else if (format == WeightFormat::kBFloat16) {
          src[r] = w.const_data_ptr<BFloat16>() + row * C;
        } else if (format == WeightFormat::kFloat32) {
          src[r] = w.const_data_ptr<float>() + row * C;
        } else {
          int8_t* q = quantized.data() + r * C;
          scale[t * width + r] = bf16_source ? quantize_row(w.const_data_ptr<BFloat16>() + row * C, C, q)
                                             : quantize_row(w.const_data_ptr<float>() + row * C, C, q);
          src[r] = quantized.data() + r * C;
          if (rowsum) {
            int32_t sum = 0;
            for (int64_t k = 0; k < C; ++k) sum += q[k];
            rowsum[t * width + r] = sum;
          }
        }
      }
      if (format == WeightFormat::kFloat32) {
        transpose_into_tile(reinterpret_cast<float*>(tile), width, C, reinterpret_cast<const float* const*>(src.data()),
                            [](const float* row, int64_t k) { return row[k]; });
      } else if (quads) {  // inputs 4k .. 4k + 3 in one 32-bit lane, first in the low byte
        transpose_into_tile(reinterpret_cast<uint32_t*>(tile), width, p.k_steps,
                            reinterpret_cast<const int8_t* const*>(src.data()), [C](const int8_t* row, int64_t k) {
                              uint32_t lane = 0;
                              for (int64_t j = 0; j < 4 && 4 * k + j < C; ++j)
                                lane |= static_cast<uint32_t>(static_cast<uint8_t>(row[4 * k + j])) << (8 * j);
                              return lane;
                            });
      } else if (format == WeightFormat::kInt8) {
        transpose_into_tile(reinterpret_cast<int8_t*>(tile), width, C,
                            reinterpret_cast<const int8_t* const*>(src.data()),
                            [](const int8_t* row, int64_t k) { return row[k]; });
      } else {  // inputs 2k (low half) and 2k + 1 (high half) in one 32-bit lane
        transpose_into_tile(reinterpret_cast<uint32_t*>(tile), width, p.k_steps,
                            reinterpret_cast<const uint16_t* const*>(src.data()), [C](const uint16_t* row, int64_t k) {
                              const uint32_t hi = 2 * k + 1 < C ? row[2 * k + 1] : 0;
                              return static_cast<uint32_t>(row[2 * k]) | (hi << 16);
                            });
      }
    }
  });
}

// A new pack of one layer's w_hh: a segment in its own tensor.
Tensor pack_segment(const Tensor& w_hh, WeightFormat format) {
  const int64_t width = pack_width(format);
  Tensor seg = torch::stable::new_zeros(w_hh, {segment_bytes(format, w_hh.size(1))}, kByte);
  pack_recurrent_into(w_hh, format, width, seg.mutable_data_ptr<uint8_t>());
  return seg;
}

// The segment at `offset` of `pack`, checked against layer `layer`'s w_hh and the layout `want`
// (op: the name errors start with). Returns it with its pointers set.
PackedRecurrent read_segment(const Tensor& pack, int64_t offset, const Tensor& w_hh, WeightFormat want, int64_t layer,
                             const char* op) {
  const int64_t size = pack.numel();
  JF_CHECK_VALUE(offset + 64 <= size, op, ": packed ends before layer ", layer, "'s segment (", size,
                 " bytes): not a pack of these weights");
  PackHeader h;
  std::memcpy(&h, pack.const_data_ptr<uint8_t>() + offset, sizeof h);
  JF_CHECK_VALUE(h.magic == kPackMagic && h.version == kPackVersion, op,
                 ": packed is not a jasco_fast::lstm_pack "
                 "pack of version ",
                 kPackVersion, " (layer ", layer, ")");
  const int64_t C = w_hh.size(1);
  JF_CHECK_VALUE(h.rows == w_hh.size(0) && h.cols == C, op, ": layer ", layer, "'s pack is of a [", h.rows, ", ",
                 h.cols, "] matrix, w_hh is ", shape(w_hh));
  JF_CHECK_VALUE(h.dtype == static_cast<int64_t>(w_hh.scalar_type()), op, ": layer ", layer, "'s pack was made from ",
                 dtype_name(static_cast<ScalarType>(h.dtype)), " weights, w_hh is ", dtype_name(w_hh.scalar_type()),
                 ": pack the weights again after converting them");
  const int64_t width = pack_width(want);
  JF_CHECK_VALUE(
      h.format == static_cast<int64_t>(want) && h.width == width, op, ": layer ", layer, "'s pack has ", "the layout ",
      format_name(static_cast<WeightFormat>(std::clamp<int64_t>(h.format, 0, 4))), ", width ", h.width,
      "; this call needs ", format_name(want), ", width ", width,
      " (the recurrent format and this process's CPU): pack again with this recurrent_dtype, in this process");
  JF_CHECK_VALUE(h.bytes == segment_bytes(want, C) && offset + h.bytes <= size, op, ": layer ", layer,
                 "'s pack segment has the wrong size");
  PackedRecurrent p = packed_geometry(want, width, C);
  const uint8_t* seg = pack.const_data_ptr<uint8_t>() + offset;
  const int64_t rows = packed_rows(C);
  p.scale = is_int8(want) ? reinterpret_cast<const float*>(seg + 64) : nullptr;
  p.rowsum = is_quad_int8(want) ? reinterpret_cast<const int32_t*>(seg + 64 + rows * 4) : nullptr;
  p.data = seg + (is_int8(want) ? 64 + rows * 8 : 64);
  p.owner = pack;
  return p;
}

// Every layer's segment of `packed`, checked against the weights and the recurrent format.
std::vector<PackedRecurrent> read_packs(const Tensor& packed, const std::vector<Tensor>& weights, int64_t num_layers,
                                        ScalarType recurrent) {
  const char* op = "lstm_skip";
  JF_CHECK_TYPE(packed.is_cpu() && packed.scalar_type() == kByte && packed.dim() == 1 && packed.is_contiguous(), op,
                ": packed must be a contiguous 1-D uint8 CPU tensor from jasco_fast::lstm_pack, got ",
                dtype_name(packed.scalar_type()), " ", shape(packed), " on ", device_name(packed));
  const WeightFormat want = packed_format_for(recurrent);
  std::vector<PackedRecurrent> packs;
  int64_t offset = 0;
  for (int64_t l = 0; l < num_layers; ++l) {
    packs.push_back(read_segment(packed, offset, weights[4 * l + 1], want, l, op));
    offset += segment_bytes(want, weights[4 * l + 1].size(1));
  }
  JF_CHECK_VALUE(offset == packed.numel(), op, ": packed holds more than num_layers = ", num_layers, " segments");
  return packs;
}

// ---------------------------------------------------------------------------------------------------------
// One layer's recurrence.

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// The cell of units j0 .. j0 + n - 1 (n <= 16, one unit group) of one batch entry: pre = the group's W_hh h
// rows (gate-major, 16 apart), x = the entry's input projections at this step ([4C]). Updates c, writes h to
// h_next and y, and to h_out / c_out when they are given (the state after state_frames frames).
struct CellArgs {
  const float* pre;
  const float* bias;
  float* c;
  float* h_next;
  float* y;
  float* h_out;
  float* c_out;
  uint8_t* hq = nullptr;                   // integer matvecs: h_next in hq_format (kVnniBytes: the hi bytes, the lo
  int64_t hq_stride = 0;                   // bytes hq_stride later; kU7: one byte per input)
  std::atomic<int>* non_finite = nullptr;  // integer matvecs: set when an h is NaN (hq cannot say so)
  HqFormat hq_format = HqFormat::kNone;
};

// h's two bytes for the integer matvec (tile_vnni); |h| <= 1.
inline void quantize_h(float h, uint8_t* hi, uint8_t* lo) {
  const float a = h * 127.0f, q = std::nearbyint(a);
  *hi = static_cast<uint8_t>(static_cast<int>(q) + 128);
  *lo = static_cast<uint8_t>(static_cast<int>(std::nearbyint((a - q) * 254.0f)) + 128);
}

// h's byte for tile_maddubs, round(63 h) + 64 in [1, 127]; |h| <= 1. A NaN goes in as 64 (the non_finite flag
// takes over).
inline uint8_t quantize_h7(float h) {
  const float q = std::nearbyint(h * 63.0f);
  return static_cast<uint8_t>(q == q ? static_cast<int>(q) + 64 : 64);
}

template <typename xp_t>
void cell_portable(const CellArgs& a, const xp_t* x, int64_t C, int64_t j0, int64_t n) {
  for (int64_t u = 0; u < n; ++u) {
    const int64_t j = j0 + u;
    const float gi = a.pre[u] + static_cast<float>(x[j]) + a.bias[j];
    const float gf = a.pre[kUnitGroup + u] + static_cast<float>(x[C + j]) + a.bias[C + j];
    const float gg = a.pre[2 * kUnitGroup + u] + static_cast<float>(x[2 * C + j]) + a.bias[2 * C + j];
    const float go = a.pre[3 * kUnitGroup + u] + static_cast<float>(x[3 * C + j]) + a.bias[3 * C + j];
    const float c = sigmoid(gf) * a.c[j] + sigmoid(gi) * std::tanh(gg);
    const float h = sigmoid(go) * std::tanh(c);
    a.c[j] = c;
    a.h_next[j] = h;
    a.y[j] = h;
    if (a.hq_format == HqFormat::kVnniBytes) quantize_h(h, a.hq + j, a.hq + a.hq_stride + j);
    if (a.hq_format == HqFormat::kU7) a.hq[j] = quantize_h7(h);
    if (a.hq_format != HqFormat::kNone && h != h) a.non_finite->store(1, std::memory_order_relaxed);
    if (a.h_out) {
      a.h_out[j] = h;
      a.c_out[j] = c;
    }
  }
}

#ifdef JASCO_FAST_X86
// exp in float32: exp(x) = 2^n exp(r), r = x - n ln 2 in two parts, exp(r) by Cephes' expf polynomial
// (within 2 ulp), 2^n by scalef (overflow to inf, underflow to 0).
JF_AVX512 inline __m512 exp_avx512(__m512 x) {
  // min / max return their second operand when either is NaN: a NaN x stays NaN (as std::exp keeps it)
  x = _mm512_min_ps(_mm512_set1_ps(120.0f), _mm512_max_ps(_mm512_set1_ps(-120.0f), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}
JF_AVX512 inline __m512 sigmoid_avx512(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  return _mm512_div_ps(one, _mm512_add_ps(one, exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}
// tanh x = 1 - 2 / (e^2x + 1): absolute error ~1e-7 near 0, exact limits +-1
JF_AVX512 inline __m512 tanh_avx512(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 e = exp_avx512(_mm512_add_ps(x, x));
  return _mm512_sub_ps(one, _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(e, one)));
}
JF_AVX512 inline __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
JF_AVX512 inline __m512 load16(const BFloat16* p, __mmask16 m) {
  const __m256i bits = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

template <typename xp_t>
JF_AVX512 void cell_avx512(const CellArgs& a, const xp_t* x, int64_t C, int64_t j0, int64_t n) {
  const __mmask16 m = static_cast<__mmask16>((1u << n) - 1);
  auto gate = [&](int g) JF_AVX512 {
    return _mm512_add_ps(_mm512_add_ps(_mm512_loadu_ps(a.pre + g * kUnitGroup), load16(x + g * C + j0, m)),
                         load16(a.bias + g * C + j0, m));
  };
  const __m512 i = sigmoid_avx512(gate(0)), f = sigmoid_avx512(gate(1)), g = tanh_avx512(gate(2)),
               o = sigmoid_avx512(gate(3));
  const __m512 c = _mm512_add_ps(_mm512_mul_ps(f, load16(a.c + j0, m)), _mm512_mul_ps(i, g));
  const __m512 h = _mm512_mul_ps(o, tanh_avx512(c));
  _mm512_mask_storeu_ps(a.c + j0, m, c);
  _mm512_mask_storeu_ps(a.h_next + j0, m, h);
  _mm512_mask_storeu_ps(a.y + j0, m, h);
  if (a.hq_format == HqFormat::kU7) {  // quantize_h7 (a NaN's byte is garbage: flagged below)
    const __m512 q =
        _mm512_roundscale_ps(_mm512_mul_ps(h, _mm512_set1_ps(63.0f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512i u = _mm512_add_epi32(_mm512_cvtps_epi32(q), _mm512_set1_epi32(64));
    _mm_mask_storeu_epi8(a.hq + j0, m, _mm512_cvtepi32_epi8(u));
    if (_mm512_mask_cmp_ps_mask(m, h, h, _CMP_UNORD_Q)) a.non_finite->store(1, std::memory_order_relaxed);
  }
  if (a.hq_format == HqFormat::kVnniBytes) {
    const __m512 s = _mm512_mul_ps(h, _mm512_set1_ps(127.0f));
    const __m512 hi = _mm512_roundscale_ps(s, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 lo = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_sub_ps(s, hi), _mm512_set1_ps(254.0f)),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512i offset = _mm512_set1_epi32(128);
    _mm_mask_storeu_epi8(a.hq + j0, m, _mm512_cvtepi32_epi8(_mm512_add_epi32(_mm512_cvtps_epi32(hi), offset)));
    _mm_mask_storeu_epi8(a.hq + a.hq_stride + j0, m,
                         _mm512_cvtepi32_epi8(_mm512_add_epi32(_mm512_cvtps_epi32(lo), offset)));
    if (_mm512_mask_cmp_ps_mask(m, h, h, _CMP_UNORD_Q)) a.non_finite->store(1, std::memory_order_relaxed);
  }
  if (a.h_out) {
    _mm512_mask_storeu_ps(a.h_out + j0, m, h);
    _mm512_mask_storeu_ps(a.c_out + j0, m, c);
  }
}

// The same cell in AVX2, 8 units at a time. exp: 2^n from the exponent bits, so x is clamped to +-87 (2^n
// stays a normal float32); beyond that sigmoid and tanh are within 1e-37 of 0 or +-1 either way.
JF_AVX2_FMA inline __m256 exp_avx2(__m256 x) {
  // min / max return their second operand when either is NaN: a NaN x stays NaN
  x = _mm256_min_ps(_mm256_set1_ps(87.0f), _mm256_max_ps(_mm256_set1_ps(-87.0f), x));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
JF_AVX2_FMA inline __m256 sigmoid_avx2(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  return _mm256_div_ps(one, _mm256_add_ps(one, exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}
JF_AVX2_FMA inline __m256 tanh_avx2(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 e = exp_avx2(_mm256_add_ps(x, x));
  return _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, one)));
}

// m of 8 lanes (m < 8: the last group of a C that is not a multiple of 16), the rest 0
JF_AVX2_FMA inline __m256 load8(const float* p, int64_t m, __m256i mask) {
  return m == 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, mask);
}
JF_AVX2_FMA inline __m256 load8(const BFloat16* p, int64_t m, __m256i) {
  uint16_t bits[8] = {};
  std::memcpy(bits, p, 2 * m);
  return _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bits))), 16));
}
JF_AVX2_FMA inline void store8(float* p, __m256 v, int64_t m, __m256i mask) {
  if (m == 8) {
    _mm256_storeu_ps(p, v);
  } else {
    _mm256_maskstore_ps(p, mask, v);
  }
}

template <typename xp_t>
JF_AVX2_FMA void cell_avx2(const CellArgs& a, const xp_t* x, int64_t C, int64_t j0, int64_t n) {
  for (int64_t u0 = 0; u0 < n; u0 += 8) {
    const int64_t m = std::min<int64_t>(8, n - u0), j = j0 + u0;
    const __m256i mask =
        _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(m)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    auto gate = [&](int g) JF_AVX2_FMA {
      return _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(a.pre + g * kUnitGroup + u0), load8(x + g * C + j, m, mask)),
                           load8(a.bias + g * C + j, m, mask));
    };
    const __m256 i = sigmoid_avx2(gate(0)), f = sigmoid_avx2(gate(1)), g = tanh_avx2(gate(2)),
                 o = sigmoid_avx2(gate(3));
    const __m256 c = _mm256_fmadd_ps(f, load8(a.c + j, m, mask), _mm256_mul_ps(i, g));
    const __m256 h = _mm256_mul_ps(o, tanh_avx2(c));
    store8(a.c + j, c, m, mask);
    store8(a.h_next + j, h, m, mask);
    store8(a.y + j, h, m, mask);
    if (a.hq_format == HqFormat::kU7) {  // quantize_h7, 8 lanes -> 8 bytes
      const __m256i u =
          _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(h, _mm256_set1_ps(63.0f)),
                                                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)),
                           _mm256_set1_epi32(64));
      const __m128i u16 = _mm_packs_epi32(_mm256_castsi256_si128(u), _mm256_extracti128_si256(u, 1));
      uint8_t out[16];
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm_packus_epi16(u16, u16));
      std::memcpy(a.hq + j, out, m);
    }
    if (a.hq_format != HqFormat::kNone) {
      if (a.hq_format == HqFormat::kVnniBytes) {  // not taken by this module's paths (VNNI CPUs run cell_avx512)
        float hs[8];
        _mm256_storeu_ps(hs, h);
        for (int64_t u = 0; u < m; ++u) quantize_h(hs[u], a.hq + j + u, a.hq + a.hq_stride + j + u);
      }
      if (_mm256_movemask_ps(_mm256_cmp_ps(h, h, _CMP_UNORD_Q)) & ((1 << m) - 1))
        a.non_finite->store(1, std::memory_order_relaxed);
    }
    if (a.h_out) {
      store8(a.h_out + j, h, m, mask);
      store8(a.c_out + j, c, m, mask);
    }
  }
}
#endif

struct LayerIo {
  int64_t B, T, C;
  int64_t state_frames;
  const float* bias;  // b_ih + b_hh, [4C] float32
  float* h;           // [2][B][h_stride]: h_{t-1} and h_t, float32, zero beyond C
  int64_t h_stride;
  float* c;      // [B][C]
  float* y;      // [B, T, C] float32: this layer's outputs
  float* h_out;  // [B][C]: the state after state_frames frames
  float* c_out;
  // integer matvecs only: h_{t-1} and h_t in hq_format, [2][B][hi, lo][hq_stride] bytes (kVnniBytes,
  // quantize_h; kU7, quantize_h7, uses the hi bytes only)
  uint8_t* hq = nullptr;
  int64_t hq_stride = 0;
  HqFormat hq_format = HqFormat::kNone;
};

// Step synchronisation that survives a descheduled thread. A plain barrier per step makes every thread wait
// for the slowest; on a machine whose cores are shared with other processes a thread loses its core for a
// time slice (milliseconds) at a time, and with a barrier per step (1000 per call here) the whole call then
// runs about 10x slower (measured: oneDNN's LSTM, which also synchronises per step, as much). So each thread
// owns a static range of unit groups (the same every step: its share of W_hh stays in its caches) and takes
// them one by one from a ticket counter; when its own are gone it takes the others' remaining ones; a step
// ends when all groups of the step are done (a counter of completed groups, not of arriving threads).
// Tickets and completions only grow: thread i's tickets of step t are [t n_i, (t + 1) n_i).
struct alignas(64) Counter {
  std::atomic<int64_t> value{0};
};

inline void spin_pause(int64_t& spins) {
  if (++spins < 2000) {
#ifdef JASCO_FAST_X86
    _mm_pause();
#endif
  } else {
    std::this_thread::yield();  // let a descheduled peer (or the process holding our core) run
  }
}

// xp: the input projections [B, T, 4C] (without biases), float32 or bfloat16.
// vnni_fn: the integer matvec of the kInt8Vnni or kInt8Maddubs format (else nullptr: tile_fn). tile_width: the
// rows either computes per call (it divides the pack's width w.width).
template <typename xp_t>
void run_layer(const PackedRecurrent& w, TileFn tile_fn, const void* vnni_fn, int64_t tile_width, const xp_t* xp,
               const LayerIo& io, int threads) {
  const int64_t B = io.B, T = io.T, C = io.C, G = w.groups, hs = io.h_stride;
  const int64_t tiles_per_group = kGroupRows / tile_width;
  const uint8_t* packed = w.data;
  const float* scale = w.scale;
  const int32_t* rowsum = w.rowsum;
  // sub-tile i of group g: packed rows r0 ... r0 + tile_width - 1, a slice of the pack's tile r0 / w.width
  auto tile_at = [&](int64_t r0) { return packed + r0 / w.width * w.tile_bytes + r0 % w.width * w.row_bytes; };
  const int64_t hqs = io.hq_stride;
  std::atomic<int> non_finite{0};
#ifdef JASCO_FAST_X86
  const CpuIsa cell_isa = cpu_isa();
#endif
  if (io.state_frames == 0) {  // the state after no frames: the initial one
    for (int64_t b = 0; b < B; ++b) {
      std::memcpy(io.h_out + b * C, io.h + b * hs, C * sizeof(float));
      std::memcpy(io.c_out + b * C, io.c + b * C, C * sizeof(float));
    }
  }
  std::vector<Counter> tickets(threads);
  Counter done;

#pragma omp parallel num_threads(threads)
  {
    const int64_t nth = omp_get_num_threads(), tid = omp_get_thread_num();
    std::vector<float> pre(B * kGroupRows);
    // one unit group at step t: the matvec tiles, then the cell of its units for every batch entry
    auto run_group = [&](int64_t g, int64_t t) {
      const float* h_prev = io.h + (t & 1) * B * hs;
      float* h_next = io.h + ((t + 1) & 1) * B * hs;
      // the cell's projections (a line per gate and batch entry, C values apart: four misses that would wait one after
      // another behind the matvec) and its output line, fetched while the matvec runs
      for (int64_t b = 0; b < B; ++b) {
        const xp_t* x = xp + (b * T + t) * 4 * C + g * kUnitGroup;
        for (int64_t gate = 0; gate < 4; ++gate) __builtin_prefetch(x + gate * C);
        __builtin_prefetch(io.y + (b * T + t) * C + g * kUnitGroup, 1);
      }
      if (vnni_fn == nullptr) {
        for (int64_t i = 0; i < tiles_per_group; ++i) {
          const int64_t r0 = g * kGroupRows + i * tile_width;
          tile_fn(tile_at(r0), w.k_steps, w.width, h_prev, hs, scale ? scale + r0 : nullptr,
                  pre.data() + i * tile_width);
        }
      } else if (non_finite.load(std::memory_order_relaxed)) {
        // a NaN in h_{t-1} makes every product with it NaN in float arithmetic; the bytes lost it
        std::fill(pre.begin(), pre.end(), std::numeric_limits<float>::quiet_NaN());
      } else {
#ifdef JASCO_FAST_X86
        const uint8_t* hq_prev = io.hq + (t & 1) * B * 2 * hqs;
        for (int64_t i = 0; i < tiles_per_group; ++i) {
          const int64_t r0 = g * kGroupRows + i * tile_width;
          reinterpret_cast<VnniTileFn>(vnni_fn)(tile_at(r0), w.k_steps, w.width, hq_prev, hqs, scale + r0,
                                                rowsum ? rowsum + r0 : nullptr, pre.data() + i * tile_width);
        }
#endif
      }
      const int64_t j0 = g * kUnitGroup, n = std::min(kUnitGroup, C - j0);
      const bool snapshot = t + 1 == io.state_frames;
      for (int64_t b = 0; b < B; ++b) {
        const CellArgs a{pre.data() + b * kGroupRows,
                         io.bias,
                         io.c + b * C,
                         h_next + b * hs,
                         io.y + (b * T + t) * C,
                         snapshot ? io.h_out + b * C : nullptr,
                         snapshot ? io.c_out + b * C : nullptr,
                         vnni_fn ? io.hq + (((t + 1) & 1) * B + b) * 2 * hqs : nullptr,
                         hqs,
                         &non_finite,
                         vnni_fn ? io.hq_format : HqFormat::kNone};
        const xp_t* x = xp + (b * T + t) * 4 * C;
#ifdef JASCO_FAST_X86
        if (cell_isa >= CpuIsa::avx512) {
          cell_avx512(a, x, C, j0, n);
          continue;
        }
        if (cell_isa >= CpuIsa::avx2) {
          cell_avx2(a, x, C, j0, n);
          continue;
        }
#endif
        cell_portable(a, x, C, j0, n);
      }
    };
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t k = 0; k < nth; ++k) {  // own groups first, then the others'
        const int64_t owner = (tid + k) % nth;
        const int64_t first = G * owner / nth, count = G * (owner + 1) / nth - first;
        std::atomic<int64_t>& next = tickets[owner].value;
        int64_t v = next.load(std::memory_order_relaxed);
        while (v < (t + 1) * count) {
          if (!next.compare_exchange_weak(v, v + 1, std::memory_order_relaxed)) continue;
          // odd steps walk the groups backwards: the end of a thread's share, still in its L2 from the step
          // before, is read first (serpentine order; 2 MB of int8 W_hh per thread against a 1 MB L2)
          const int64_t i = v - t * count;
          run_group(first + (t & 1 ? count - 1 - i : i), t);
          done.value.fetch_add(1, std::memory_order_release);  // publishes the group's h, c, y
          v = next.load(std::memory_order_relaxed);
        }
      }
      // every group reads all of h_prev in the next step: wait for the whole step
      int64_t spins = 0;
      while (done.value.load(std::memory_order_acquire) < (t + 1) * G) spin_pause(spins);
    }
  }
}

// Which arithmetic the int8 format's matvec takes on this CPU (JASCO_FAST_LSTM_ISA included), for callers
// whose error bounds depend on it: "avx512_vnni" (tile_vnni), "avx2_u7" (tile_maddubs) or "float32" (the
// weights widened to float32).
std::string lstm_int8_matvec() {
  switch (int8_integer_path().second) {
    case HqFormat::kVnniBytes: return "avx512_vnni";
    case HqFormat::kU7: return "avx2_u7";
    default: return "float32";
  }
}

}  // namespace

// jasco_fast::lstm_pack: every layer's W_hh packed for this process's kernel, one segment after another.
Tensor lstm_pack(const std::vector<Tensor>& w_hh, std::optional<ScalarType> recurrent_dtype) {
  JF_CHECK_VALUE(!w_hh.empty(), "lstm_pack: w_hh must hold at least one matrix");
  std::vector<WeightFormat> formats;
  int64_t total = 0;
  for (size_t l = 0; l < w_hh.size(); ++l) {
    const Tensor& w = w_hh[l];
    JF_CHECK_VALUE(w.dim() == 2 && w.size(1) >= 1 && w.size(0) == 4 * w.size(1), "lstm_pack: w_hh[", l,
                   "] must be [4C, C] with C >= 1, got ", shape(w));
    JF_CHECK_TYPE(w.is_cpu() && (w.scalar_type() == kFloat || w.scalar_type() == kBFloat16), "lstm_pack: w_hh[", l,
                  "] must be a float32 or bfloat16 CPU tensor (what the CPU kernel reads), "
                  "got ",
                  dtype_name(w.scalar_type()), " on ", device_name(w));
    formats.push_back(packed_format_for(recurrent_format(recurrent_dtype, w.scalar_type(), "lstm_pack")));
    total += segment_bytes(formats.back(), w.size(1));
  }
  Tensor pack = torch::stable::new_zeros(w_hh[0], {total}, kByte);
  int64_t offset = 0;
  for (size_t l = 0; l < w_hh.size(); ++l) {
    pack_recurrent_into(w_hh[l], formats[l], pack_width(formats[l]), pack.mutable_data_ptr<uint8_t>() + offset);
    offset += segment_bytes(formats[l], w_hh[l].size(1));
  }
  return pack;
}

// No tensor arguments, so no backend key to dispatch on: a device-independent kernel.
STABLE_TORCH_LIBRARY_IMPL(jasco_fast, CompositeImplicitAutograd, m) {
  m.impl("lstm_int8_matvec", TORCH_BOX(&lstm_int8_matvec));
}
// CPU tensors only, checked with a clear error rather than left to the dispatcher's
STABLE_TORCH_LIBRARY_IMPL(jasco_fast, CompositeExplicitAutograd, m) { m.impl("lstm_pack", TORCH_BOX(&lstm_pack)); }

void check_lstm_pack(const Tensor& packed, const std::vector<Tensor>& weights, int64_t num_layers,
                     ScalarType recurrent) {
  (void)read_packs(packed, weights, num_layers, recurrent);
}

bool lstm_recurrence_cpu_applies(const Tensor& seq, const std::vector<Tensor>& weights, int64_t num_layers) {
  if (!seq.is_cpu() || seq.dim() != 3) return false;
  const auto dtype = seq.scalar_type();
  if (dtype != kFloat && dtype != kBFloat16) return false;
  const int64_t B = seq.size(0), T = seq.size(1), C = seq.size(2);
  if (B < 1 || B > kLstmRecurrenceMaxBatch || T < 1 || C < 1) return false;
  if (static_cast<int64_t>(weights.size()) != 4 * num_layers) return false;
  for (int64_t i = 0; i < 4 * num_layers; ++i) {
    const Tensor& w = weights[i];
    if (!w.is_cpu() || w.scalar_type() != dtype) return false;
    const bool matrix = i % 4 < 2;
    if (matrix ? !(w.dim() == 2 && w.size(0) == 4 * C && w.size(1) == C) : !(w.dim() == 1 && w.size(0) == 4 * C))
      return false;
  }
  return true;
}

namespace {

// |h| <= 1 everywhere (false where h is NaN): h [B, C] float32 on the CPU, any strides.
bool all_within_unit(const Tensor& h) {
  const float* p = h.const_data_ptr<float>();
  const int64_t rows = h.size(0), cols = h.size(1), s0 = h.stride(0), s1 = h.stride(1);
  for (int64_t b = 0; b < rows; ++b)
    for (int64_t j = 0; j < cols; ++j)
      if (!(std::fabs(p[b * s0 + j * s1]) <= 1.0f)) return false;
  return true;
}

}  // namespace

// x [M, C] (contiguous) times w_ih [4C, C] transposed: [M, 4C] contiguous. float32 as a 1x1 channels-last
// convolution, which ATen runs through oneDNN: at::mm's MKL sgemm takes its AVX2 code on AMD CPUs (Zen 5, 2
// threads, M = 257, C = 1024: 16.1 against 12.7 ms with oneDNN's weight reorder included).
// The stable ABI cannot ask whether oneDNN is on, so float32 always takes aten::conv2d (oneDNN when enabled, ATen's own
// convolution otherwise).
Tensor input_projections(const Tensor& x, const Tensor& w_ih) {
  if (x.scalar_type() != kFloat) {
    auto s = call_op("aten::mm", "", x, torch::stable::transpose(w_ih, 0, 1));
    return result(s);
  }
  const int64_t M = x.size(0), C = x.size(1), G = w_ih.size(0);
  auto strided = call_op("aten::as_strided", "", x, std::vector<int64_t>{1, C, 1, M},
                         std::vector<int64_t>{M * C, 1, M * C, C}, std::optional<int64_t>());
  const Tensor xin = result(strided);  // [1, C, 1, M] channels-last
  auto conv = call_op("aten::conv2d", "", xin, torch::stable::view(torch::stable::contiguous(w_ih), {G, C, 1, 1}),
                      std::optional<Tensor>(), std::vector<int64_t>{1, 1}, std::vector<int64_t>{0, 0},
                      std::vector<int64_t>{1, 1}, int64_t{1});
  const Tensor y = result(conv);
  auto permuted = call_op("aten::permute", "", y, std::vector<int64_t>{0, 2, 3, 1});
  return torch::stable::contiguous(torch::stable::reshape(result(permuted), {M, G}));
}

std::tuple<Tensor, Tensor, Tensor> lstm_skip_recurrence_cpu(const Tensor& seq, const std::vector<Tensor>& weights,
                                                            int64_t num_layers, const Tensor& h0, const Tensor& c0,
                                                            int64_t state_frames, ScalarType recurrent,
                                                            const std::optional<Tensor>& packed) {
  const int64_t B = seq.size(0), T = seq.size(1), C = seq.size(2);
  const std::vector<PackedRecurrent> packs =
      packed.has_value() ? read_packs(*packed, weights, num_layers, recurrent) : std::vector<PackedRecurrent>{};
  const bool bf16 = seq.scalar_type() == kBFloat16;
  const WeightFormat format = recurrent == kChar       ? WeightFormat::kInt8
                              : recurrent == kBFloat16 ? WeightFormat::kBFloat16
                                                       : WeightFormat::kFloat32;
  const Tiling tiling = tiling_for(format, B);
  const int64_t groups = (C + kUnitGroup - 1) / kUnitGroup;
  // only the threads ATen may use; one when called from inside a parallel region. The stable ABI has no
  // at::in_parallel_region (torch_get_thread_idx is 0 outside a region and in a region's first thread alike);
  // ATen's parallel backend is OpenMP, whose runtime this extension shares, and there that function is
  // omp_in_parallel().
  const int threads =
      omp_in_parallel() ? 1 : static_cast<int>(std::min<int64_t>(torch::stable::get_num_threads(), groups));

  const int64_t h_stride = (C + 15) / 16 * 16;  // zero-padded: the bfloat16 tiles read h in pairs
  Tensor h_buf = torch::stable::new_zeros(seq, {2, B, h_stride}, kFloat);
  Tensor c_buf = torch::stable::new_empty(seq, {B, C}, kFloat);
  Tensor h_n = torch::stable::new_empty(seq, {num_layers, B, C}, kFloat);
  Tensor c_n = torch::stable::new_empty(seq, {num_layers, B, C}, kFloat);
  const Tensor h0_f = torch::stable::to(h0, kFloat), c0_f = torch::stable::to(c0, kFloat);
  Tensor x = torch::stable::contiguous(seq);  // this layer's input, [B, T, C]
  Tensor y, hq_buf;
  for (int64_t l = 0; l < num_layers; ++l) {
    const Tensor& w_ih = weights[4 * l];
    const Tensor& w_hh = weights[4 * l + 1];
    // b_ih + b_hh: ATen's sub is its add with -alpha (aten::add's Scalar alpha does not cross the stable ABI)
    const Tensor bias = torch::stable::subtract(torch::stable::to(weights[4 * l + 2], kFloat),
                                                torch::stable::to(weights[4 * l + 3], kFloat), -1.0);
    // all T input projections in one GEMM, in the weights' dtype (bfloat16: oneDNN's AMX/AVX-512 GEMM,
    // float32 accumulation, rounded once to bfloat16 as ATen's bfloat16 LSTM does)
    const Tensor xp =
        input_projections(torch::stable::to(torch::stable::reshape(x, {B * T, C}), w_ih.scalar_type()), w_ih);
    // the integer matvec needs |h| <= 1, which every computed h satisfies; a given h0 outside it (or not
    // finite) takes the float int8 tiles for this layer
    const Tensor h0_l = torch::stable::select(h0_f, 0, l);
    const void* vnni_fn = nullptr;
    int64_t width = tiling.width;
    WeightFormat packed_format = format;
    const auto [integer_format, hq_format] = int8_integer_path();
#ifdef JASCO_FAST_X86
    if (format == WeightFormat::kInt8 && hq_format != HqFormat::kNone && all_within_unit(h0_l) &&
        (hq_format != HqFormat::kU7 || C <= kMaddubsMaxInputs)) {
      const VnniTiling vt = hq_format == HqFormat::kVnniBytes ? vnni_tiling_for<true>(B) : vnni_tiling_for<false>(B);
      vnni_fn = reinterpret_cast<const void*>(vt.fn);
      width = vt.width;
      packed_format = integer_format;
    }
#endif
    // the given pack, unless this layer takes the float int8 tiles (an h0 outside [-1, 1]): then, as without
    // a pack, this call packs W_hh itself
    const bool own_pack = packs.empty() || packed_format != packs[l].format;
    const PackedRecurrent w_packed =
        own_pack ? read_segment(pack_segment(w_hh, packed_format), 0, w_hh, packed_format, l, "lstm_skip") : packs[l];

    torch::stable::zero_(h_buf);
    Tensor h_first = torch::stable::select(h_buf, 0, 0);
    Tensor h_first_c = torch::stable::narrow(h_first, 1, 0, C);
    torch::stable::copy_(h_first_c, h0_l);
    torch::stable::copy_(c_buf, torch::stable::select(c0_f, 0, l));
    y = torch::stable::new_empty(seq, {B, T, C}, kFloat);
    LayerIo io{B,
               T,
               C,
               state_frames,
               bias.const_data_ptr<float>(),
               h_buf.mutable_data_ptr<float>(),
               h_stride,
               c_buf.mutable_data_ptr<float>(),
               y.mutable_data_ptr<float>(),
               torch::stable::select(h_n, 0, l).mutable_data_ptr<float>(),
               torch::stable::select(c_n, 0, l).mutable_data_ptr<float>()};
    if (vnni_fn) {
      io.hq_stride = h_stride;  // a multiple of 16: the tiles read 4 bytes at a time, zero weights beyond C
      io.hq_format = hq_format;
      const bool bytes = hq_format == HqFormat::kVnniBytes;
      hq_buf = torch::stable::full({2, B, 2, h_stride}, bytes ? 128 : 64, kByte, std::nullopt,
                                   seq.device());  // h = 0 beyond C
      io.hq = hq_buf.mutable_data_ptr<uint8_t>();
      const Tensor h0_c = torch::stable::contiguous(h0_l);
      const float* h0p = h0_c.const_data_ptr<float>();
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t j = 0; j < C; ++j) {
          if (bytes) {
            quantize_h(h0p[b * C + j], io.hq + b * 2 * h_stride + j, io.hq + (b * 2 + 1) * h_stride + j);
          } else {
            io.hq[b * 2 * h_stride + j] = quantize_h7(h0p[b * C + j]);
          }
        }
      }
    }
    if (bf16) {
      run_layer(w_packed, tiling.fn, vnni_fn, width, xp.const_data_ptr<BFloat16>(), io, threads);
    } else {
      run_layer(w_packed, tiling.fn, vnni_fn, width, xp.const_data_ptr<float>(), io, threads);
    }
    x = y;
  }
  // the skip connection, rounded once to seq's dtype (a float32 sum: bfloat16 seq promotes); [B, T, C]
  // contiguous whatever seq's strides
  Tensor out = torch::stable::empty(seq.sizes(), seq.scalar_type(), std::nullopt, seq.device(), std::nullopt,
                                    MemoryFormat::Contiguous);
  skip_sum_into(out, y, seq);
  if (bf16) return {out, torch::stable::to(h_n, kBFloat16), torch::stable::to(c_n, kBFloat16)};
  return {out, h_n, c_n};
}

}  // namespace jasco_fast
