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
// sets row r of y to the x row xs[r] plus b2; conv2(hidden, rows, y) activates hidden and adds conv2's products
// to y; store(src, dst, n) rounds n values into the output.
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
    conv2(hidden.data(), rows, y.data());
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
      [&](const float* hidden, int64_t rows, float* y) { conv2_bf16(hidden, hidden_b.data(), rows, p, w2, y); },
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
  const int64_t T = x_in.size(3), full = (T - 1) * stride + k;
  JF_CHECK_VALUE(trim_left >= 0 && trim_right >= 0 && trim_left + trim_right < full, op,
                 ": trim_left and trim_right must be >= 0 and leave at least one of the ", full,
                 " output samples, got ", trim_left, " and ", trim_right);

  const Tensor x = torch::stable::contiguous(x_in, MemoryFormat::ChannelsLast);
  const int64_t B = x.size(0), L = full - trim_left - trim_right;
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

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(jasco_fast, CPU, m) {
  m.impl("elu_resblock", TORCH_BOX(&elu_resblock));
  m.impl("elu_conv", TORCH_BOX(&elu_conv));
  m.impl("elu_conv_transpose", TORCH_BOX(&elu_conv_transpose));
}

}  // namespace jasco_fast
