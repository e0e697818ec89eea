// The inner loops of elu_conv.cpp for one instruction set. Included once per instruction set (no include guard
// on purpose) with:
//   JF_ISA     the namespace the functions go in,
//   JF_TARGET  the function attribute that enables the instruction set (empty for the portable copy),
//   JF_WIDTH   float32 lanes per vector: 16 (AVX-512), 8 (AVX2 + FMA) or 1 (portable: V is a plain float).
// Everything computes in float32; activations are read and written as float or BFloat16.
namespace JF_ISA {

constexpr int W = JF_WIDTH;
#if JF_WIDTH == 16
using V = __m512;
constexpr int kMaxVecs = 4;  // 6 rows x 4 vectors = 24 of the 32 zmm registers as accumulators
JF_TARGET inline V vload(const float* p) { return _mm512_loadu_ps(p); }
JF_TARGET inline void vstore(float* p, V v) { _mm512_storeu_ps(p, v); }
JF_TARGET inline V vset1(float x) { return _mm512_set1_ps(x); }
JF_TARGET inline V vfma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
JF_TARGET inline V vadd(V a, V b) { return _mm512_add_ps(a, b); }
JF_TARGET inline float vsum(V v) { return _mm512_reduce_add_ps(v); }
JF_TARGET inline V vload(const BFloat16* p) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
JF_TARGET inline void vstore(BFloat16* p, V v) {  // round to nearest even, NaN -> 0x7FC0 (as c10::BFloat16)
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  r = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), r, _mm512_set1_epi32(0x7FC0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
}
JF_TARGET inline V vmin(V a, V b) { return _mm512_min_ps(a, b); }  // b when either is NaN
JF_TARGET inline V vmax(V a, V b) { return _mm512_max_ps(a, b); }  // b when either is NaN
JF_TARGET inline V vmul(V a, V b) { return _mm512_mul_ps(a, b); }
JF_TARGET inline V vsub(V a, V b) { return _mm512_sub_ps(a, b); }
JF_TARGET inline V vfnma(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a * b
JF_TARGET inline V vround(V a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
JF_TARGET inline V vpow2(V k) {  // 2^k for integral k >= -126
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(k), _mm512_set1_epi32(127)), 23));
}
constexpr int kPow2TableBits = 4;
// 2^(j / 16) with j the low 4 bits of t's bits, times 2^k with k + 127 the bits above them
JF_TARGET inline V vpow2_table(V t) {
  const __m512i bits = _mm512_castps_si512(t);
  const __m512i mant = _mm512_permutexvar_epi32(
      bits, _mm512_setr_epi32(0, 371395, 759234, 1164243, 1587184, 2028850, 2490071, 2971711, 3474675, 3999908, 4548394,
                              5121164, 5719293, 6343903, 6996167, 7677309));
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_slli_epi32(_mm512_srli_epi32(bits, 4), 23), mant));
}
JF_TARGET inline V vpositive_else(V x, V other) {  // x > 0 ? x : other
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ), other, x);
}
#elif JF_WIDTH == 8
using V = __m256;
constexpr int kMaxVecs = 2;  // 6 rows x 2 vectors = 12 of the 16 ymm registers as accumulators
JF_TARGET inline V vload(const float* p) { return _mm256_loadu_ps(p); }
JF_TARGET inline void vstore(float* p, V v) { _mm256_storeu_ps(p, v); }
JF_TARGET inline V vset1(float x) { return _mm256_set1_ps(x); }
JF_TARGET inline V vfma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
JF_TARGET inline V vadd(V a, V b) { return _mm256_add_ps(a, b); }
JF_TARGET inline float vsum(V v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
JF_TARGET inline V vload(const BFloat16* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
JF_TARGET inline void vstore(BFloat16* p, V v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), nan);
  // 8 x 32-bit (each < 2^16) -> 8 x 16-bit
  const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
}
JF_TARGET inline V vmin(V a, V b) { return _mm256_min_ps(a, b); }  // b when either is NaN
JF_TARGET inline V vmax(V a, V b) { return _mm256_max_ps(a, b); }  // b when either is NaN
JF_TARGET inline V vmul(V a, V b) { return _mm256_mul_ps(a, b); }
JF_TARGET inline V vsub(V a, V b) { return _mm256_sub_ps(a, b); }
JF_TARGET inline V vfnma(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }  // c - a * b
JF_TARGET inline V vround(V a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
JF_TARGET inline V vpow2(V k) {  // 2^k for integral k >= -126
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23));
}
constexpr int kPow2TableBits = 3;
// 2^(j / 8) with j the low 3 bits of t's bits, times 2^k with k + 127 the bits above them
JF_TARGET inline V vpow2_table(V t) {
  const __m256i bits = _mm256_castps_si256(t);
  const __m256i mant = _mm256_permutevar8x32_epi32(
      _mm256_setr_epi32(0, 759234, 1587184, 2490071, 3474675, 4548394, 5719293, 6996167), bits);
  return _mm256_castsi256_ps(_mm256_or_si256(_mm256_slli_epi32(_mm256_srli_epi32(bits, 3), 23), mant));
}
JF_TARGET inline V vpositive_else(V x, V other) {  // x > 0 ? x : other
  return _mm256_blendv_ps(other, x, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GT_OQ));
}
#else
using V = float;
constexpr int kMaxVecs = 4;
inline V vload(const float* p) { return *p; }
inline void vstore(float* p, V v) { *p = v; }
inline V vset1(float x) { return x; }
inline V vfma(V a, V b, V c) { return a * b + c; }
inline V vadd(V a, V b) { return a + b; }
inline float vsum(V v) { return v; }
inline V vload(const BFloat16* p) { return static_cast<float>(*p); }
inline void vstore(BFloat16* p, V v) { *p = BFloat16(v); }
inline V velu(V x, float alpha) { return x > 0.0f ? x : (x == x ? alpha * std::expm1(x) : x); }
inline V velu_bf16(V x, float alpha) { return velu(x, alpha); }
#endif

#if JF_WIDTH > 1
// ELU: x for x > 0, alpha * expm1(x) otherwise (NaN stays NaN); absolute error below 1e-7, relative accuracy
// near 0. expm1(x) = s expm1(r) + s - 1 with s = 2^(k + j / 2^B) (B = kPow2TableBits) and
// x = (k + j / 2^B) ln 2 + r, |r| <= ln 2 / 2^(B + 1), x clamped to [-87, 0] first (expm1 is -1 in float32 below).
// k 2^B + j comes rounded in the low mantissa bits of x 2^B log2(e) + 1.5 * 2^23 + 127 * 2^B (vpow2_table turns
// them into s); expm1(r) = r + r^2 q(r), q linear (fitted for least maximum error for B = 3, Taylor for B = 4).
// Against the degree-8 Taylor form without the table: 6 instead of 9 multiplies/FMAs per vector, the ELU's
// bottleneck (elu_conv 64 -> 1 channels, AVX2 copy: 0.85x the ELU's time).
JF_TARGET inline V velu(V x, float alpha) {
  constexpr float L = 1 << kPow2TableBits, magic = 12582912.0f + 127.0f * L;
  // min / max pass a NaN x through (their second operand), so it stays NaN through the polynomial
  const V n = vmax(vset1(-87.0f), vmin(vset1(0.0f), x));
  const V t = vfma(n, vset1(1.44269504088896341f * L), vset1(magic));
  const V kj = vsub(t, vset1(magic));
  const V r = vfnma(kj, vset1(0.693147180559945309f / L), n);
  const V q = kPow2TableBits == 3 ? vfma(vset1(0.16668106615543365f), r, vset1(0.5000647306442261f))
                                  : vfma(vset1(1.0f / 6), r, vset1(0.5f));
  const V p = vfma(q, vmul(r, r), r);  // expm1(r)
  const V s = vpow2_table(t);
  V e = vfma(s, p, vsub(s, vset1(1.0f)));  // expm1(n)
  if (alpha != 1.0f) e = vmul(e, vset1(alpha));
  // for 0 <= alpha <= 1, x <= alpha expm1(min(x, 0)): one max picks; a NaN x comes out of its second operand
  return alpha >= 0.0f && alpha <= 1.0f ? vmax(x, e) : vpositive_else(x, e);
}

// ELU for values rounded to bfloat16 next: relative error below 1e-5 (a bfloat16 half-ulp is 2e-3) in 3/4 of
// velu's instructions. expm1(x) = 2^k (2^f - 1) + 2^k - 1 with x log2(e) = k + f, |f| <= 1/2; 2^f - 1 is f times
// the degree-4 Taylor polynomial of (2^f - 1) / f, so it stays accurate relative to x near 0.
JF_TARGET inline V velu_bf16(V x, float alpha) {
  const V n = vmax(vset1(-87.0f), vmin(vset1(0.0f), x));
  const V t = vmul(n, vset1(1.44269504088896341f));
  const V k = vround(t);
  const V f = vsub(t, k);
  V p = vset1(1.3333558146e-3f);  // ln(2)^5 / 5!
  p = vfma(p, f, vset1(9.6181291076e-3f));
  p = vfma(p, f, vset1(5.5504108664e-2f));
  p = vfma(p, f, vset1(2.4022650696e-1f));
  p = vfma(p, f, vset1(6.9314718056e-1f));  // ln(2)
  const V s = vpow2(k);
  return vpositive_else(x, vmul(vfma(s, vmul(p, f), vsub(s, vset1(1.0f))), vset1(alpha)));
}
#endif

constexpr int kRows = 6;  // rows of a register block; tiles are padded to a multiple of it

// acc[r][v] (r < kRows, v < NV vectors of W columns) += sum over taps j and channels c of
// a[(r + j * tap_step) * lda + c] * w[(j * K + c) * N + v * W]; `out` holds the block's kRows x NV*W values
// (row stride ldo) before and after.
template <int NV>
JF_TARGET void block_gemm(const float* a, int64_t lda, int64_t K, int64_t taps, int64_t tap_step, const float* w,
                          int64_t N, float* out, int64_t ldo) {
  V acc[kRows][NV];
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = vload(out + r * ldo + v * W);
  for (int64_t j = 0; j < taps; ++j) {
    const float* aj = a + j * tap_step * lda;
    const float* wj = w + j * K * N;
    for (int64_t c = 0; c < K; ++c) {
      V wv[NV];
      for (int v = 0; v < NV; ++v) wv[v] = vload(wj + c * N + v * W);
      for (int r = 0; r < kRows; ++r) {
        const V av = vset1(aj[r * lda + c]);
        for (int v = 0; v < NV; ++v) acc[r][v] = vfma(av, wv[v], acc[r][v]);
      }
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < NV; ++v) vstore(out + r * ldo + v * W, acc[r][v]);
}

// out[i, n] += sum_j sum_c a[(i + j * tap_step) * K + c] * w[(j * K + c) * N + n] for i < rows (a multiple of
// kRows), n < N (a multiple of W): the tile's convolution as register-blocked GEMMs, one per tap. Meanwhile it
// prefetches [ahead, ahead + ahead_bytes) into L2 (the next tile's input; prefetch_share).
JF_TARGET inline void tile_conv(const float* a, int64_t rows, int64_t K, int64_t taps, int64_t tap_step, const float* w,
                                int64_t N, float* out, const char* ahead = nullptr, int64_t ahead_bytes = 0) {
  for (int64_t i = 0; i < rows; i += kRows) {
    prefetch_share(ahead, ahead_bytes, i / kRows, rows / kRows);
    for (int64_t n = 0; n < N;) {
      const int64_t vecs = std::min<int64_t>(kMaxVecs, (N - n) / W);
      const float* ai = a + i * K;
      float* o = out + i * N + n;
      switch (vecs) {
        case 4: block_gemm<4>(ai, K, K, taps, tap_step, w + n, N, o, N); break;
        case 3: block_gemm<3>(ai, K, K, taps, tap_step, w + n, N, o, N); break;
        case 2: block_gemm<2>(ai, K, K, taps, tap_step, w + n, N, o, N); break;
        default: block_gemm<1>(ai, K, K, taps, tap_step, w + n, N, o, N); break;
      }
      n += vecs * W;
    }
  }
}

// out[i, n] += sum_j sum_c a[(i + j) * K + c] * w[(j * K + c) * N + n], as tile_conv (tap step 1, no prefetch) but
// with the column blocks outermost: a block of W's columns (taps x K x kMaxVecs * W floats) stays in L1/L2 while
// every row of the tile reads it, the access pattern of the transposed convolutions' wide [K, N] weights.
JF_TARGET inline void tile_conv_columns(const float* a, int64_t rows, int64_t K, int64_t taps, const float* w,
                                        int64_t N, float* out) {
  for (int64_t n = 0; n < N;) {
    const int64_t vecs = std::min<int64_t>(kMaxVecs, (N - n) / W);
    for (int64_t i = 0; i < rows; i += kRows) {
      const float* ai = a + i * K;
      float* o = out + i * N + n;
      switch (vecs) {
        case 4: block_gemm<4>(ai, K, K, taps, 1, w + n, N, o, N); break;
        case 3: block_gemm<3>(ai, K, K, taps, 1, w + n, N, o, N); break;
        case 2: block_gemm<2>(ai, K, K, taps, 1, w + n, N, o, N); break;
        default: block_gemm<1>(ai, K, K, taps, 1, w + n, N, o, N); break;
      }
    }
    n += vecs * W;
  }
}

// dst[c] = elu(src[c]) for c < C (a multiple of W), src in the activation dtype: for bfloat16 activations the
// unfused layers round elu's output to bfloat16, so velu_bf16's accuracy is enough.
template <typename scalar_t>
JF_TARGET inline void elu_row(const scalar_t* src, float* dst, int64_t C, float alpha) {
  for (int64_t c = 0; c < C; c += W) {
    const V x = vload(src + c);
    vstore(dst + c, std::is_same_v<scalar_t, BFloat16> ? velu_bf16(x, alpha) : velu(x, alpha));
  }
}

// row r of y (rows of C values, a multiple of W) = the x row xs[r] + b: the residual block's shortcut plus conv2's bias
template <typename scalar_t>
JF_TARGET void add_rows(const scalar_t* const* xs, int64_t rows, const float* b, float* y, int64_t C) {
  for (int64_t r = 0; r < rows; ++r, y += C)
    for (int64_t c = 0; c < C; c += W) vstore(y + c, vadd(vload(xs[r] + c), vload(b + c)));
}

// hidden <- elu(hidden) (rows x H values), then conv2's products added to y
template <typename scalar_t>
JF_TARGET void elu_then_conv2(float* hidden, int64_t rows, const ResblockArgs<scalar_t>& p, float* y) {
  elu_row(hidden, hidden, rows * p.H, p.alpha);
  tile_conv(hidden, rows, p.H, 1, 1, p.w2, p.C, y);
}

// elu of n rows of C values (a null row: zeros), one row after another into dst
template <typename scalar_t>
JF_TARGET void elu_rows(const scalar_t* const* srcs, int64_t n, float* dst, int64_t C, float alpha) {
  for (int64_t r = 0; r < n; ++r, dst += C) {
    if (srcs[r] == nullptr) {
      std::fill(dst, dst + C, 0.0f);
    } else {
      elu_row(srcs[r], dst, C, alpha);
    }
  }
}

template <typename scalar_t>
JF_TARGET void store_row(const float* src, scalar_t* dst, int64_t n) {  // n a multiple of W
  for (int64_t i = 0; i < n; i += W) vstore(dst + i, vload(src + i));
}

// The transposed convolution (ConvTransposeArgs, conv_transpose_walk) with float32 GEMMs.
template <typename scalar_t>
void conv_transpose_tiles(const ConvTransposeArgs<scalar_t>& p, int64_t begin, int64_t end) {
  conv_transpose_walk<float>(
      p, kRows, begin, end,
      [&](const scalar_t* const* srcs, int64_t n, float* act) { elu_rows(srcs, n, act, p.C, p.alpha); },
      [&](const float* act, int64_t rows, float* y) { tile_conv_columns(act, rows, p.C, p.taps, p.w, p.N, y); },
      store_row<scalar_t>);
}

// The residual block (resblock_walk) with float32 GEMMs.
template <typename scalar_t>
void resblock_tiles(const ResblockArgs<scalar_t>& p, int64_t begin, int64_t end) {
  resblock_walk<float>(
      p, kRows, begin, end,
      [&](const scalar_t* const* srcs, int64_t n, float* act) { elu_rows(srcs, n, act, p.C, p.alpha); },
      [&](const float* act, int64_t rows, float* hidden, const char* ahead, int64_t ahead_bytes) {
        tile_conv(act, rows, p.C, p.k, p.dilation, p.w1, p.H, hidden, ahead, ahead_bytes);
      },
      [&](const scalar_t* const* xs, int64_t rows, float* y) { add_rows(xs, rows, p.b2, y, p.C); },
      [&](float* hidden, int64_t rows, int64_t, float* y) { elu_then_conv2(hidden, rows, p, y); }, store_row<scalar_t>);
}

constexpr int kDotRows = 8;  // output rows per block of the final convolution's dot products

// out rows [0, rows) (rows a multiple of kDotRows; only those below `valid` stored) of the convolution over act
// (rows of C activations, dilation 1, K taps): per block, a channel vector of each activation row is loaded once
// and multiplied by the K tap weights it meets (K + kDotRows accumulator and weight registers) rather than once
// per tap: 0.4 instead of 1.1 loads per FMA.
template <int K, typename scalar_t>
JF_TARGET void conv_dots_taps(const ConvArgs<scalar_t>& p, const float* act, int64_t rows, int64_t valid,
                              scalar_t* out) {
  constexpr int R = kDotRows;
  const int64_t C = p.C;
  for (int64_t i = 0; i < rows; i += R) {
    const float* ai = act + i * C;
    for (int64_t o = 0; o < p.Cout; ++o) {
      const float* wo = p.w + o * K * C;
      V acc[R];
      for (int r = 0; r < R; ++r) acc[r] = vset1(0.0f);
      for (int64_t c = 0; c < C; c += W) {
        V wv[K];
#pragma GCC unroll 16
        for (int j = 0; j < K; ++j) wv[j] = vload(wo + j * C + c);
#pragma GCC unroll 32
        for (int u = 0; u < R + K - 1; ++u) {
          const V a = vload(ai + u * C + c);
#pragma GCC unroll 16
          for (int j = 0; j < K; ++j)
            if (u - j >= 0 && u - j < R) acc[u - j] = vfma(a, wv[j], acc[u - j]);
        }
      }
      for (int r = 0; r < R && i + r < valid; ++r) out[(i + r) * p.Cout + o] = scalar_t(vsum(acc[r]) + p.bias[o]);
    }
  }
}

// The same for any taps and dilation: per tap, each activation vector loaded per output row.
template <typename scalar_t>
JF_TARGET void conv_dots(const ConvArgs<scalar_t>& p, const float* act, int64_t rows, int64_t valid, scalar_t* out) {
  constexpr int R = kDotRows;
  const int64_t C = p.C;
  for (int64_t i = 0; i < rows; i += R) {
    for (int64_t o = 0; o < p.Cout; ++o) {
      V acc[R];
      for (int r = 0; r < R; ++r) acc[r] = vset1(0.0f);
      for (int64_t j = 0; j < p.k; ++j) {
        const float* wj = p.w + (o * p.k + j) * C;
        const float* aj = act + (i + j * p.dilation) * C;
        for (int64_t c = 0; c < C; c += W) {
          const V wv = vload(wj + c);
          for (int r = 0; r < R; ++r) acc[r] = vfma(vload(aj + r * C + c), wv, acc[r]);
        }
      }
      for (int r = 0; r < R && i + r < valid; ++r) out[(i + r) * p.Cout + o] = scalar_t(vsum(acc[r]) + p.bias[o]);
    }
  }
}

template <typename scalar_t>
JF_TARGET void conv_tiles(const ConvArgs<scalar_t>& p, int64_t begin, int64_t end) {
  const int64_t C = p.C, span = (p.k - 1) * p.dilation;
  const int64_t tiles = (p.T + p.tile - 1) / p.tile;
  // rows ahead of the ELU pass to prefetch into L1: the input streams from memory (82 MB for 10 s of the final
  // conv) while the ELU computes (AVX2 copy: 0.95x the time)
  constexpr int64_t kPrefetchRows = 24;
  const int64_t row_bytes = C * static_cast<int64_t>(sizeof(scalar_t));
  std::vector<float> act((p.tile + kDotRows + span) * C);
  std::vector<const scalar_t*> rows_of_x(p.tile + kDotRows + span);
  for (int64_t job = begin; job < end; ++job) {
    const int64_t b = job / tiles, t0 = (job % tiles) * p.tile;
    const int64_t valid = std::min(p.tile, p.T - t0);
    const int64_t rows = (valid + kDotRows - 1) / kDotRows * kDotRows;
    const scalar_t* x = p.x + b * p.T * C;
    padded_rows(p.map, x, C, t0 - p.pad_left, valid + span, rows + span, rows_of_x.data());
    for (int64_t r = 0; r < rows + span; ++r) {
      const char* ahead =
          reinterpret_cast<const char*>(x + std::clamp<int64_t>(t0 - p.pad_left + r + kPrefetchRows, 0, p.T - 1) * C);
      for (int64_t byte = 0; byte < row_bytes; byte += 64) __builtin_prefetch(ahead + byte, 0, 3);
      if (rows_of_x[r] == nullptr) {
        std::fill(act.data() + r * C, act.data() + (r + 1) * C, 0.0f);
      } else {
        elu_row(rows_of_x[r], act.data() + r * C, C, p.alpha);
      }
    }
    scalar_t* out = p.out + (b * p.T + t0) * p.Cout;
    if (p.k == 7 && p.dilation == 1) {  // SEANet's final convolution
      conv_dots_taps<7>(p, act.data(), rows, valid, out);
    } else {
      conv_dots(p, act.data(), rows, valid, out);
    }
  }
}

}  // namespace JF_ISA
