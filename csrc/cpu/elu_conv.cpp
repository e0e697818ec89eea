// CPU kernels of jasco_fast::elu_resblock and jasco_fast::elu_conv: the long, narrow end of the SEANet decoder.
//
// For 10 s at 32 kHz the last residual block and the final convolution see 64 channels x 320 000 samples. There
// oneDNN's direct convolutions run far below the machine's FLOP rate (the 64 -> 1 final conv at ~1/15 of its
// floor, docs/design/decode-cpu.md), and every separate op (activation, padding, conv, add) is another pass
// over an 82 MB activation. Here a tile of time steps goes through activation, convolution, activation, 1x1
// convolution and residual add while it sits in the L2 cache, as register-blocked float32 GEMMs.
//
// Portability: built without -m flags; the AVX-512 and AVX2+FMA copies of the loops (elu_conv_kernels.h) are
// compiled with function-level target attributes and chosen at run time, else a portable copy runs. Channel
// counts that are not a multiple of the vector width take a narrower copy.
// bfloat16 residual blocks on CPUs with AVX512-BF16 and without AMX run a copy whose GEMMs are bfloat16 dot
// products (vdpbf16ps: two products per float32 lane), with the activations rounded to bfloat16 between the
// layers as the unfused bfloat16 block rounds them. On AMD Zen 5 vdpbf16ps runs at the FMA's rate, twice the
// float32 copy's FLOP rate; on an Intel CPU with AMX it issued at half rate (1.4x the float32 copy's time), so
// there the float32 copy stays.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define JASCO_FAST_X86 1
#endif

#include "../stable.h"
#include "cpu_isa.h"

namespace jasco_fast {
namespace {

enum class PadMode { constant, reflect, replicate, circular };

// Where padded position q (relative to the unpadded start) reads from: an index in [0, T), or -1 for a zero.
// Reflect on an input no longer than the padding reflects a zero-extended copy of it, as SEANet does.
struct PadMap {
  PadMode mode;
  int64_t T;
  int64_t extended;  // T plus the zero extension (reflect only)

  int64_t operator()(int64_t q) const {
    if (q >= 0 && q < T) return q;
    switch (mode) {
      case PadMode::constant: return -1;
      case PadMode::replicate: return q < 0 ? 0 : T - 1;
      case PadMode::circular: return ((q % T) + T) % T;
      case PadMode::reflect: {
        if (q >= T && q < extended) return -1;
        const int64_t r = q < 0 ? -q : 2 * (extended - 1) - q;
        return r < T ? r : -1;
      }
    }
    return -1;
  }
};

// x and out: [B, T, C] memory (channels-last [B, C, 1, T]); conv1 C -> H (k taps), conv2 H -> C (1x1).
template <typename scalar_t>
struct ResblockArgs {
  const scalar_t* x;
  scalar_t* out;
  int64_t B, T, C, H, k, dilation, pad_left, tile;
  PadMap map;
  const float* w1;  // [k, C, H]
  const float* b1;  // [H]
  const float* w2;  // [H, C]
  const float* b2;  // [C]
  float alpha;
};

// x: [B, T, C] memory, out: [B, T, Cout] memory.
template <typename scalar_t>
struct ConvArgs {
  const scalar_t* x;
  scalar_t* out;
  int64_t T, C, Cout, k, dilation, pad_left, tile;
  PadMap map;
  const float* w;     // [Cout, k, C]
  const float* bias;  // [Cout]
  float alpha;
};

// A transposed convolution (stride r, k taps) as a convolution over its input rows: untrimmed output samples
// [u * r, u * r + r) (channels innermost: N = r * Cout values, contiguous in the channels-last output) are
// bias + sum over j < taps = ceil(k / r) of elu(x[u - taps + 1 + j]) times a [C, N] matrix, for rows
// 0 <= u < T + taps - 1 (x is zero outside [0, T)). The trimmed output is the flat range
// [out_begin, out_begin + out_len) of those rows' values.
// Where k is not a multiple of r, kernel positions k..taps * r - 1 are zero weights: an infinite activation there
// gives NaN where the layers give +-inf (SEANet's k = 2r pads nothing).
template <typename scalar_t>
struct ConvTransposeArgs {
  const scalar_t* x;  // [B, T, C] memory
  scalar_t* out;      // [B, out_len / Cout, Cout] memory
  int64_t T, C, N, taps, tile, out_begin, out_len;
  const float* w;     // [taps, C, N] (float copies; the bfloat16 copy takes its own)
  const float* bias;  // [N]: the bias once per phase
  float alpha;
};

// The x rows that padded positions first + r (r < n) read: nullptr where the padding is zero and for r >= needed
// (the rows a tile pads out to its register blocks).
template <typename scalar_t>
void padded_rows(const PadMap& map, const scalar_t* x, int64_t C, int64_t first, int64_t needed, int64_t n,
                 const scalar_t** out) {
  for (int64_t r = 0; r < n; ++r) {
    const int64_t src = r < needed ? map(first + r) : -1;
    out[r] = src < 0 ? nullptr : x + src * C;
  }
}

// The tile walk of a residual block, shared by the copies of its loops. For each tile of time steps:
// fill(srcs, n, act) writes elu of the x rows srcs[0..n) (nullptr: zeros) as conv1's padded input (n rows of C
// act_t values); conv1(act, rows, hidden, ahead, ahead_bytes) adds conv1's products to hidden (rows x H floats,
// set to b1 first) and may prefetch [ahead, ahead + ahead_bytes), the next tile's input; residual(xs, rows, y)
// sets row r of y to the x row xs[r] plus b2; conv2(hidden, rows, valid, y) activates hidden (rows of which the first
// `valid` are the tile's outputs) and adds conv2's products to y; store(src, dst, n) rounds n values into the output.
template <typename act_t, typename scalar_t, typename Fill, typename Conv1, typename Residual, typename Conv2,
          typename Store>
void resblock_walk(const ResblockArgs<scalar_t>& p, int64_t row_block, int64_t begin, int64_t end, Fill fill,
                   Conv1 conv1, Residual residual, Conv2 conv2, Store store) {
  const int64_t C = p.C, H = p.H, span = (p.k - 1) * p.dilation;
  const int64_t tiles = (p.T + p.tile - 1) / p.tile;
  std::vector<act_t> act((p.tile + span) * C);
  std::vector<float> hidden(p.tile * H), y(p.tile * C);
  std::vector<const scalar_t*> rows_of_x(p.tile + span);
  for (int64_t job = begin; job < end; ++job) {
    const int64_t b = job / tiles, t0 = (job % tiles) * p.tile;
    const int64_t valid = std::min(p.tile, p.T - t0);
    const int64_t rows = (valid + row_block - 1) / row_block * row_block;
    const scalar_t* x = p.x + b * p.T * C;
    // conv1's padded input: elu(x) at the positions the tile's outputs read, zeros where the padding is zero
    padded_rows(p.map, x, C, t0 - p.pad_left, valid + span, rows + span, rows_of_x.data());
    fill(rows_of_x.data(), rows + span, act.data());
    for (int64_t r = 0; r < rows; ++r) std::copy(p.b1, p.b1 + H, hidden.data() + r * H);
    // the next tile (or the next batch item's first tile) starts where this one's input ends
    const char* ahead = reinterpret_cast<const char*>(x + (t0 + valid) * C);
    const int64_t ahead_bytes =
        std::min<int64_t>(p.tile * C, (p.B * p.T - b * p.T - t0 - valid) * C) * static_cast<int64_t>(sizeof(scalar_t));
    conv1(act.data(), rows, hidden.data(), ahead, ahead_bytes);
    // y = x + b2 + conv2(elu(hidden)), rows past the sequence end read x's last valid row (discarded)
    for (int64_t r = 0; r < rows; ++r) rows_of_x[r] = x + (t0 + std::min(r, valid - 1)) * C;
    residual(rows_of_x.data(), rows, y.data());
    conv2(hidden.data(), rows, valid, y.data());
    store(y.data(), p.out + (b * p.T + t0) * C, valid * C);
  }
}

// The tile walk of a transposed convolution, shared by the copies of its loops. For each tile of rows u:
// fill(srcs, n, act) writes elu of the x rows srcs[0..n) (x[q] for q in [0, T), nullptr: zeros) as n activation
// rows of C values; gemm(act, rows,
// y) adds the tile's products to y (rows x N floats, set to the bias first); store(src, dst, n) rounds n values
// into the output. act_t: the activation buffer's element type.
template <typename act_t, typename scalar_t, typename Fill, typename Gemm, typename Store>
void conv_transpose_walk(const ConvTransposeArgs<scalar_t>& p, int64_t row_block, int64_t begin, int64_t end, Fill fill,
                         Gemm gemm, Store store) {
  const int64_t C = p.C, N = p.N, halo = p.taps - 1, rows_total = p.T + halo;
  const int64_t tiles = (rows_total + p.tile - 1) / p.tile;
  std::vector<act_t> act((p.tile + halo) * C);
  std::vector<float> y(p.tile * N);
  std::vector<const scalar_t*> rows_of_x(p.tile + halo);
  for (int64_t job = begin; job < end; ++job) {
    const int64_t b = job / tiles, u0 = (job % tiles) * p.tile;
    const int64_t valid = std::min(p.tile, rows_total - u0);
    // the flat range of untrimmed outputs this tile covers, clipped to what the trim keeps
    const int64_t lo = std::max(u0 * N, p.out_begin), hi = std::min((u0 + valid) * N, p.out_begin + p.out_len);
    if (lo >= hi) continue;
    const int64_t rows = (valid + row_block - 1) / row_block * row_block;
    const scalar_t* x = p.x + b * p.T * C;
    for (int64_t r = 0; r < rows + halo; ++r) {
      const int64_t q = u0 + r - halo;
      rows_of_x[r] = q >= 0 && q < p.T && r < valid + halo ? x + q * C : nullptr;
    }
    fill(rows_of_x.data(), rows + halo, act.data());
    for (int64_t r = 0; r < rows; ++r) std::copy(p.bias, p.bias + N, y.data() + r * N);
    gemm(act.data(), rows, y.data());
    store(y.data() + (lo - u0 * N), p.out + b * p.out_len + (lo - p.out_begin), hi - lo);
  }
}

// Prefetches row block `block`'s share (of `blocks`) of [ahead, ahead + bytes) into L2: spread over a tile's
// register blocks, the next tile's input streams in while this tile computes instead of stalling its first pass.
inline void prefetch_share(const char* ahead, int64_t bytes, int64_t block, int64_t blocks) {
  if (ahead == nullptr) return;
  const int64_t lines = (bytes / 64 + blocks - 1) / std::max<int64_t>(blocks, 1);
  const int64_t first = block * lines * 64;
  for (int64_t b = first; b < std::min(bytes, first + lines * 64); b += 64) __builtin_prefetch(ahead + b, 0, 2);
}

#define JF_ISA portable
#define JF_TARGET
#define JF_WIDTH 1
#include "elu_conv_kernels.h"
#undef JF_ISA
#undef JF_TARGET
#undef JF_WIDTH

#ifdef JASCO_FAST_X86
#define JF_ISA avx2
#define JF_TARGET __attribute__((target("avx2,fma")))
#define JF_WIDTH 8
#include "elu_conv_kernels.h"
#undef JF_ISA
#undef JF_TARGET
#undef JF_WIDTH

#define JF_ISA avx512
#define JF_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define JF_WIDTH 16
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12's own AVX-512 headers (_mm512_undefined_*)
#include "elu_conv_kernels.h"
#pragma GCC diagnostic pop
#undef JF_ISA
#undef JF_TARGET
#undef JF_WIDTH
#endif

// The copy of the loops this CPU runs (cpu_isa.h): JASCO_FAST_TAIL_ISA ("avx512", "avx2", "portable"; read once)
// lowers it, so that tests reach every copy on one machine.
CpuIsa tail_isa() {
  static const CpuIsa isa = cpu_isa_capped_by("JASCO_FAST_TAIL_ISA");
  return isa;
}

#ifdef JASCO_FAST_X86
#define JF_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")))

// Whether bfloat16 activations take the bfloat16 dot-product copy: AVX512-BF16 without AMX, and no
// JASCO_FAST_TAIL_ISA / JASCO_FAST_ISA cap (any cap, "avx512" included, keeps the float32 copies: tests reach both).
bool use_bf16_dot() {
  static const bool use = [] {
    return !isa_capped("JASCO_FAST_TAIL_ISA") && tail_isa() >= CpuIsa::avx512 && __builtin_cpu_supports("avx512bf16") &&
           !cpu_has_amx_tile();
  }();
  return use;
}

// Weights [O, I, 1, k] bfloat16 -> [k][I / 2][O] 32-bit lanes holding the pair of inputs 2i (low half), 2i + 1.
Tensor pack_taps_bf16_pairs(const Tensor& w) {
  const int64_t O = w.size(0), I = w.size(1), k = w.size(3), I2 = I / 2;
  const Tensor src = torch::stable::contiguous(w, MemoryFormat::ChannelsLast);  // memory [O][k][I]
  Tensor out = torch::stable::empty({k, I2, O}, kInt, std::nullopt, w.device(), std::nullopt, MemoryFormat::Contiguous);
  const uint16_t* s = reinterpret_cast<const uint16_t*>(src.const_data_ptr<BFloat16>());
  uint32_t* d = reinterpret_cast<uint32_t*>(out.mutable_data_ptr<int32_t>());
  torch::stable::parallel_for(0, k * I2, 16, [&](int64_t begin, int64_t end) {
    for (int64_t job = begin; job < end; ++job) {
      const int64_t j = job / I2, i2 = job % I2;
      for (int64_t o = 0; o < O; ++o) {
        const uint16_t* row = s + (o * k + j) * I + 2 * i2;
        d[job * O + o] = static_cast<uint32_t>(row[0]) | (static_cast<uint32_t>(row[1]) << 16);
      }
    }
  });
  return out;
}

// acc[r][v] (kRows rows, NV vectors of 16 outputs) += sum over taps j and input pairs c of the activation pair
// a[(r + j * tap_step) * lda + 2c, +1] times the weight pair w[(j * K2 + c) * N + 16 v]; out holds the block.
template <int NV>
JF_BF16 void block_gemm_bf16(const uint16_t* a, int64_t lda, int64_t K2, int64_t taps, int64_t tap_step,
                             const uint32_t* w, int64_t N, float* out, int64_t ldo) {
  constexpr int R = avx512::kRows;
  __m512 acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_loadu_ps(out + r * ldo + 16 * v);
  for (int64_t j = 0; j < taps; ++j) {
    const uint16_t* aj = a + j * tap_step * lda;
    const uint32_t* wj = w + j * K2 * N;
    for (int64_t c = 0; c < K2; ++c) {
      __m512i wv[NV];
      for (int v = 0; v < NV; ++v) wv[v] = _mm512_loadu_si512(wj + c * N + 16 * v);
      for (int r = 0; r < R; ++r) {
        int32_t pair;
        std::memcpy(&pair, aj + r * lda + 2 * c, 4);
        const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, (__m512bh)wv[v]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(out + r * ldo + 16 * v, acc[r][v]);
}

// out[i, n] += the tile's convolution (rows a multiple of kRows, N a multiple of 16), as in tile_conv (the prefetch
// too). columns_outer: the column blocks outermost (tile_conv_columns' order, for wide weights).
JF_BF16 void tile_conv_bf16(const uint16_t* a, int64_t rows, int64_t K, int64_t taps, int64_t tap_step,
                            const uint32_t* w, int64_t N, float* out, bool columns_outer = false,
                            const char* ahead = nullptr, int64_t ahead_bytes = 0) {
  auto block = [&](int64_t i, int64_t n, int64_t vecs) {
    const uint16_t* ai = a + i * K;
    float* o = out + i * N + n;
    switch (vecs) {
      case 4: block_gemm_bf16<4>(ai, K, K / 2, taps, tap_step, w + n, N, o, N); break;
      case 3: block_gemm_bf16<3>(ai, K, K / 2, taps, tap_step, w + n, N, o, N); break;
      case 2: block_gemm_bf16<2>(ai, K, K / 2, taps, tap_step, w + n, N, o, N); break;
      default: block_gemm_bf16<1>(ai, K, K / 2, taps, tap_step, w + n, N, o, N); break;
    }
  };
  if (columns_outer) {
    for (int64_t n = 0; n < N;) {
      const int64_t vecs = std::min<int64_t>(4, (N - n) / 16);
      for (int64_t i = 0; i < rows; i += avx512::kRows) block(i, n, vecs);
      n += vecs * 16;
    }
    return;
  }
  for (int64_t i = 0; i < rows; i += avx512::kRows) {
    prefetch_share(ahead, ahead_bytes, i / avx512::kRows, rows / avx512::kRows);
    for (int64_t n = 0; n < N;) {
      const int64_t vecs = std::min<int64_t>(4, (N - n) / 16);
      block(i, n, vecs);
      n += vecs * 16;
    }
  }
}

// n values (a multiple of 16, float32 or bfloat16) -> bfloat16, round to nearest even (vcvtneps2bf16), elu
// first if asked
template <typename src_t>
JF_BF16 inline void to_bf16(const src_t* src, uint16_t* dst, int64_t n, bool elu, float alpha) {
  for (int64_t i = 0; i < n; i += 16) {
    __m512 v = avx512::vload(src + i);
    if (elu) v = avx512::velu_bf16(v, alpha);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), (__m256i)_mm512_cvtneps_pbh(v));
  }
}

// elu of n rows of C bfloat16 values (a null row: zeros) rounded to bfloat16, one row after another into dst
JF_BF16 void elu_rows_bf16(const BFloat16* const* srcs, int64_t n, uint16_t* dst, int64_t C, float alpha) {
  for (int64_t r = 0; r < n; ++r, dst += C) {
    if (srcs[r] == nullptr) {
      std::fill(dst, dst + C, 0);
    } else {
      to_bf16(srcs[r], dst, C, true, alpha);
    }
  }
}

// elu(hidden) rounded to bfloat16 into hidden_b, then conv2's dot products added to y
JF_BF16 void conv2_bf16(const float* hidden, uint16_t* hidden_b, int64_t rows, const ResblockArgs<BFloat16>& p,
                        const uint32_t* w2, float* y) {
  to_bf16(hidden, hidden_b, rows * p.H, true, p.alpha);
  tile_conv_bf16(hidden_b, rows, p.H, 1, 1, w2, p.C, y);
}

// n float32 values rounded to bfloat16
JF_BF16 void store_bf16(const float* src, BFloat16* dst, int64_t n) {
  to_bf16(src, reinterpret_cast<uint16_t*>(dst), n, false, 0.0f);
}

// The residual block of resblock_tiles with bfloat16 dot products: elu(x) rounded to bfloat16, conv1 in float32
// sums, elu rounded to bfloat16, conv2 added to x + b2 in float32, the output rounded once. C, H multiples of 16.
void resblock_tiles_bf16(const ResblockArgs<BFloat16>& p, const uint32_t* w1, const uint32_t* w2, int64_t begin,
                         int64_t end) {
  std::vector<uint16_t> hidden_b(p.tile * p.H);
  resblock_walk<uint16_t>(
      p, avx512::kRows, begin, end,
      [&](const BFloat16* const* srcs, int64_t n, uint16_t* act) { elu_rows_bf16(srcs, n, act, p.C, p.alpha); },
      [&](const uint16_t* act, int64_t rows, float* hidden, const char* ahead, int64_t ahead_bytes) {
        tile_conv_bf16(act, rows, p.C, p.k, p.dilation, w1, p.H, hidden, false, ahead, ahead_bytes);
      },
      [&](const BFloat16* const* xs, int64_t rows, float* y) { avx512::add_rows(xs, rows, p.b2, y, p.C); },
      [&](const float* hidden, int64_t rows, int64_t, float* y) {
        conv2_bf16(hidden, hidden_b.data(), rows, p, w2, y);
      },
      store_bf16);
}

// conv_transpose_tiles with bfloat16 dot products: elu(x) rounded to bfloat16 (as the unfused bfloat16 layers
// round it), float32 sums, the output rounded once. C, Cout multiples of 16.
void conv_transpose_tiles_bf16(const ConvTransposeArgs<BFloat16>& p, const uint32_t* w, int64_t begin, int64_t end) {
  conv_transpose_walk<uint16_t>(
      p, avx512::kRows, begin, end,
      [&](const BFloat16* const* srcs, int64_t n, uint16_t* act) { elu_rows_bf16(srcs, n, act, p.C, p.alpha); },
      [&](const uint16_t* act, int64_t rows, float* y) { tile_conv_bf16(act, rows, p.C, p.taps, 1, w, p.N, y, true); },
      store_bf16);
}
#endif

// ---------------------------------------------------------------------------------------------------------------
// 12-bit integer products: elu_resblock_int12 and elu_conv_transpose_int12. The weights are rounded per output
// column (pack_int12) and each GEMM's input per tile (the tile's rows, all channels) to 12-bit signed integers
// (levels -2047..2047, the scale taking the largest magnitude to 2047), then multiplied as int16 pairs into int32
// sums: AVX2's vpmaddwd does 16 multiply-adds per instruction where the FMA does 8, and no CPU class emulates it.
// A pair of products is at most 2 * 2047^2, so kFlushPairs pairs stay below 2^31: the sums are added to the float32
// output, times both scales, at least that often (and once per block when a block has fewer), with a fused
// multiply-add in every copy (AVX2, portable). A tile whose input holds a NaN or an infinity gets NaN outputs.
constexpr float kInt12Max = 2047.0f;
constexpr int64_t kFlushPairs = 256;  // 256 * 2 * 2047^2 < 2^31
constexpr int kInt12Rows = 6;         // rows of a register block (the walks' row_block)

// A convolution packed by pack_int12: panels of kInt12Panel output columns (zeros past N), each per tap j a
// [K / 2, kInt12Panel] matrix of 32-bit lanes holding the int16 pair of inputs 2c (low half) and 2c + 1; one scale
// per column. A panel is contiguous: a block's weights stream from cache without strides of N (with N = 4096, the
// 1024-channel layer's, a column-major walk of [K / 2, N] rows hit one cache set and ran at half speed).
constexpr int64_t kInt12Panel = 16;
struct Int12Weights {
  const uint32_t* w;   // [ceil(N / kInt12Panel)][taps][K2][kInt12Panel]
  const float* scale;  // [N]
  int64_t taps, K2, N;
  const uint32_t* panel(int64_t n0) const { return w + n0 / kInt12Panel * taps * K2 * kInt12Panel; }
};

// Inputs 0..n of a tile as 12-bit integers: the scale (largest |x| / 2047; NaN when one is not finite) and
// q = round-half-even(x * (1 / scale)) (all 0 when the scale is 0 or NaN: the flush's scale makes the outputs NaN).
float int12_scale(float absmax, bool finite) { return finite ? absmax / kInt12Max : std::nanf(""); }

// The 12-bit level of y = value / scale: rounded half to even (as vcvtps2dq rounds), clamped to +-2047; 0 for a NaN
// or an infinity.
inline int16_t int12_level(float y) {
  return static_cast<int16_t>(std::isfinite(y) ? std::clamp(std::nearbyint(y), -kInt12Max, kInt12Max) : 0.0f);
}

void quantize_int12_portable(const float* x, int64_t n, int16_t* q, float& scale) {
  float m = 0.0f;
  bool finite = true;
  for (int64_t i = 0; i < n; ++i) {
    finite = finite && std::isfinite(x[i]);
    m = std::max(m, std::fabs(x[i]));
  }
  scale = int12_scale(m, finite);
  if (!(scale > 0.0f)) {
    std::fill(q, q + n, 0);
    return;
  }
  const float inv = 1.0f / scale;
  for (int64_t i = 0; i < n; ++i) q[i] = int12_level(x[i] * inv);
}

// out[r, n0 + v] += sums over taps and input pairs of the block's rows (kInt12Rows) and `width` columns, flushed
// as described above; colscale: the tile's input scale times each column's.
void block_gemm_int12_portable(const int16_t* a, int64_t lda, const Int12Weights& g, int64_t tap_step,
                               const float* colscale, int64_t n0, int64_t width, float* out, int64_t ldo) {
  constexpr int R = kInt12Rows;
  int32_t acc[R][8] = {};
  int64_t pending = 0;
  auto flush = [&] {
    for (int r = 0; r < R; ++r)
      for (int64_t v = 0; v < width; ++v) {
        float& o = out[r * ldo + n0 + v];
        o = std::fma(static_cast<float>(acc[r][v]), colscale[n0 + v], o);
        acc[r][v] = 0;
      }
  };
  for (int64_t j = 0; j < g.taps; ++j) {
    const int16_t* aj = a + j * tap_step * lda;
    const uint32_t* wj = g.panel(n0) + j * g.K2 * kInt12Panel + n0 % kInt12Panel;
    for (int64_t c0 = 0; c0 < g.K2;) {
      const int64_t c1 = std::min(g.K2, c0 + kFlushPairs - pending);
      for (int64_t c = c0; c < c1; ++c)
        for (int r = 0; r < R; ++r) {
          const int32_t a0 = aj[r * lda + 2 * c], a1 = aj[r * lda + 2 * c + 1];
          for (int64_t v = 0; v < width; ++v) {
            const uint32_t pair = wj[c * kInt12Panel + v];
            acc[r][v] += a0 * static_cast<int16_t>(pair & 0xFFFF) + a1 * static_cast<int16_t>(pair >> 16);
          }
        }
      pending += c1 - c0;
      c0 = c1;
      if (pending == kFlushPairs) {
        flush();
        pending = 0;
      }
    }
  }
  if (pending > 0) flush();
}

// out (rows x N, row stride N) += the tile's convolution: row blocks outermost, or column blocks outermost
// (columns_outer: a column block's weights stay in cache while every row reads them, for wide [K, N] weights).
void tile_gemm_int12_portable(const int16_t* a, int64_t rows, int64_t lda, const Int12Weights& g, int64_t tap_step,
                              const float* colscale, float* out, bool columns_outer) {
  const int64_t blocks = (g.N + 7) / 8;  // blocks of 8 columns, two per panel
  for (int64_t outer = 0; outer < (columns_outer ? blocks : rows / kInt12Rows); ++outer)
    for (int64_t inner = 0; inner < (columns_outer ? rows / kInt12Rows : blocks); ++inner) {
      const int64_t i = (columns_outer ? inner : outer) * kInt12Rows, n0 = (columns_outer ? outer : inner) * 8;
      block_gemm_int12_portable(a + i * lda, lda, g, tap_step, colscale, n0, std::min<int64_t>(8, g.N - n0),
                                out + i * g.N, g.N);
    }
}

#ifdef JASCO_FAST_X86
#define JF_INT12_AVX2 __attribute__((target("avx2,fma")))

JF_INT12_AVX2 void quantize_int12_avx2(const float* x, int64_t n, int16_t* q, float& scale) {  // n a multiple of 16
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 m = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
  for (int64_t i = 0; i < n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256 a = _mm256_andnot_ps(sign, v);
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, _mm256_set1_ps(INFINITY), _CMP_NLT_UQ));  // NaN or infinite
    m = _mm256_max_ps(m, a);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, m);
  float absmax = 0.0f;
  for (float l : lanes) absmax = std::max(absmax, l);
  scale = int12_scale(absmax, _mm256_movemask_ps(bad) == 0);
  if (!(scale > 0.0f)) {
    std::fill(q, q + n, 0);
    return;
  }
  const __m256 inv = _mm256_set1_ps(1.0f / scale);
  const __m256i lo = _mm256_set1_epi32(-2047), hi = _mm256_set1_epi32(2047);
  for (int64_t i = 0; i < n; i += 16) {  // vcvtps2dq rounds half to even, as nearbyint does
    const __m256i a =
        _mm256_max_epi32(lo, _mm256_min_epi32(hi, _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i), inv))));
    const __m256i b =
        _mm256_max_epi32(lo, _mm256_min_epi32(hi, _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8), inv))));
    // packs works per 128-bit lane: a0-3 b0-3 a4-7 b4-7, put back in order
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8));
  }
}

// block_gemm_int12_portable for NV vectors of 8 columns: per input pair, NV weight loads, one broadcast per row and
// a vpmaddwd + vpaddd per accumulator (12 of the 16 ymm registers at NV = 2).
template <int NV>
JF_INT12_AVX2 void block_gemm_int12_avx2(const int16_t* a, int64_t lda, const Int12Weights& g, int64_t tap_step,
                                         const float* colscale, int64_t n0, float* out, int64_t ldo) {
  constexpr int R = kInt12Rows;
  __m256i acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_setzero_si256();
  int64_t pending = 0;
  for (int64_t j = 0; j < g.taps; ++j) {
    const int16_t* aj = a + j * tap_step * lda;
    const uint32_t* wj = g.panel(n0) + j * g.K2 * kInt12Panel + n0 % kInt12Panel;
    for (int64_t c0 = 0; c0 < g.K2;) {
      const int64_t c1 = std::min(g.K2, c0 + kFlushPairs - pending);
      for (int64_t c = c0; c < c1; ++c) {
        __m256i wv[NV];
        for (int v = 0; v < NV; ++v)
          wv[v] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wj + c * kInt12Panel + 8 * v));
        for (int r = 0; r < R; ++r) {
          int32_t pair;
          std::memcpy(&pair, aj + r * lda + 2 * c, 4);
          const __m256i av = _mm256_set1_epi32(pair);
          for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_add_epi32(acc[r][v], _mm256_madd_epi16(av, wv[v]));
        }
      }
      pending += c1 - c0;
      c0 = c1;
      if (pending == kFlushPairs || (c0 == g.K2 && j == g.taps - 1)) {
        for (int r = 0; r < R; ++r)
          for (int v = 0; v < NV; ++v) {
            float* o = out + r * ldo + n0 + 8 * v;
            _mm256_storeu_ps(o, _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r][v]), _mm256_loadu_ps(colscale + n0 + 8 * v),
                                                _mm256_loadu_ps(o)));
            acc[r][v] = _mm256_setzero_si256();
          }
        pending = 0;
      }
    }
  }
}

JF_INT12_AVX2 void tile_gemm_int12_avx2(const int16_t* a, int64_t rows, int64_t lda, const Int12Weights& g,
                                        int64_t tap_step, const float* colscale, float* out,
                                        bool columns_outer) {  // N a multiple of 8
  auto block = [&](int64_t i, int64_t n0) {
    if (g.N - n0 >= 16) {
      block_gemm_int12_avx2<2>(a + i * lda, lda, g, tap_step, colscale, n0, out + i * g.N, g.N);
    } else {
      block_gemm_int12_avx2<1>(a + i * lda, lda, g, tap_step, colscale, n0, out + i * g.N, g.N);
    }
  };
  if (columns_outer) {
    for (int64_t n0 = 0; n0 < g.N; n0 += 16)
      for (int64_t i = 0; i < rows; i += kInt12Rows) block(i, n0);
  } else {
    for (int64_t i = 0; i < rows; i += kInt12Rows)
      for (int64_t n0 = 0; n0 < g.N; n0 += 16) block(i, n0);
  }
}
#endif

// The loops one copy of the int12 ops runs (the AVX2 one needs every channel count a multiple of 8).
struct Int12Copy {
  void (*elu_rows)(const float* const*, int64_t, float*, int64_t, float);
  void (*elu_row)(const float*, float*, int64_t, float);
  void (*add_rows)(const float* const*, int64_t, const float*, float*, int64_t);
  void (*quantize)(const float*, int64_t, int16_t*, float&);
  void (*gemm)(const int16_t*, int64_t, int64_t, const Int12Weights&, int64_t, const float*, float*, bool);
};

Int12Copy int12_copy(std::initializer_list<int64_t> channels) {
#ifdef JASCO_FAST_X86
  if (tail_isa() >= CpuIsa::avx2 &&
      std::all_of(channels.begin(), channels.end(), [](int64_t c) { return c % 16 == 0; }))
    return {&avx2::elu_rows<float>, &avx2::elu_row<float>, &avx2::add_rows<float>, &quantize_int12_avx2,
            &tile_gemm_int12_avx2};
#endif
  return {&portable::elu_rows<float>, &portable::elu_row<float>, &portable::add_rows<float>, &quantize_int12_portable,
          &tile_gemm_int12_portable};
}

// colscale[n] = the tile's input scale times column n's
void column_scales(float input_scale, const Int12Weights& g, float* colscale) {
  for (int64_t n = 0; n < g.N; ++n) colscale[n] = input_scale * g.scale[n];
}

void copy_floats(const float* src, float* dst, int64_t n) { std::copy(src, src + n, dst); }

// resblock_walk with int12 GEMMs: conv1's input scaled over the tile's padded rows, conv2's over its valid rows.
void resblock_tiles_int12(const ResblockArgs<float>& p, const Int12Weights& g1, const Int12Weights& g2,
                          const Int12Copy& copy, int64_t begin, int64_t end) {
  const int64_t span = (p.k - 1) * p.dilation;
  std::vector<float> act((p.tile + span) * p.C), colscale1(p.H), colscale2(p.C);
  std::vector<int16_t> hidden_q(p.tile * p.H);
  resblock_walk<int16_t>(
      p, kInt12Rows, begin, end,
      [&](const float* const* srcs, int64_t n, int16_t* q) {
        copy.elu_rows(srcs, n, act.data(), p.C, p.alpha);
        float scale;
        copy.quantize(act.data(), n * p.C, q, scale);
        column_scales(scale, g1, colscale1.data());
      },
      [&](const int16_t* q, int64_t rows, float* hidden, const char*, int64_t) {
        copy.gemm(q, rows, p.C, g1, p.dilation, colscale1.data(), hidden, false);
      },
      [&](const float* const* xs, int64_t rows, float* y) { copy.add_rows(xs, rows, p.b2, y, p.C); },
      [&](float* hidden, int64_t rows, int64_t valid, float* y) {
        copy.elu_row(hidden, hidden, rows * p.H, p.alpha);
        float scale;
        copy.quantize(hidden, valid * p.H, hidden_q.data(), scale);
        // rows past `valid` (discarded outputs) take the valid rows' scale
        const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
        for (int64_t i = valid * p.H; i < rows * p.H; ++i) hidden_q[i] = int12_level(hidden[i] * inv);
        column_scales(scale, g2, colscale2.data());
        copy.gemm(hidden_q.data(), rows, p.H, g2, 1, colscale2.data(), y, false);
      },
      copy_floats);
}

// conv_transpose_walk with int12 GEMMs, the input scaled over the tile's rows.
void conv_transpose_tiles_int12(const ConvTransposeArgs<float>& p, const Int12Weights& g, const Int12Copy& copy,
                                int64_t begin, int64_t end) {
  std::vector<float> act((p.tile + p.taps - 1) * p.C), colscale(p.N);
  conv_transpose_walk<int16_t>(
      p, kInt12Rows, begin, end,
      [&](const float* const* srcs, int64_t n, int16_t* q) {
        copy.elu_rows(srcs, n, act.data(), p.C, p.alpha);
        float scale;
        copy.quantize(act.data(), n * p.C, q, scale);
        column_scales(scale, g, colscale.data());
      },
      [&](const int16_t* q, int64_t rows, float* y) { copy.gemm(q, rows, p.C, g, 1, colscale.data(), y, true); },
      copy_floats);
}

// Calls f with a null pointer of x's activation type (float or BFloat16).
template <typename F>
void with_activation_type(const Tensor& x, F&& f) {
  if (x.scalar_type() == kFloat) {
    f(static_cast<float*>(nullptr));
  } else {
    f(static_cast<BFloat16*>(nullptr));
  }
}

template <typename Args>
using TileKernel = void (*)(const Args&, int64_t, int64_t);

// The AVX-512, AVX2 and portable copies of a tile kernel, for run_tiles.
#ifdef JASCO_FAST_X86
#define JF_KERNEL_COPIES(kernel, type) {&avx512::kernel<type>, &avx2::kernel<type>, &portable::kernel<type>}
#else
#define JF_KERNEL_COPIES(kernel, type) {nullptr, nullptr, &portable::kernel<type>}
#endif

// Runs tile jobs [0, jobs) over the threads with the copy for `width` (vector_width: 16, 8 or 1).
template <typename Args>
void run_tiles(int64_t jobs, int width, const Args& args, const std::array<TileKernel<Args>, 3>& copies) {
  const TileKernel<Args> kernel = copies[width == 16 ? 0 : width == 8 ? 1 : 2];
  torch::stable::parallel_for(0, jobs, 1, [&](int64_t begin, int64_t end) { kernel(args, begin, end); });
}

// The widest float32 copy this CPU runs whose vector width divides every channel count.
int vector_width(std::initializer_list<int64_t> channels) {
  auto divides = [&](int64_t w) {
    return std::all_of(channels.begin(), channels.end(), [w](int64_t c) { return c % w == 0; });
  };
  if (tail_isa() >= CpuIsa::avx512 && divides(16)) return 16;
  if (tail_isa() >= CpuIsa::avx2 && divides(8)) return 8;
  return 1;
}

PadMode parse_pad_mode(const std::string& mode) {
  if (mode == "constant") return PadMode::constant;
  if (mode == "reflect") return PadMode::reflect;
  if (mode == "replicate") return PadMode::replicate;
  if (mode == "circular") return PadMode::circular;
  JF_CHECK_VALUE(false, "pad_mode must be constant, reflect, replicate or circular, got '", mode, "'");
}

PadMap make_pad_map(const char* op, PadMode mode, int64_t T, int64_t pad_left, int64_t pad_right) {
  const int64_t pad = std::max(pad_left, pad_right);
  JF_CHECK_VALUE(mode != PadMode::circular || T >= pad, op, ": circular padding of ", pad,
                 " needs at least that many samples, got ", T);
  const int64_t extended = (mode == PadMode::reflect && T <= pad) ? pad + 1 : T;
  return PadMap{mode, T, extended};
}

// Rows of a time tile: enough to amortise the halo, small enough that the tile's buffers stay in L2.
int64_t tile_rows(int64_t widest_channels) {
  const int64_t rows = std::clamp<int64_t>(16384 / std::max<int64_t>(widest_channels, 1), 12, 512);
  return rows / 12 * 12;  // a multiple of the register blocks (6 rows)
}

void check_activations(const char* op, const Tensor& x, int64_t channels) {
  JF_CHECK_VALUE(x.dim() == 4 && x.size(2) == 1, op, ": x must be [B, C, 1, T], got shape ", shape(x));
  JF_CHECK_TYPE(x.scalar_type() == kFloat || x.scalar_type() == kBFloat16, op, ": x must be float32 or bfloat16, got ",
                dtype_name(x.scalar_type()));
  JF_CHECK_VALUE(x.size(1) == channels, op, ": x has ", x.size(1), " channels, the weights expect ", channels);
  JF_CHECK_VALUE(x.size(3) >= 1, op, ": x needs at least one time step");
}

void check_conv_weight(const char* op, const char* name, const Tensor& w, const Tensor& b, int64_t in_ch,
                       const Tensor& x) {
  JF_CHECK_VALUE(w.dim() == 4 && w.size(2) == 1 && w.size(1) == in_ch, op, ": ", name, " must be [out, ", in_ch,
                 ", 1, k], got shape ", shape(w));
  JF_CHECK_VALUE(b.dim() == 1 && b.size(0) == w.size(0), op, ": the bias of ", name, " must be [", w.size(0),
                 "], got shape ", shape(b));
  JF_CHECK_TYPE(w.scalar_type() == x.scalar_type() && b.scalar_type() == x.scalar_type(), op, ": ", name,
                " and its bias must have x's dtype ", dtype_name(x.scalar_type()), ", got ",
                dtype_name(w.scalar_type()), " and ", dtype_name(b.scalar_type()));
  JF_CHECK_VALUE(same_device(w, x) && same_device(b, x), op, ": ", name, " must be on x's device");
}

void check_padding(const char* op, int64_t k, int64_t dilation, int64_t pad_left, int64_t pad_right) {
  JF_CHECK_VALUE(dilation >= 1, op, ": dilation must be >= 1, got ", dilation);
  JF_CHECK_VALUE(pad_left >= 0 && pad_right >= 0 && pad_left + pad_right == (k - 1) * dilation, op,
                 ": pad_left + pad_right must equal (k - 1) * dilation = ", (k - 1) * dilation, " (the output keeps",
                 " the input's length), got ", pad_left, " + ", pad_right);
}

// The output length of a transposed convolution of T inputs (stride, k taps) with trim_left / trim_right samples
// dropped at the ends, checked to leave at least one.
int64_t trimmed_length(const char* op, int64_t T, int64_t stride, int64_t k, int64_t trim_left, int64_t trim_right) {
  const int64_t full = (T - 1) * stride + k;
  JF_CHECK_VALUE(trim_left >= 0 && trim_right >= 0 && trim_left + trim_right < full, op,
                 ": trim_left and trim_right must be >= 0 and leave at least one of the ", full,
                 " output samples, got ", trim_left, " and ", trim_right);
  return full - trim_left - trim_right;
}

Tensor float_contiguous(const Tensor& t) { return torch::stable::contiguous(torch::stable::to(t, kFloat)); }

// An uninitialised channels-last tensor of `sizes` with like's dtype and device (the ops' outputs).
Tensor empty_channels_last(std::initializer_list<int64_t> sizes, const Tensor& like) {
  return torch::stable::empty(sizes, like.scalar_type(), std::nullopt, like.device(), std::nullopt,
                              MemoryFormat::ChannelsLast);
}

// Convolution weights [O, I, 1, k] -> float32 [k, I, O]: per tap the GEMM's I x O matrix, output channels
// innermost. Converted first (channels-last memory is [O][k][I]), then transposed in cache-sized blocks:
// torch's strided copy with the dtype conversion took 1-2 ms per call for the 512-channel block's weights.
Tensor pack_taps(const Tensor& w) {
  const int64_t O = w.size(0), I = w.size(1), k = w.size(3);
  const Tensor src = torch::stable::contiguous(torch::stable::to(w, kFloat), MemoryFormat::ChannelsLast);
  Tensor out =
      torch::stable::empty({k, I, O}, kFloat, std::nullopt, src.device(), std::nullopt, MemoryFormat::Contiguous);
  const float* s = src.const_data_ptr<float>();
  float* d = out.mutable_data_ptr<float>();
  constexpr int64_t kBlock = 32;
  const int64_t o_blocks = (O + kBlock - 1) / kBlock;
  torch::stable::parallel_for(0, k * o_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t job = begin; job < end; ++job) {
      const int64_t j = job / o_blocks, o0 = job % o_blocks * kBlock, o1 = std::min(O, o0 + kBlock);
      for (int64_t i0 = 0; i0 < I; i0 += kBlock) {
        const int64_t i1 = std::min(I, i0 + kBlock);
        for (int64_t o = o0; o < o1; ++o)
          for (int64_t i = i0; i < i1; ++i) d[(j * I + i) * O + o] = s[(o * k + j) * I + i];
      }
    }
  });
  return out;
}

Tensor elu_resblock(const Tensor& x_in, const Tensor& w1, const Tensor& b1, const Tensor& w2, const Tensor& b2,
                    int64_t dilation, int64_t pad_left, int64_t pad_right, const std::string& pad_mode, double alpha) {
  const char* op = "elu_resblock";
  JF_CHECK_VALUE(w1.dim() == 4, op, ": w1 must be [H, C, 1, k], got shape ", shape(w1));
  const int64_t H = w1.size(0), C = w1.size(1), k = w1.size(3);
  check_activations(op, x_in, C);
  check_conv_weight(op, "w1", w1, b1, C, x_in);
  check_conv_weight(op, "w2", w2, b2, H, x_in);
  JF_CHECK_VALUE(w2.size(0) == C && w2.size(3) == 1, op, ": w2 must be [", C, ", ", H, ", 1, 1], got shape ",
                 shape(w2));
  check_padding(op, k, dilation, pad_left, pad_right);
  const PadMode mode = parse_pad_mode(pad_mode);

  const Tensor x = torch::stable::contiguous(x_in, MemoryFormat::ChannelsLast);
  const int64_t B = x.size(0), T = x.size(3);
  Tensor out = empty_channels_last({B, C, 1, T}, x);
  const Tensor b1f = float_contiguous(b1), b2f = float_contiguous(b2);
  const int64_t tile = tile_rows(std::max(C, H));
  const int64_t jobs = B * ((T + tile - 1) / tile);
  const int width = vector_width({C, H});

#ifdef JASCO_FAST_X86
  if (x.scalar_type() == kBFloat16 && width == 16 && use_bf16_dot()) {
    const Tensor w1b = pack_taps_bf16_pairs(w1), w2b = pack_taps_bf16_pairs(w2);
    const ResblockArgs<BFloat16> args{x.const_data_ptr<BFloat16>(),
                                      out.mutable_data_ptr<BFloat16>(),
                                      B,
                                      T,
                                      C,
                                      H,
                                      k,
                                      dilation,
                                      pad_left,
                                      tile,
                                      make_pad_map(op, mode, T, pad_left, pad_right),
                                      nullptr,
                                      b1f.const_data_ptr<float>(),
                                      nullptr,
                                      b2f.const_data_ptr<float>(),
                                      static_cast<float>(alpha)};
    const uint32_t* w1p_b = reinterpret_cast<const uint32_t*>(w1b.const_data_ptr<int32_t>());
    const uint32_t* w2p_b = reinterpret_cast<const uint32_t*>(w2b.const_data_ptr<int32_t>());
    torch::stable::parallel_for(
        0, jobs, 1, [&](int64_t begin, int64_t end) { resblock_tiles_bf16(args, w1p_b, w2p_b, begin, end); });
    return out;
  }
#endif
  const Tensor w1p = pack_taps(w1);  // [k, C, H]
  const Tensor w2p = pack_taps(w2);  // [1, H, C]
  with_activation_type(x, [&](auto* typed) {
    using T_ = std::remove_pointer_t<decltype(typed)>;
    const ResblockArgs<T_> args{x.const_data_ptr<T_>(),
                                out.mutable_data_ptr<T_>(),
                                B,
                                T,
                                C,
                                H,
                                k,
                                dilation,
                                pad_left,
                                tile,
                                make_pad_map(op, mode, T, pad_left, pad_right),
                                w1p.const_data_ptr<float>(),
                                b1f.const_data_ptr<float>(),
                                w2p.const_data_ptr<float>(),
                                b2f.const_data_ptr<float>(),
                                static_cast<float>(alpha)};
    run_tiles(jobs, width, args, JF_KERNEL_COPIES(resblock_tiles, T_));
  });
  return out;
}

Tensor elu_conv(const Tensor& x_in, const Tensor& weight, const Tensor& bias, int64_t dilation, int64_t pad_left,
                int64_t pad_right, const std::string& pad_mode, double alpha) {
  const char* op = "elu_conv";
  JF_CHECK_VALUE(weight.dim() == 4, op, ": weight must be [Cout, C, 1, k], got shape ", shape(weight));
  const int64_t Cout = weight.size(0), C = weight.size(1), k = weight.size(3);
  check_activations(op, x_in, C);
  check_conv_weight(op, "weight", weight, bias, C, x_in);
  check_padding(op, k, dilation, pad_left, pad_right);
  const PadMode mode = parse_pad_mode(pad_mode);

  const Tensor x = torch::stable::contiguous(x_in, MemoryFormat::ChannelsLast);
  const int64_t B = x.size(0), T = x.size(3);
  Tensor out = empty_channels_last({B, Cout, 1, T}, x);
  // channels-last memory of [Cout, C, 1, k] is [Cout][k][C], the layout the dot products read
  const Tensor wp = torch::stable::contiguous(torch::stable::to(weight, kFloat), MemoryFormat::ChannelsLast);
  const Tensor bf = float_contiguous(bias);
  const int64_t tile = std::clamp<int64_t>(16384 / C, 8, 512) / 8 * 8;  // a multiple of the dot products' 8-row blocks
  const int64_t jobs = B * ((T + tile - 1) / tile);
  const int width = vector_width({C});

  with_activation_type(x, [&](auto* typed) {
    using T_ = std::remove_pointer_t<decltype(typed)>;
    const ConvArgs<T_> args{x.const_data_ptr<T_>(),
                            out.mutable_data_ptr<T_>(),
                            T,
                            C,
                            Cout,
                            k,
                            dilation,
                            pad_left,
                            tile,
                            make_pad_map(op, mode, T, pad_left, pad_right),
                            wp.const_data_ptr<float>(),
                            bf.const_data_ptr<float>(),
                            static_cast<float>(alpha)};
    run_tiles(jobs, width, args, JF_KERNEL_COPIES(conv_tiles, T_));
  });
  return out;
}

// Transposed-convolution weights [C, Cout, 1, k] as the weights [r * Cout, C, 1, taps] of the convolution over input
// rows (ConvTransposeArgs), for pack_taps / pack_taps_bf16_pairs: output p * Cout + o, tap j holds kernel position
// (taps - 1 - j) * r + p of output channel o, zero past k.
Tensor as_row_convolution(const Tensor& w, int64_t r, int64_t taps) {
  const int64_t C = w.size(0), Cout = w.size(1), k = w.size(3);
  const Tensor padded = torch::stable::pad(torch::stable::squeeze(w, 2), {0, taps * r - k});  // [C, Cout, taps * r]
  auto flipped = call_op("aten::flip", "", torch::stable::view(padded, {C, Cout, taps, r}), std::vector<int64_t>{2});
  auto permuted = call_op("aten::permute", "", result(flipped), std::vector<int64_t>{3, 1, 0, 2});
  return torch::stable::reshape(result(permuted), {r * Cout, C, 1, taps});
}

Tensor elu_conv_transpose(const Tensor& x_in, const Tensor& weight, const Tensor& bias, int64_t stride,
                          int64_t trim_left, int64_t trim_right, double alpha) {
  const char* op = "elu_conv_transpose";
  JF_CHECK_VALUE(weight.dim() == 4 && weight.size(2) == 1, op, ": weight must be [C, Cout, 1, k], got shape ",
                 shape(weight));
  const int64_t C = weight.size(0), Cout = weight.size(1), k = weight.size(3);
  check_activations(op, x_in, C);
  JF_CHECK_VALUE(Cout >= 1 && k >= 1, op, ": weight must have at least one output channel and one tap, got shape ",
                 shape(weight));
  JF_CHECK_VALUE(bias.dim() == 1 && bias.size(0) == Cout, op, ": bias must be [", Cout, "], got shape ", shape(bias));
  JF_CHECK_TYPE(weight.scalar_type() == x_in.scalar_type() && bias.scalar_type() == x_in.scalar_type(), op,
                ": weight and bias must have x's dtype ", dtype_name(x_in.scalar_type()), ", got ",
                dtype_name(weight.scalar_type()), " and ", dtype_name(bias.scalar_type()));
  JF_CHECK_VALUE(same_device(weight, x_in) && same_device(bias, x_in), op, ": weight and bias must be on x's device");
  JF_CHECK_VALUE(stride >= 1, op, ": stride must be >= 1, got ", stride);
  const int64_t T = x_in.size(3), L = trimmed_length(op, T, stride, k, trim_left, trim_right);

  const Tensor x = torch::stable::contiguous(x_in, MemoryFormat::ChannelsLast);
  const int64_t B = x.size(0);
  const int64_t taps = (k + stride - 1) / stride, N = stride * Cout;
  Tensor out = empty_channels_last({B, Cout, 1, L}, x);
  auto repeated = call_op("aten::repeat", "", float_contiguous(bias), std::vector<int64_t>{stride});
  const Tensor bias_row = result(repeated);
  // rows per tile: the tile's input and output buffers within ~256 KB of L2, a multiple of the register blocks
  const int64_t tile = std::clamp<int64_t>(65536 / (C + N), 12, 512) / 12 * 12;
  const int64_t jobs = B * ((T + taps - 1 + tile - 1) / tile);
  const int width = vector_width({C, Cout});

#ifdef JASCO_FAST_X86
  if (x.scalar_type() == kBFloat16 && width == 16 && use_bf16_dot()) {
    const Tensor wp = pack_taps_bf16_pairs(as_row_convolution(weight, stride, taps));
    const ConvTransposeArgs<BFloat16> args{x.const_data_ptr<BFloat16>(),
                                           out.mutable_data_ptr<BFloat16>(),
                                           T,
                                           C,
                                           N,
                                           taps,
                                           tile,
                                           trim_left * Cout,
                                           L * Cout,
                                           nullptr,
                                           bias_row.const_data_ptr<float>(),
                                           static_cast<float>(alpha)};
    const uint32_t* w = reinterpret_cast<const uint32_t*>(wp.const_data_ptr<int32_t>());
    torch::stable::parallel_for(0, jobs, 1,
                                [&](int64_t begin, int64_t end) { conv_transpose_tiles_bf16(args, w, begin, end); });
    return out;
  }
#endif
  const Tensor wp = pack_taps(as_row_convolution(weight, stride, taps));
  with_activation_type(x, [&](auto* typed) {
    using T_ = std::remove_pointer_t<decltype(typed)>;
    const ConvTransposeArgs<T_> args{x.const_data_ptr<T_>(),
                                     out.mutable_data_ptr<T_>(),
                                     T,
                                     C,
                                     N,
                                     taps,
                                     tile,
                                     trim_left * Cout,
                                     L * Cout,
                                     wp.const_data_ptr<float>(),
                                     bias_row.const_data_ptr<float>(),
                                     static_cast<float>(alpha)};
    run_tiles(jobs, width, args, JF_KERNEL_COPIES(conv_transpose_tiles, T_));
  });
  return out;
}

// weight [O, I, 1, k] (a convolution; transposed_stride 0) or [I, Cout, 1, k] (a transposed convolution with that
// stride, packed as its row convolution: O = stride * Cout, k = ceil(k / stride) taps) -> (int32
// [ceil(O / 16), k, I / 2, 16]: the 12-bit weights as int16 pairs in panels, Int12Weights; float32 [O]: each output
// column's scale, its largest |weight| / 2047).
std::tuple<Tensor, Tensor> pack_int12(const Tensor& weight, int64_t transposed_stride) {
  const char* op = "pack_int12";
  JF_CHECK_VALUE(weight.dim() == 4 && weight.size(2) == 1, op, ": weight must be [out, in, 1, k] (or [in, out, 1, k]",
                 " with transposed_stride), got shape ", shape(weight));
  JF_CHECK_TYPE(weight.scalar_type() == kFloat || weight.scalar_type() == kBFloat16, op,
                ": weight must be float32 or bfloat16, got ", dtype_name(weight.scalar_type()));
  JF_CHECK_VALUE(transposed_stride >= 0, op, ": transposed_stride must be >= 0, got ", transposed_stride);
  const int64_t in = transposed_stride > 0 ? weight.size(0) : weight.size(1);
  JF_CHECK_VALUE(in % 2 == 0 && in > 0, op, ": the input channels must be a positive even number, got ", in);
  JF_CHECK_VALUE(weight.size(0) > 0 && weight.size(1) > 0 && weight.size(3) > 0, op, ": weight has no elements, shape ",
                 shape(weight));
  const Tensor conv =
      transposed_stride > 0
          ? as_row_convolution(weight, transposed_stride, (weight.size(3) + transposed_stride - 1) / transposed_stride)
          : weight;
  const Tensor wf = pack_taps(conv);  // [taps, K, N]
  const int64_t taps = wf.size(0), K = wf.size(1), N = wf.size(2), K2 = K / 2;
  const int64_t panels = (N + kInt12Panel - 1) / kInt12Panel;
  Tensor pairs = torch::stable::empty({panels, taps, K2, kInt12Panel}, kInt, std::nullopt, weight.device(),
                                      std::nullopt, MemoryFormat::Contiguous);
  Tensor scale =
      torch::stable::empty({N}, kFloat, std::nullopt, weight.device(), std::nullopt, MemoryFormat::Contiguous);
  const float* w = wf.const_data_ptr<float>();
  float* s = scale.mutable_data_ptr<float>();
  for (int64_t n = 0; n < N; ++n) s[n] = 0.0f;
  bool finite = true;
  for (int64_t row = 0; row < taps * K; ++row)
    for (int64_t n = 0; n < N; ++n) {
      const float a = std::fabs(w[row * N + n]);
      finite = finite && std::isfinite(a);  // (std::max would drop a NaN)
      s[n] = std::max(s[n], a);
    }
  JF_CHECK_VALUE(finite, op, ": weight holds a NaN or an infinity");
  for (int64_t n = 0; n < N; ++n) s[n] /= kInt12Max;
  uint32_t* d = reinterpret_cast<uint32_t*>(pairs.mutable_data_ptr<int32_t>());
  auto q = [&](float x, int64_t n) -> uint32_t {
    return static_cast<uint16_t>(int12_level(s[n] > 0.0f ? x * (1.0f / s[n]) : 0.0f));
  };
  torch::stable::parallel_for(0, panels * taps * K2, 64, [&](int64_t begin, int64_t end) {
    for (int64_t job = begin; job < end; ++job) {  // job: (panel, tap, pair)
      const int64_t n0 = job / (taps * K2) * kInt12Panel, row = job % (taps * K2), j = row / K2, c = row % K2;
      const float* lo = w + (j * K + 2 * c) * N;
      for (int64_t v = 0; v < kInt12Panel; ++v) {
        const int64_t n = n0 + v;
        d[job * kInt12Panel + v] = n < N ? q(lo[n], n) | (q(lo[N + n], n) << 16) : 0;
      }
    }
  });
  return {pairs, scale};
}

// An Int12Weights view of (pairs, scale) from pack_int12, checked against what the op expects.
Int12Weights int12_weights(const char* op, const char* name, const Tensor& pairs, const Tensor& scale, int64_t in,
                           int64_t out, const Tensor& x) {
  const int64_t panels = (out + kInt12Panel - 1) / kInt12Panel;
  JF_CHECK_VALUE(pairs.dim() == 4 && pairs.size(0) == panels && pairs.size(1) >= 1 && pairs.size(2) * 2 == in &&
                     pairs.size(3) == kInt12Panel,
                 op, ": ", name, " must be pack_int12's [", panels, ", taps, ", in / 2, ", ", kInt12Panel,
                 "] pairs, got shape ", shape(pairs));
  JF_CHECK_TYPE(pairs.scalar_type() == kInt && scale.scalar_type() == kFloat, op, ": ", name,
                " must be int32 pairs and float32 scales, got ", dtype_name(pairs.scalar_type()), " and ",
                dtype_name(scale.scalar_type()));
  JF_CHECK_VALUE(scale.dim() == 1 && scale.size(0) == out, op, ": the scales of ", name, " must be [", out,
                 "], got shape ", shape(scale));
  JF_CHECK_VALUE(same_device(pairs, x) && same_device(scale, x), op, ": ", name, " must be on x's device");
  JF_CHECK_VALUE(pairs.is_contiguous() && scale.is_contiguous(), op, ": ", name, " must be contiguous");
  return {reinterpret_cast<const uint32_t*>(pairs.const_data_ptr<int32_t>()), scale.const_data_ptr<float>(),
          pairs.size(1), pairs.size(2), out};
}

void check_float_vector(const char* op, const char* name, const Tensor& b, int64_t n, const Tensor& x) {
  JF_CHECK_VALUE(b.dim() == 1 && b.size(0) == n, op, ": ", name, " must be [", n, "], got shape ", shape(b));
  JF_CHECK_TYPE(b.scalar_type() == kFloat, op, ": ", name, " must be float32, got ", dtype_name(b.scalar_type()));
  JF_CHECK_VALUE(same_device(b, x), op, ": ", name, " must be on x's device");
}

Tensor elu_resblock_int12(const Tensor& x_in, const Tensor& w1, const Tensor& s1, const Tensor& b1, const Tensor& w2,
                          const Tensor& s2, const Tensor& b2, int64_t dilation, int64_t pad_left, int64_t pad_right,
                          const std::string& pad_mode, double alpha) {
  const char* op = "elu_resblock_int12";
  JF_CHECK_VALUE(x_in.dim() == 4 && x_in.size(2) == 1, op, ": x must be [B, C, 1, T], got shape ", shape(x_in));
  JF_CHECK_TYPE(x_in.scalar_type() == kFloat, op, ": x must be float32, got ", dtype_name(x_in.scalar_type()));
  JF_CHECK_VALUE(x_in.size(3) >= 1, op, ": x needs at least one time step");
  const int64_t C = x_in.size(1);
  JF_CHECK_VALUE(b1.dim() == 1, op, ": b1 must be [H], got shape ", shape(b1));
  const int64_t H = b1.size(0);
  const Int12Weights g1 = int12_weights(op, "w1", w1, s1, C, H, x_in);
  const int64_t k = g1.taps;
  const Int12Weights g2 = int12_weights(op, "w2", w2, s2, H, C, x_in);
  JF_CHECK_VALUE(g2.taps == 1, op, ": w2 must be a 1x1 convolution's pairs, got ", g2.taps, " taps");
  check_float_vector(op, "b1", b1, H, x_in);
  check_float_vector(op, "b2", b2, C, x_in);
  check_padding(op, k, dilation, pad_left, pad_right);
  const PadMode mode = parse_pad_mode(pad_mode);

  const Tensor x = torch::stable::contiguous(x_in, MemoryFormat::ChannelsLast);
  const int64_t B = x.size(0), T = x.size(3);
  Tensor out = empty_channels_last({B, C, 1, T}, x);
  const Tensor b1f = torch::stable::contiguous(b1), b2f = torch::stable::contiguous(b2);
  const int64_t tile = tile_rows(std::max(C, H));
  const ResblockArgs<float> args{x.const_data_ptr<float>(),
                                 out.mutable_data_ptr<float>(),
                                 B,
                                 T,
                                 C,
                                 H,
                                 k,
                                 dilation,
                                 pad_left,
                                 tile,
                                 make_pad_map(op, mode, T, pad_left, pad_right),
                                 nullptr,
                                 b1f.const_data_ptr<float>(),
                                 nullptr,
                                 b2f.const_data_ptr<float>(),
                                 static_cast<float>(alpha)};
  const Int12Copy copy = int12_copy({C, H});
  torch::stable::parallel_for(0, B * ((T + tile - 1) / tile), 1, [&](int64_t begin, int64_t end) {
    resblock_tiles_int12(args, g1, g2, copy, begin, end);
  });
  return out;
}

Tensor elu_conv_transpose_int12(const Tensor& x_in, const Tensor& w, const Tensor& s, const Tensor& bias,
                                int64_t stride, int64_t kernel_size, int64_t trim_left, int64_t trim_right,
                                double alpha) {
  const char* op = "elu_conv_transpose_int12";
  JF_CHECK_VALUE(x_in.dim() == 4 && x_in.size(2) == 1, op, ": x must be [B, C, 1, T], got shape ", shape(x_in));
  JF_CHECK_TYPE(x_in.scalar_type() == kFloat, op, ": x must be float32, got ", dtype_name(x_in.scalar_type()));
  JF_CHECK_VALUE(x_in.size(3) >= 1, op, ": x needs at least one time step");
  JF_CHECK_VALUE(stride >= 1 && kernel_size >= 1, op, ": stride and kernel_size must be >= 1, got ", stride, " and ",
                 kernel_size);
  JF_CHECK_VALUE(bias.dim() == 1 && bias.size(0) >= 1, op, ": bias must be [Cout], got shape ", shape(bias));
  const int64_t C = x_in.size(1), Cout = bias.size(0), N = stride * Cout, taps = (kernel_size + stride - 1) / stride;
  const Int12Weights g = int12_weights(op, "w", w, s, C, N, x_in);
  JF_CHECK_VALUE(g.taps == taps, op, ": w has ", g.taps, " taps, a kernel of ", kernel_size, " at stride ", stride,
                 " has ", taps);
  check_float_vector(op, "bias", bias, Cout, x_in);
  const int64_t T = x_in.size(3), L = trimmed_length(op, T, stride, kernel_size, trim_left, trim_right);

  const Tensor x = torch::stable::contiguous(x_in, MemoryFormat::ChannelsLast);
  const int64_t B = x.size(0);
  Tensor out = empty_channels_last({B, Cout, 1, L}, x);
  auto repeated = call_op("aten::repeat", "", torch::stable::contiguous(bias), std::vector<int64_t>{stride});
  const Tensor bias_row = result(repeated);
  // rows per tile: the tile's 16-bit input within ~128 KB, read once per column block (whose weights stream from
  // L2 or memory once per tile)
  const int64_t tile = std::clamp<int64_t>(65536 / C, 12, 512) / 12 * 12;
  const ConvTransposeArgs<float> args{x.const_data_ptr<float>(),
                                      out.mutable_data_ptr<float>(),
                                      T,
                                      C,
                                      N,
                                      taps,
                                      tile,
                                      trim_left * Cout,
                                      L * Cout,
                                      nullptr,
                                      bias_row.const_data_ptr<float>(),
                                      static_cast<float>(alpha)};
  const Int12Copy copy = int12_copy({C, N});
  torch::stable::parallel_for(0, B * ((T + taps - 1 + tile - 1) / tile), 1, [&](int64_t begin, int64_t end) {
    conv_transpose_tiles_int12(args, g, copy, begin, end);
  });
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(jasco_fast, CPU, m) {
  m.impl("elu_resblock", TORCH_BOX(&elu_resblock));
  m.impl("elu_conv", TORCH_BOX(&elu_conv));
  m.impl("elu_conv_transpose", TORCH_BOX(&elu_conv_transpose));
  m.impl("pack_int12", TORCH_BOX(&pack_int12));
  m.impl("elu_resblock_int12", TORCH_BOX(&elu_resblock_int12));
  m.impl("elu_conv_transpose_int12", TORCH_BOX(&elu_conv_transpose_int12));
}

}  // namespace jasco_fast
